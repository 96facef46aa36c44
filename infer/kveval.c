// The streaming eval (kveval.h): streams at evenly spaced offsets through the cache under test and the full
// cache in lockstep (evalcore.h's pair), every prediction after the prefill compared.
#include "kveval.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "evalcore.h"

enum { KV_EVAL_BATCH = 8 }; // streams per batched step: up to 8 rows the products are bit-identical

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
    int from_text = cfg->bos ? T - 1 : T; // a stream's tokens taken from the text (after the start symbol)
    if (n < (size_t)from_text + 1) {
        err_set(err, "the text has %zu tokens; a stream of context %d needs at least %d", n, T, from_text + 1);
        return -1;
    }
    if (cfg->bos && (cfg->bos_id < 0 || cfg->bos_id >= V)) {
        err_set(err, "the start symbol %d is outside the vocabulary of %d", cfg->bos_id, V);
        return -1;
    }
    FILE *tf = NULL;
    if (cfg->tokens_out) {
        tf = fopen(cfg->tokens_out, "w");
        if (!tf) {
            err_set(err, "cannot write '%s': %s", cfg->tokens_out, strerror(errno));
            return -1;
        }
        fprintf(tf, "# %s: stream position nll nll_full kl agree\n", spec->text);
    }
    // Streams go through in groups of up to KV_EVAL_BATCH in lockstep, one decode_forward of g rows per side
    // and position (bit-identical to one stream at a time: evalcore_caches_step); the comparisons are added
    // afterwards in stream order, so every sum is the one-at-a-time sum. Low rank fits its bases per cache, so
    // it goes one stream at a time rather than fitting the same bases g times.
    int G = cfg->streams < KV_EVAL_BATCH ? cfg->streams : KV_EVAL_BATCH;
    if (spec->rank) G = 1;
    EvalPair pairs[KV_EVAL_BATCH];
    for (int i = 0; i < G; i++) {
        int rc; // without the reference, the pair's full cache stays uninitialised (reset and free skip it)
        if (cfg->no_reference) {
            pairs[i] = (EvalPair){0};
            rc = evalcore_cache_init(&pairs[i].comp, m, spec, T, cfg->calib, cfg->n_calib, err);
        } else {
            rc = evalcore_pair_init(&pairs[i], m, spec, T, cfg->calib, cfg->n_calib, err);
        }
        if (rc != 0) {
            while (i-- > 0) evalcore_pair_free(&pairs[i]);
            if (tf) fclose(tf);
            return -1;
        }
    }
    DecodeState ds_full, ds_comp;
    if (!cfg->no_reference) decode_state_init_on(&ds_full, c, m->ops, G, T);
    decode_state_init_on(&ds_comp, c, m->ops, G, T);
    int span = T - cfg->prefill; // predicted positions prefill .. T-1
    EvalTokenCompare *tcs = common_calloc((size_t)G * span, sizeof(EvalTokenCompare));
    EvalAcc acc = {0};
    double t_prefill = 0.0;
    double t_decode = 0.0;
    double cnll[KV_EVAL_MAX_CURVE] = {0};
    double cnll_full[KV_EVAL_MAX_CURVE] = {0};
    size_t cn[KV_EVAL_MAX_CURVE] = {0};
    size_t bytes = 0, bytes_peak = 0;
    double bytes_sum = 0.0, fp16_sum = 0.0, fp16_bpt = evalcore_fp16_bytes_per_token(c);
    size_t bytes_steps = 0;
    *out = (KVEvalResult){0};
    out->stream_nll = common_calloc(cfg->streams, sizeof(double));
    out->stream_nll_full = common_calloc(cfg->streams, sizeof(double));
    out->stream_kl = common_calloc(cfg->streams, sizeof(double));
    out->stream_agree = common_calloc(cfg->streams, sizeof(int));
    int *bos_buf = cfg->bos ? common_calloc((size_t)G * T, sizeof(int)) : NULL;
    for (int s0 = 0; s0 < cfg->streams; s0 += G) {
        int g = cfg->streams - s0 < G ? cfg->streams - s0 : G;
        const int *x[KV_EVAL_BATCH];
        EvalCache *full[KV_EVAL_BATCH], *comp[KV_EVAL_BATCH];
        int tok[KV_EVAL_BATCH], pos[KV_EVAL_BATCH];
        for (int i = 0; i < g; i++) {
            int s = s0 + i;
            size_t start = cfg->streams > 1 ? (n - from_text - 1) * (size_t)s / (cfg->streams - 1) : 0;
            x[i] = tokens + start;
            if (cfg->bos) { // the start symbol, then the text
                int *b = bos_buf + (size_t)i * T;
                b[0] = cfg->bos_id;
                memcpy(b + 1, tokens + start, (size_t)from_text * sizeof(int));
                x[i] = b;
            }
            evalcore_pair_reset(&pairs[i], cfg->prefill);
            full[i] = &pairs[i].full;
            comp[i] = &pairs[i].comp;
        }
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < g; i++) tok[i] = x[i][t], pos[i] = t;
            if (!cfg->no_reference) CHECK(evalcore_caches_step(full, g, m, &ds_full, tok, pos, err) == 0);
            double t0 = common_now();
            CHECK(evalcore_caches_step(comp, g, m, &ds_comp, tok, pos, err) == 0);
            double dt = common_now() - t0;
            if (t < cfg->prefill) t_prefill += dt;
            else t_decode += dt;
            if (t + 1 < cfg->prefill || t + 1 >= T) continue; // score tokens prefill .. T-1
            for (int i = 0; i < g; i++) { // what each cache holds while it predicts, against a full fp16 cache
                size_t b = evalcore_cache_bytes(comp[i]);
                bytes_sum += (double)b;
                bytes_peak = b > bytes_peak ? b : bytes_peak;
                fp16_sum += fp16_bpt * (t + 1);
                bytes_steps++;
            }
            for (int i = 0; i < g; i++)
                evalcore_compare_logits((cfg->no_reference ? ds_comp.logits : ds_full.logits) + (size_t)i * V,
                                        ds_comp.logits + (size_t)i * V, V,
                                        x[i][t + 1], &tcs[(size_t)i * span + (t + 1 - cfg->prefill)]);
        }
        for (int i = 0; i < g; i++)
            for (int k = 0; k < span; k++) {
                const EvalTokenCompare *tc = &tcs[(size_t)i * span + k];
                evalcore_acc_add(&acc, tc);
                out->stream_nll[s0 + i] += tc->nll;
                out->stream_nll_full[s0 + i] += tc->nll_full;
                out->stream_kl[s0 + i] += tc->kl;
                out->stream_agree[s0 + i] += tc->top1 == tc->top1_full;
                if (tf)
                    fprintf(tf, "%d %d %.9g %.9g %.9g %d\n", s0 + i, cfg->prefill + k, tc->nll, tc->nll_full, tc->kl,
                            tc->top1 == tc->top1_full);
                if (cfg->curve) {
                    int b = (int)((long long)k * cfg->curve / span);
                    cnll[b] += tc->nll;
                    cnll_full[b] += tc->nll_full;
                    cn[b]++;
                }
            }
        bytes = evalcore_cache_bytes(&pairs[g - 1].comp);
    }
    common_free(tcs);
    common_free(bos_buf);
    int write_failed = 0, write_errno = 0;
    if (tf) { // a write that failed while buffered shows at the close (a full disk: ENOSPC)
        int e = ferror(tf) ? errno : 0;
        write_failed = e != 0 || ferror(tf);
        if (fclose(tf) != 0) {
            write_failed = 1;
            if (!e) e = errno;
        }
        write_errno = e ? e : EIO;
    }
    if (!cfg->no_reference) decode_state_free(&ds_full);
    decode_state_free(&ds_comp);
    out->tokens = acc.scored;
    out->ppl = evalcore_acc_ppl(&acc);
    out->ppl_full = evalcore_acc_ppl_full(&acc);
    out->kl = evalcore_acc_kl(&acc);
    out->top1_agree = evalcore_acc_top1(&acc);
    out->kv_bytes = bytes;
    out->bytes_per_token = (double)bytes / T;
    out->kv_bytes_mean = bytes_sum / bytes_steps;
    out->kv_bytes_peak = bytes_peak;
    out->fp16_full_bytes_mean = fp16_sum / bytes_steps;
    out->fp16_bytes_per_token = evalcore_fp16_bytes_per_token(c);
    out->prefill_tokens_per_s = t_prefill > 0 ? (double)cfg->prefill * cfg->streams / t_prefill : 0.0;
    out->decode_tokens_per_s = t_decode > 0 ? (double)(T - cfg->prefill) * cfg->streams / t_decode : 0.0;
    out->peak_rss_bytes = evalcore_peak_rss_bytes();
    for (int k = 0; k < cfg->curve; k++) {
        out->curve_start[k] = cfg->prefill + (int)(((long long)k * span + cfg->curve - 1) / cfg->curve);
        out->curve_ppl[k] = cn[k] ? exp(cnll[k] / cn[k]) : 0.0;
        out->curve_ppl_full[k] = cn[k] ? exp(cnll_full[k] / cn[k]) : 0.0;
    }
    for (int i = 0; i < G; i++) evalcore_pair_free(&pairs[i]);
    if (write_failed) {
        err_set(err, "writing '%s' failed: %s", cfg->tokens_out, strerror(write_errno));
        kv_eval_result_free(out);
        return -1;
    }
    return 0;
}

void kv_eval_result_free(KVEvalResult *r) {
    common_free(r->stream_nll);
    common_free(r->stream_nll_full);
    common_free(r->stream_kl);
    common_free(r->stream_agree);
    r->stream_nll = r->stream_nll_full = r->stream_kl = NULL;
    r->stream_agree = NULL;
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
    double none = NAN; // without the reference there is nothing to compare with: null
    evalcore_json_num(&j, "ppl_full", cfg->no_reference ? none : r->ppl_full);
    evalcore_json_num(&j, "kl", cfg->no_reference ? none : r->kl);
    evalcore_json_num(&j, "top1_agree", cfg->no_reference ? none : r->top1_agree);
    evalcore_json_int(&j, "kv_bytes", (long long)r->kv_bytes);
    evalcore_json_num(&j, "bytes_per_token", r->bytes_per_token);
    evalcore_json_num(&j, "fp16_bytes_per_token", r->fp16_bytes_per_token);
    evalcore_json_fmt(&j, "prefill_tokens_per_s", "%.1f", r->prefill_tokens_per_s);
    evalcore_json_fmt(&j, "decode_tokens_per_s", "%.1f", r->decode_tokens_per_s);
    evalcore_json_int(&j, "peak_rss_bytes", (long long)r->peak_rss_bytes);
    evalcore_json_num(&j, "kv_bytes_mean", r->kv_bytes_mean);
    evalcore_json_int(&j, "kv_bytes_peak", (long long)r->kv_bytes_peak);
    evalcore_json_num(&j, "fp16_full_bytes_mean", r->fp16_full_bytes_mean);
    evalcore_json_int(&j, "bos", cfg->bos);
    evalcore_json_int(&j, "reference", !cfg->no_reference);
    evalcore_json_num_array(&j, "stream_nll", r->stream_nll, cfg->streams);
    if (!cfg->no_reference) {
        evalcore_json_num_array(&j, "stream_nll_full", r->stream_nll_full, cfg->streams);
        evalcore_json_num_array(&j, "stream_kl", r->stream_kl, cfg->streams);
        evalcore_json_int_array(&j, "stream_agree", r->stream_agree, cfg->streams);
    }
    if (cfg->curve) {
        evalcore_json_int_array(&j, "curve_position", r->curve_start, cfg->curve);
        evalcore_json_num_array(&j, "curve_ppl", r->curve_ppl, cfg->curve);
        evalcore_json_num_array(&j, "curve_ppl_full", r->curve_ppl_full, cfg->curve);
    }
    evalcore_json_end(&j);
}
