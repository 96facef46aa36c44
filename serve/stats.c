// build/serve's reports: GET /v1/cache/stats as JSON (the caller's hit rate, prefill saved and reuse
// lookups; with ?scope=all and the admin key, everyone's, the pool's fragmentation and utilisation and the
// reuse store's contents) and GET /metrics
// in the Prometheus text format. Both read the counters and the pool and store snapshots the engine
// publishes under its mutex; neither touches the pool or the store. Both say the reuse scope: "tenant" (a
// tenant reuses only its own prefixes and stored prompts) or "shared" (--shared-reuse: everyone's).
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "serve.h"

static const char *scope_name(const Engine *e) { return e->shared_reuse ? "shared" : "tenant"; }

// The reuse report: lookups of the tenant's (or all) lsh/semshare requests; the store's contents in the
// global form only, its budget in both.
static json_t *reuse_stats_json(const Engine *e, const ReuseCounters *c, const KVReuseStats *st, int64_t skipped,
                                int global) {
    json_t *store = json_pack("{s:I}", "budget_bytes", (json_int_t)e->reuse_budget);
    if (global) {
        json_object_set_new(store, "entries", json_integer(st->entries));
        json_object_set_new(store, "bytes", json_integer((json_int_t)st->bytes));
        json_object_set_new(store, "inserts", json_integer((json_int_t)st->inserts));
        json_object_set_new(store, "evictions", json_integer((json_int_t)st->evictions));
        json_object_set_new(store, "too_large", json_integer((json_int_t)skipped));
    }
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:o}", "scope", scope_name(e), "lookups",
                     (json_int_t)c->lookups, "hits", (json_int_t)c->hits, "misses", (json_int_t)c->misses, "rejected",
                     (json_int_t)c->rejected, "hit_rate", c->lookups ? (double)c->hits / c->lookups : 0.0,
                     "reused_tokens", (json_int_t)c->reused_tokens, "recomputed_tokens",
                     (json_int_t)c->recomputed_tokens, "store", store);
}

// The pool's occupancy (global form) or its size only (a tenant's: other tenants' activity is not its to see).
static json_t *pool_stats_json(const KVPagedStats *st, int global) {
    if (!global) return json_pack("{s:i}", "blocks_total", st->blocks_total);
    return json_pack("{s:i, s:i, s:i, s:i, s:f, s:f, s:I, s:I, s:I}", "blocks_total", st->blocks_total, "blocks_used",
                     st->blocks_used, "blocks_cached", st->blocks_cached, "blocks_free", st->blocks_free,
                     "fragmentation", st->fragmentation, "utilisation", st->utilisation, "evictions",
                     (json_int_t)st->evictions, "bytes", (json_int_t)st->bytes, "bytes_used", (json_int_t)st->bytes_used);
}

json_t *stats_json(Engine *e, const char *tenant) {
    pthread_mutex_lock(&e->mu);
    KVPagedStats st = e->snap;
    KVReuseStats rs = e->store_snap;
    ReuseCounters all = e->reuse;
    int64_t skipped = e->store_skipped_snap;
    int n_tenants = e->n_tenants;
    pthread_mutex_unlock(&e->mu);
    Tenant t = {0};
    if (tenant) engine_tenant(e, tenant, &t);
    else
        t = (Tenant){.requests = st.requests, .query_blocks = st.query_blocks, .hit_blocks = st.hit_blocks,
                     .reused_tokens = st.prefill_saved, .reuse = all};
    json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:I, s:f, s:I}", "scope", tenant ? tenant : "all", "block", e->block,
                          "requests", (json_int_t)t.requests, "query_blocks", (json_int_t)t.query_blocks, "hit_blocks",
                          (json_int_t)t.hit_blocks, "hit_rate", t.query_blocks ? (double)t.hit_blocks / t.query_blocks : 0.0,
                          "prefill_saved", (json_int_t)t.reused_tokens);
    if (tenant) json_object_set_new(o, "prompt_tokens", json_integer(t.prompt_tokens));
    else json_object_set_new(o, "tenants", json_integer(n_tenants));
    json_object_set_new(o, "pool", pool_stats_json(&st, tenant == NULL));
    json_object_set_new(o, "reuse", reuse_stats_json(e, &t.reuse, &rs, skipped, tenant == NULL));
    return o;
}

typedef struct {
    char *t;
    size_t len, cap;
} Text;

__attribute__((format(printf, 2, 3))) static void add(Text *x, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(x->t + x->len, x->cap - x->len, fmt, ap);
        va_end(ap);
        CHECK(n >= 0);
        if (x->len + (size_t)n < x->cap) {
            x->len += (size_t)n;
            return;
        }
        x->t = realloc(x->t, x->cap = 2 * (x->len + (size_t)n + 1));
        CHECK(x->t);
    }
}

// The reuse counters, labelled with the scope they cover.
static void reuse_metrics(Text *x, const Engine *e) {
    const char *sc = scope_name(e);
    const ReuseCounters *c = &e->reuse;
    add(x, "# HELP kvlab_reuse_scope Whose prefixes and stored prompts a request may reuse: its tenant's or everyone's.\n"
           "# TYPE kvlab_reuse_scope gauge\nkvlab_reuse_scope{scope=\"%s\"} 1\n", sc);
    add(x, "# HELP kvlab_reuse_lookups_total Reuse store lookups (requests with reuse lsh or semshare).\n"
           "# TYPE kvlab_reuse_lookups_total counter\nkvlab_reuse_lookups_total{scope=\"%s\"} %lld\n"
           "# TYPE kvlab_reuse_hits_total counter\nkvlab_reuse_hits_total{scope=\"%s\"} %lld\n"
           "# TYPE kvlab_reuse_misses_total counter\nkvlab_reuse_misses_total{scope=\"%s\"} %lld\n",
        sc, (long long)c->lookups, sc, (long long)c->hits, sc, (long long)c->misses);
    add(x, "# HELP kvlab_reuse_rejected_total Store candidates below a request's threshold or n-gram overlap.\n"
           "# TYPE kvlab_reuse_rejected_total counter\nkvlab_reuse_rejected_total{scope=\"%s\"} %lld\n",
        sc, (long long)c->rejected);
    add(x, "# HELP kvlab_reuse_prompt_tokens_total Prompt tokens of reuse hits, by whether the reference gave their K/V.\n"
           "# TYPE kvlab_reuse_prompt_tokens_total counter\n"
           "kvlab_reuse_prompt_tokens_total{scope=\"%s\",kv=\"reused\"} %lld\n"
           "kvlab_reuse_prompt_tokens_total{scope=\"%s\",kv=\"recomputed\"} %lld\n",
        sc, (long long)c->reused_tokens, sc, (long long)c->recomputed_tokens);
    add(x, "# TYPE kvlab_reuse_store_entries gauge\nkvlab_reuse_store_entries{scope=\"%s\"} %d\n"
           "# TYPE kvlab_reuse_store_bytes gauge\nkvlab_reuse_store_bytes{scope=\"%s\"} %zu\n"
           "# TYPE kvlab_reuse_store_budget_bytes gauge\nkvlab_reuse_store_budget_bytes %zu\n"
           "# TYPE kvlab_reuse_store_evictions_total counter\nkvlab_reuse_store_evictions_total{scope=\"%s\"} %lld\n",
        sc, e->store_snap.entries, sc, e->store_snap.bytes, e->reuse_budget, sc, e->store_snap.evictions);
}

char *metrics_text(Engine *e) {
    Text x = {.t = malloc(4096), .cap = 4096};
    CHECK(x.t);
    pthread_mutex_lock(&e->mu);
    add(&x, "# HELP kvlab_requests_total HTTP requests answered, by status.\n# TYPE kvlab_requests_total counter\n");
    for (int i = 0; i < 6; i++) {
        char code[16];
        snprintf(code, sizeof code, serve_status_codes[i] ? "%d" : "other", serve_status_codes[i]);
        add(&x, "kvlab_requests_total{status=\"%s\"} %lld\n", code, (long long)e->status_counts[i]);
    }
    add(&x,
        "# TYPE kvlab_tokens_generated_total counter\nkvlab_tokens_generated_total %lld\n"
        "# TYPE kvlab_prompt_tokens_total counter\nkvlab_prompt_tokens_total %lld\n"
        "# TYPE kvlab_prompt_tokens_reused_total counter\nkvlab_prompt_tokens_reused_total %lld\n"
        "# TYPE kvlab_pool_blocks gauge\nkvlab_pool_blocks{state=\"used\"} %d\n"
        "kvlab_pool_blocks{state=\"cached\"} %d\nkvlab_pool_blocks{state=\"free\"} %d\n"
        "# TYPE kvlab_queue_length gauge\nkvlab_queue_length %d\n"
        "# TYPE kvlab_requests_active gauge\nkvlab_requests_active %d\n",
        (long long)e->tokens_generated, (long long)e->prompt_tokens, (long long)e->reused_tokens, e->snap.blocks_used,
        e->snap.blocks_cached, e->snap.blocks_free, e->queued, e->n_active);
    reuse_metrics(&x, e);
    pthread_mutex_unlock(&e->mu);
    return x.t; // malloc'd: the response frees it
}
