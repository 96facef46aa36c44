// The paged pool under a request workload (`--eval prefix --kv paged:BLOCK`): requests of `context` tokens
// that all begin with the same `shared` tokens (a common prompt prefix, like a system prompt) followed by
// text of their own, fed one after another through one pool. A request reuses the full blocks an earlier
// one left (its prefix) and computes only the rest. Every request is also run through a fresh full cache:
// since reuse never shifts positions, the logits of every computed token must agree.
#include <math.h>
#include <stdio.h>

#include "evalcore.h"
#include "kveval.h"
#include "../decode/sample.h"

int kv_eval_prefix(const Model *m, const KVSpec *spec, const int *tokens, size_t n, const KVPrefixConfig *pc,
                   KVPrefixResult *out, char *err) {
    const ModelConfig *c = &m->cfg;
    int T = pc->context, S = pc->shared, R = pc->requests, B = spec->paged_block;
    if (!B) return err_set(err, "--eval prefix needs --kv paged:BLOCK (got '%s')", spec->text), -1;
    if (T < 2 || S < 0 || S >= T || R < 1)
        return err_set(err, "--eval prefix: need 0 <= --prefill (shared prefix) < --context, and --streams >= 1"), -1;
    if ((size_t)(R + 1) * (T - S) + S > n)
        return err_set(err, "--eval prefix: the text has %zu tokens, fewer than %d requests of %d need", n, R, T), -1;
    int per_request = (T + B - 1) / B;
    int n_blocks = pc->pool_blocks ? pc->pool_blocks : 2 * per_request;
    KVShape shape = decode_kv_shape(c, T);
    KVPool *pool;
    KVSeqPolicy policy;
    if (kv_paged_policy(&policy, spec, err) != 0 || kv_pool_init_spec(&pool, &shape, spec, n_blocks, err) != 0)
        return -1;
    EvalCache full;
    if (evalcore_cache_init_full(&full, m, T, err) != 0) {
        kv_pool_free(pool);
        return -1;
    }
    DecodeState dp;
    decode_state_init(&dp, c, 1, T);
    int *req = common_calloc((size_t)T, sizeof(int));
    size_t stride = (n - S - (size_t)(T - S)) / (size_t)R; // each request's own text from a different place
    double t_paged = 0.0, t_full = 0.0, frag = 0.0, util = 0.0, max_diff = 0.0;
    size_t computed = 0, agree = 0;
    int rc = 0;
    *out = (KVPrefixResult){0};
    for (int r = 0; r < R && rc == 0; r++) {
        for (int t = 0; t < S; t++) req[t] = tokens[t];
        for (int t = S; t < T; t++) req[t] = tokens[S + (size_t)r * stride + (size_t)(t - S)];
        KVSeq seq = {.policy = policy};
        double t0 = common_now();
        int reused = kv_paged_begin(pool, &seq, req, T, KV_PRIORITY_DEFAULT, err);
        if (reused < 0) {
            rc = -1;
            break;
        }
        for (int t = reused; t < T; t++)
            if (model_decode_step_paged(m, &dp, pool, &seq, req[t], t, err) != 0) {
                rc = -1;
                break;
            }
        double t1 = common_now();
        if (rc == 0) CHECK(evalcore_cache_prefill(&full, m, req, T, err) == 0);
        double t2 = common_now();
        if (rc == 0) { // the last prompt token's logits: what a request's first generated token comes from
            const float *ref = full.ds.logits;
            for (int i = 0; i < c->vocab_size; i++) max_diff = fmax(max_diff, fabs(dp.logits[i] - ref[i]));
            agree += sample_argmax(dp.logits, c->vocab_size) == sample_argmax(ref, c->vocab_size);
            KVPagedStats st;
            kv_pool_stats(pool, &st);
            frag += st.fragmentation;
            util += st.utilisation;
            if (st.bytes_used > out->peak_bytes_used) out->peak_bytes_used = st.bytes_used;
        }
        computed += (size_t)(T - reused);
        t_paged += t1 - t0;
        t_full += t2 - t1;
        kv_paged_end(pool, &seq);
    }
    if (rc == 0) {
        KVPagedStats st;
        kv_pool_stats(pool, &st);
        out->pool_blocks = n_blocks;
        out->prompt_tokens = (size_t)R * T;
        out->computed_tokens = computed;
        out->prefill_saved = st.prefill_saved;
        out->hit_rate = st.hit_rate;
        out->evictions = st.evictions;
        out->fragmentation = frag / R;
        out->utilisation = util / R;
        out->pool_bytes = st.bytes;
        out->max_abs_logit_diff = max_diff;
        out->top1_agree = (double)agree / R;
        out->ms_per_request = 1e3 * t_paged / R;
        out->ms_per_request_full = 1e3 * t_full / R;
        rc = kv_pool_validate(pool, err);
    }
    common_free(req);
    decode_state_free(&dp);
    evalcore_cache_free(&full);
    kv_pool_free(pool);
    return rc;
}

void kv_prefix_print_json(const KVSpec *spec, const KVPrefixConfig *pc, const KVPrefixResult *r) {
    EvalJson j;
    evalcore_json_begin(&j, stdout);
    evalcore_json_str(&j, "spec", spec->text);
    evalcore_json_str(&j, "task", "prefix");
    evalcore_json_int(&j, "requests", pc->requests);
    evalcore_json_int(&j, "context", pc->context);
    evalcore_json_int(&j, "shared", pc->shared);
    evalcore_json_int(&j, "pool_blocks", r->pool_blocks);
    evalcore_json_int(&j, "prompt_tokens", (long long)r->prompt_tokens);
    evalcore_json_int(&j, "computed_tokens", (long long)r->computed_tokens);
    evalcore_json_int(&j, "prefill_saved", r->prefill_saved);
    evalcore_json_num(&j, "hit_rate", r->hit_rate);
    evalcore_json_int(&j, "evictions", r->evictions);
    evalcore_json_num(&j, "fragmentation", r->fragmentation);
    evalcore_json_num(&j, "utilisation", r->utilisation);
    evalcore_json_int(&j, "pool_bytes", (long long)r->pool_bytes);
    evalcore_json_int(&j, "peak_bytes_used", (long long)r->peak_bytes_used);
    evalcore_json_fmt(&j, "max_abs_logit_diff", "%.3g", r->max_abs_logit_diff);
    evalcore_json_num(&j, "top1_agree", r->top1_agree);
    evalcore_json_fmt(&j, "ms_per_request", "%.4g", r->ms_per_request);
    evalcore_json_fmt(&j, "ms_per_request_full", "%.4g", r->ms_per_request_full);
    evalcore_json_end(&j);
}
