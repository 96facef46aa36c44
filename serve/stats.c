// build/serve's reports: GET /v1/cache/stats as JSON (the pool's hit rate, prefill saved, fragmentation and
// utilisation, for one tenant's requests or for all) and GET /metrics in the Prometheus text format. Both
// read the counters and the pool snapshot the engine publishes under its mutex; neither touches the pool.
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "serve.h"

json_t *stats_json(Engine *e, const char *tenant) {
    pthread_mutex_lock(&e->mu);
    KVPagedStats st = e->snap;
    int n_tenants = e->n_tenants;
    pthread_mutex_unlock(&e->mu);
    Tenant t = {0};
    if (tenant) engine_tenant(e, tenant, &t);
    else
        t = (Tenant){.requests = st.requests, .query_blocks = st.query_blocks, .hit_blocks = st.hit_blocks,
                     .reused_tokens = st.prefill_saved};
    json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:I, s:f, s:I}", "scope", tenant ? tenant : "all", "block", e->block,
                          "requests", (json_int_t)t.requests, "query_blocks", (json_int_t)t.query_blocks, "hit_blocks",
                          (json_int_t)t.hit_blocks, "hit_rate", t.query_blocks ? (double)t.hit_blocks / t.query_blocks : 0.0,
                          "prefill_saved", (json_int_t)t.reused_tokens);
    if (tenant) json_object_set_new(o, "prompt_tokens", json_integer(t.prompt_tokens));
    else json_object_set_new(o, "tenants", json_integer(n_tenants));
    json_object_set_new(o, "pool", json_pack("{s:i, s:i, s:i, s:i, s:f, s:f, s:I, s:I, s:I}", "blocks_total",
                                             st.blocks_total, "blocks_used", st.blocks_used, "blocks_cached",
                                             st.blocks_cached, "blocks_free", st.blocks_free, "fragmentation",
                                             st.fragmentation, "utilisation", st.utilisation, "evictions",
                                             (json_int_t)st.evictions, "bytes", (json_int_t)st.bytes, "bytes_used",
                                             (json_int_t)st.bytes_used));
    return o;
}

char *metrics_text(Engine *e) {
    size_t cap = 4096, k = 0;
    char *t = common_calloc(cap, 1);
    pthread_mutex_lock(&e->mu);
    k += (size_t)snprintf(t + k, cap - k, "# HELP kvlab_requests_total HTTP requests answered, by status.\n"
                                           "# TYPE kvlab_requests_total counter\n");
    for (int i = 0; i < 6; i++) {
        char code[16];
        snprintf(code, sizeof code, serve_status_codes[i] ? "%d" : "other", serve_status_codes[i]);
        k += (size_t)snprintf(t + k, cap - k, "kvlab_requests_total{status=\"%s\"} %lld\n", code,
                              (long long)e->status_counts[i]);
    }
    k += (size_t)snprintf(t + k, cap - k,
                          "# TYPE kvlab_tokens_generated_total counter\nkvlab_tokens_generated_total %lld\n"
                          "# TYPE kvlab_prompt_tokens_total counter\nkvlab_prompt_tokens_total %lld\n"
                          "# TYPE kvlab_prompt_tokens_reused_total counter\nkvlab_prompt_tokens_reused_total %lld\n"
                          "# TYPE kvlab_pool_blocks gauge\nkvlab_pool_blocks{state=\"used\"} %d\n"
                          "kvlab_pool_blocks{state=\"cached\"} %d\nkvlab_pool_blocks{state=\"free\"} %d\n"
                          "# TYPE kvlab_queue_length gauge\nkvlab_queue_length %d\n"
                          "# TYPE kvlab_requests_active gauge\nkvlab_requests_active %d\n",
                          (long long)e->tokens_generated, (long long)e->prompt_tokens, (long long)e->reused_tokens,
                          e->snap.blocks_used, e->snap.blocks_cached, e->snap.blocks_free, e->queued, e->n_active);
    pthread_mutex_unlock(&e->mu);
    char *body = strdup(t);
    common_free(t);
    CHECK(body);
    return body;
}
