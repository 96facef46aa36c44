// Generation through any KV cache spec, and its rule at the trained context (see genstream.h).
#include "genstream.h"

#include <string.h>

#include "../kv/policy.h"

// The most tokens a query of this cache attends over, when that is bounded whatever the stream's length
// (its keys' positions then stay within that distance of the query); 0 when kept tokens age without bound.
static int genstream_reach(const KVSpec *spec, const EvalCache *c) {
    const KVPolicy *pol = spec->policy;
    if (c->dev) return pol->bounded_reach ? decode_device_budget(c->dev) : 0; // the rows it holds at most
    if (spec->paged_block) // whole blocks dropped after a step: at most budget + B - 1 held, plus the new token;
                           // pages keep absolute positions, so sinks do not help there
        return pol->bounded_reach && !pol->in_cache_positions ? kv_spec_budget(spec) + spec->paged_block : 0;
    if (!pol->bounded_reach) return 0;
    int reach = 0;
    for (int l = 0; l < c->n_layer; l++) {
        int b = kv_cache_layer_budget(c->kv, l);
        if (b > reach) reach = b;
    }
    return reach;
}

int genstream_init(GenStream *g, const Model *m, const KVSpec *spec, size_t max_tokens, const int *calib,
                   size_t n_calib, char *err) {
    int T = m->cfg.block_size;
    *g = (GenStream){.m = m, .context = T, .cap = max_tokens};
    // a streaming cache sees every position of the stream (its RoPE table); the others at most T
    int could_stream = spec->policy->bounded_reach;
    size_t positions = could_stream && max_tokens > (size_t)T ? max_tokens : (size_t)T;
    if (positions > (size_t)GENSTREAM_MAX_TOKENS) {
        err_set(err, "a stream of %zu tokens (prompt and generated) is longer than generation supports (%d)",
                max_tokens, GENSTREAM_MAX_TOKENS);
        return -1;
    }
    if (evalcore_cache_init(&g->cache, m, spec, (int)positions, calib, n_calib, err) != 0) return -1;
    int reach = genstream_reach(spec, &g->cache);
    g->streams = reach > 0 && reach <= T;
    if (could_stream && !g->streams && positions > (size_t)T) { // sized for a stream it will not run
        evalcore_cache_free(&g->cache);
        if (evalcore_cache_init(&g->cache, m, spec, T, calib, n_calib, err) != 0) return -1;
    }
    g->ids = common_calloc(max_tokens > 0 ? max_tokens : 1, sizeof(int));
    return 0;
}

void genstream_free(GenStream *g) {
    evalcore_cache_free(&g->cache);
    common_free(g->ids);
    *g = (GenStream){0};
}

int genstream_start(GenStream *g, const int *prompt, size_t n, char *err) {
    CHECK(n >= 1 && n <= g->cap);
    memcpy(g->ids, prompt, n * sizeof(int));
    g->n_ids = n;
    size_t first = !g->streams && n > (size_t)g->context ? n - g->context : 0; // the newest T tokens
    double t0 = common_now();
    if (evalcore_cache_prefill(&g->cache, g->m, prompt + first, (int)(n - first), err) != 0) return -1;
    g->t_prefill += common_now() - t0;
    g->n_prefill += n - first;
    g->pos = (int)(n - first);
    return 0;
}

int genstream_feed(GenStream *g, int token, char *err) {
    CHECK(g->n_ids < g->cap);
    g->ids[g->n_ids++] = token;
    double t0 = common_now();
    int rc;
    if (!g->streams && g->pos == g->context) { // at the trained context: rebuild from the newest half
        int keep = g->context / 2 > 0 ? g->context / 2 : 1;
        rc = evalcore_cache_prefill(&g->cache, g->m, g->ids + g->n_ids - keep, keep, err);
        g->pos = keep;
        g->rebuilds++;
        g->n_decode += (size_t)keep;
    } else {
        rc = evalcore_cache_step(&g->cache, g->m, token, g->pos, err);
        g->pos++;
        g->n_decode++;
    }
    g->t_decode += common_now() - t0;
    return rc;
}

const float *genstream_logits(const GenStream *g) { return g->cache.ds.logits; }
