// The paged pool under a request workload (`--eval prefix --kv paged:BLOCK`): requests of `context` tokens
// that all begin with the same `shared` tokens (a common prompt prefix, like a system prompt) followed by
// text of their own, fed one after another through one pool. A request reuses the full blocks an earlier
// one left (its prefix) and computes only the rest. Every request is also run through a fresh full cache:
// since reuse never shifts positions, the logits of every computed token must agree.
#include <math.h>
#include <stdio.h>

#include "../decode/step.h"
#include "kveval.h"

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

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
    KVShape shape = {c->n_layer, c->n_head, c->n_kv_head, model_head_dim(c), T, c->rope_theta, 0};
    KVPool *pool;
    KVSeqPolicy policy;
    if (kv_paged_policy(&policy, spec, err) != 0 || kv_pool_init_spec(&pool, &shape, spec, n_blocks, err) != 0)
        return -1;
    KVCache *full = NULL;
    if (kv_full_init(&full, &shape, err) != 0) return kv_pool_free(pool), -1;
    DecodeState dp, df;
    decode_state_init(&dp, c, 1, T);
    decode_state_init(&df, c, 1, T);
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
        kv_cache_reset(full);
        for (int t = 0; t < T && rc == 0; t++) CHECK(model_decode_step(m, &df, full, req[t], t) == 0);
        double t2 = common_now();
        if (rc == 0) { // the last prompt token's logits: what a request's first generated token comes from
            for (int i = 0; i < c->vocab_size; i++) max_diff = fmax(max_diff, fabs(dp.logits[i] - df.logits[i]));
            agree += argmax(dp.logits, c->vocab_size) == argmax(df.logits, c->vocab_size);
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
    decode_state_free(&df);
    kv_cache_free(full);
    kv_pool_free(pool);
    return rc;
}

void kv_prefix_print_json(const KVSpec *spec, const KVPrefixConfig *pc, const KVPrefixResult *r) {
    printf("{\"spec\": \"%s\", \"task\": \"prefix\", \"requests\": %d, \"context\": %d, \"shared\": %d, "
           "\"pool_blocks\": %d, \"prompt_tokens\": %zu, \"computed_tokens\": %zu, \"prefill_saved\": %lld, "
           "\"hit_rate\": %.6g, \"evictions\": %lld, \"fragmentation\": %.6g, \"utilisation\": %.6g, "
           "\"pool_bytes\": %zu, \"peak_bytes_used\": %zu, \"max_abs_logit_diff\": %.3g, \"top1_agree\": %.6g, "
           "\"ms_per_request\": %.4g, \"ms_per_request_full\": %.4g}\n",
           spec->text, pc->requests, pc->context, pc->shared, r->pool_blocks, r->prompt_tokens, r->computed_tokens,
           (long long)r->prefill_saved, r->hit_rate, (long long)r->evictions, r->fragmentation, r->utilisation,
           r->pool_bytes, r->peak_bytes_used, r->max_abs_logit_diff, r->top1_agree, r->ms_per_request,
           r->ms_per_request_full);
}
