// The streaming eval (kveval.h): streams at evenly spaced offsets through the cache under test and the full
// cache in lockstep (evalcore.h's pair), every prediction after the prefill compared.
#include "kveval.h"

#include <math.h>
#include <stdio.h>

#include "evalcore.h"

int kv_eval_streams(const Model *m, const KVSpec *spec, const int *tokens, size_t n, const KVEvalConfig *cfg,
                    KVEvalResult *out, char *err) {
    const ModelConfig *c = &m->cfg;
    int T = cfg->context;
    int V = c->vocab_size;
    if (T < 2 || cfg->prefill < 1 || cfg->prefill >= T || cfg->streams < 1) {
        err_set(err, "need context >= 2, 1 <= prefill < context and streams >= 1 (got %d, %d, %d)", T, cfg->prefill,
                cfg->streams);
        return -1;
    }
    if (cfg->curve < 0 || cfg->curve > KV_EVAL_MAX_CURVE || cfg->curve > T - cfg->prefill) {
        err_set(err, "--curve %d: need 0..%d buckets, at most the %d scored positions", cfg->curve, KV_EVAL_MAX_CURVE,
                T - cfg->prefill);
        return -1;
    }
    if (n < (size_t)T + 1) {
        err_set(err, "the text has %zu tokens; a stream of context %d needs at least %d", n, T, T + 1);
        return -1;
    }
    EvalPair pair;
    if (evalcore_pair_init(&pair, m, spec, T, cfg->calib, cfg->n_calib, err) != 0) return -1;
    EvalAcc acc = {0};
    double t_prefill = 0.0;
    double t_decode = 0.0;
    double cnll[KV_EVAL_MAX_CURVE] = {0};
    double cnll_full[KV_EVAL_MAX_CURVE] = {0};
    size_t cn[KV_EVAL_MAX_CURVE] = {0};
    size_t bytes = 0;
    int span = T - cfg->prefill; // predicted positions prefill .. T-1
    for (int s = 0; s < cfg->streams; s++) {
        size_t start = cfg->streams > 1 ? (n - T - 1) * (size_t)s / (cfg->streams - 1) : 0;
        const int *x = tokens + start;
        evalcore_pair_reset(&pair, cfg->prefill);
        for (int t = 0; t < T; t++) {
            CHECK(evalcore_cache_step(&pair.full, m, x[t], t, err) == 0);
            double t0 = common_now();
            CHECK(evalcore_cache_step(&pair.comp, m, x[t], t, err) == 0);
            double dt = common_now() - t0;
            if (t < cfg->prefill) t_prefill += dt;
            else t_decode += dt;
            if (t + 1 < cfg->prefill || t + 1 >= T) continue; // score tokens prefill .. T-1
            EvalTokenCompare tc;
            evalcore_compare_logits(pair.full.ds.logits, pair.comp.ds.logits, V, x[t + 1], &tc);
            evalcore_acc_add(&acc, &tc);
            if (cfg->curve) {
                int k = (int)((long long)(t + 1 - cfg->prefill) * cfg->curve / span);
                cnll[k] += tc.nll;
                cnll_full[k] += tc.nll_full;
                cn[k]++;
            }
        }
        bytes = evalcore_cache_bytes(&pair.comp);
    }
    out->tokens = acc.scored;
    out->ppl = evalcore_acc_ppl(&acc);
    out->ppl_full = evalcore_acc_ppl_full(&acc);
    out->kl = evalcore_acc_kl(&acc);
    out->top1_agree = evalcore_acc_top1(&acc);
    out->kv_bytes = bytes;
    out->bytes_per_token = (double)bytes / T;
    out->fp16_bytes_per_token = evalcore_fp16_bytes_per_token(c);
    out->prefill_tokens_per_s = t_prefill > 0 ? (double)cfg->prefill * cfg->streams / t_prefill : 0.0;
    out->decode_tokens_per_s = t_decode > 0 ? (double)(T - cfg->prefill) * cfg->streams / t_decode : 0.0;
    out->peak_rss_bytes = evalcore_peak_rss_bytes();
    for (int k = 0; k < cfg->curve; k++) {
        out->curve_start[k] = cfg->prefill + (int)(((long long)k * span + cfg->curve - 1) / cfg->curve);
        out->curve_ppl[k] = cn[k] ? exp(cnll[k] / cn[k]) : 0.0;
        out->curve_ppl_full[k] = cn[k] ? exp(cnll_full[k] / cn[k]) : 0.0;
    }
    evalcore_pair_free(&pair);
    return 0;
}

void kv_eval_print_json(const KVSpec *spec, const KVEvalConfig *cfg, const KVEvalResult *r) {
    EvalJson j;
    evalcore_json_begin(&j, stdout);
    evalcore_json_str(&j, "spec", spec->text);
    evalcore_json_int(&j, "context", cfg->context);
    evalcore_json_int(&j, "prefill", cfg->prefill);
    evalcore_json_int(&j, "streams", cfg->streams);
    evalcore_json_int(&j, "tokens", (long long)r->tokens);
    evalcore_json_num(&j, "ppl", r->ppl);
    evalcore_json_num(&j, "ppl_full", r->ppl_full);
    evalcore_json_num(&j, "kl", r->kl);
    evalcore_json_num(&j, "top1_agree", r->top1_agree);
    evalcore_json_int(&j, "kv_bytes", (long long)r->kv_bytes);
    evalcore_json_num(&j, "bytes_per_token", r->bytes_per_token);
    evalcore_json_num(&j, "fp16_bytes_per_token", r->fp16_bytes_per_token);
    evalcore_json_fmt(&j, "prefill_tokens_per_s", "%.1f", r->prefill_tokens_per_s);
    evalcore_json_fmt(&j, "decode_tokens_per_s", "%.1f", r->decode_tokens_per_s);
    evalcore_json_int(&j, "peak_rss_bytes", (long long)r->peak_rss_bytes);
    if (cfg->curve) {
        evalcore_json_int_array(&j, "curve_position", r->curve_start, cfg->curve);
        evalcore_json_num_array(&j, "curve_ppl", r->curve_ppl, cfg->curve);
        evalcore_json_num_array(&j, "curve_ppl_full", r->curve_ppl_full, cfg->curve);
    }
    evalcore_json_end(&j);
}
