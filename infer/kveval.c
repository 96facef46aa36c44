#include "kveval.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "../decode/step.h"

size_t kv_peak_rss_bytes(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (size_t)ru.ru_maxrss * 1024 : 0;
}

int kv_calibrate(const Model *m, KVCache *kv, const int *tokens, size_t n, char *err) {
    if (!kv_cache_needs_calibration(kv)) return 0;
    const ModelConfig *c = &m->cfg;
    int T = c->block_size, HD = model_head_dim(c), windows = (int)(n / T) < 8 ? (int)(n / T) : 8;
    if (windows < 1) {
        err_set(err, "low-rank calibration needs at least %d tokens, got %zu", T, n);
        return -1;
    }
    KVShape shape = {c->n_layer, c->n_head, c->n_kv_head, HD, T, c->rope_theta, .keep_prerope = 1};
    KVCache *full;
    if (kv_full_init(&full, &shape, err) != 0) return -1;
    DecodeState ds;
    decode_state_init(&ds, c, 1, T);
    size_t per_lane = (size_t)windows * T * HD;
    float *keys = common_calloc((size_t)c->n_layer * c->n_kv_head * per_lane, sizeof(float));
    float *vals = common_calloc((size_t)c->n_layer * c->n_kv_head * per_lane, sizeof(float));
    for (int w = 0; w < windows; w++) {
        kv_cache_reset(full);
        for (int t = 0; t < T; t++) CHECK(model_decode_step(m, &ds, full, tokens[(size_t)w * T + t], t) == 0);
        // the full cache holds fp32 rows, keys before RoPE: copy them out as samples
        for (int l = 0; l < c->n_layer; l++)
            for (int g = 0; g < c->n_kv_head; g++) {
                const KVLane *lane = kv_cache_lane(full, l, g);
                size_t off = (size_t)(l * c->n_kv_head + g) * per_lane + (size_t)w * T * HD;
                memcpy(keys + off, lane->k, (size_t)T * HD * sizeof(float));
                memcpy(vals + off, lane->v, (size_t)T * HD * sizeof(float));
            }
    }
    int rc = 0;
    for (int l = 0; l < c->n_layer && rc == 0; l++)
        for (int g = 0; g < c->n_kv_head && rc == 0; g++) {
            size_t off = (size_t)(l * c->n_kv_head + g) * per_lane;
            rc = kv_lowrank_fit(kv, l, g, keys + off, vals + off, windows * T, err);
        }
    common_free(keys);
    common_free(vals);
    decode_state_free(&ds);
    kv_cache_free(full);
    return rc;
}

int kv_pair_init(KVPair *p, const Model *m, const KVSpec *spec, int context, const int *calib, size_t n_calib,
                 char *err) {
    const ModelConfig *c = &m->cfg;
    KVShape shape = {c->n_layer, c->n_head, c->n_kv_head, model_head_dim(c), context, c->rope_theta, 0};
    *p = (KVPair){0};
    if (kv_full_init(&p->full, &shape, err) != 0) return -1;
    if (spec->paged_block) { // one sequence: room for a stream, and a block to spare
        int n_blocks = (context + spec->paged_block - 1) / spec->paged_block + 1;
        if (kv_pool_init_spec(&p->pool, &shape, spec, n_blocks, err) != 0 ||
            kv_paged_policy(&p->seq.policy, spec, err) != 0) {
            kv_cache_free(p->full);
            kv_pool_free(p->pool);
            return -1;
        }
    } else if (kv_cache_init(&p->comp, spec, &shape, err) != 0 || kv_calibrate(m, p->comp, calib, n_calib, err) != 0) {
        kv_cache_free(p->full);
        kv_cache_free(p->comp);
        return -1;
    }
    decode_state_init(&p->dfull, c, 1, context);
    decode_state_init(&p->dcomp, c, 1, context);
    return 0;
}

void kv_pair_reset(KVPair *p, int prefill) {
    kv_cache_reset(p->full);
    if (p->pool) {
        kv_paged_end(p->pool, &p->seq); // a stream starts empty (no prompt lookup), keeping the policy
        return;
    }
    kv_cache_reset(p->comp);
    kv_cache_set_prefill(p->comp, prefill);
}

void kv_pair_step(KVPair *p, const Model *m, int token, int pos) {
    char err[ERR_LEN];
    if (p->pool) CHECK(model_decode_step_paged(m, &p->dcomp, p->pool, &p->seq, token, pos, err) == 0);
    else CHECK(model_decode_step(m, &p->dcomp, p->comp, token, pos) == 0);
}

size_t kv_pair_bytes(const KVPair *p) {
    if (!p->pool) return kv_cache_bytes(p->comp);
    int blocks = kv_paged_blocks(&p->seq), held = 0;
    for (int i = 0; i < blocks; i++) held += p->seq.table[i] != KV_BLOCK_DROPPED;
    size_t block_bytes = 2 * (size_t)p->pool->n_layer * p->pool->n_kv_head * p->pool->block * p->pool->row_bytes;
    return (size_t)held * block_bytes + (size_t)blocks * (sizeof(int) + sizeof(float));
}

void kv_pair_free(KVPair *p) {
    decode_state_free(&p->dfull);
    decode_state_free(&p->dcomp);
    kv_paged_end(p->pool, &p->seq);
    kv_pool_free(p->pool);
    kv_cache_free(p->full);
    kv_cache_free(p->comp);
}

int kv_eval_streams(const Model *m, const KVSpec *spec, const int *tokens, size_t n, const KVEvalConfig *cfg,
                    KVEvalResult *out, char *err) {
    const ModelConfig *c = &m->cfg;
    int T = cfg->context, V = c->vocab_size;
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
    KVPair pair;
    if (kv_pair_init(&pair, m, spec, T, cfg->calib, cfg->n_calib, err) != 0) return -1;
    double nll = 0.0, nll_full = 0.0, kl = 0.0, t_prefill = 0.0, t_decode = 0.0;
    double cnll[KV_EVAL_MAX_CURVE] = {0}, cnll_full[KV_EVAL_MAX_CURVE] = {0};
    size_t scored = 0, agree = 0, bytes = 0, cn[KV_EVAL_MAX_CURVE] = {0};
    int span = T - cfg->prefill; // predicted positions prefill .. T-1
    for (int s = 0; s < cfg->streams; s++) {
        size_t start = cfg->streams > 1 ? (n - T - 1) * (size_t)s / (cfg->streams - 1) : 0;
        const int *x = tokens + start;
        kv_pair_reset(&pair, cfg->prefill);
        for (int t = 0; t < T; t++) {
            CHECK(model_decode_step(m, &pair.dfull, pair.full, x[t], t) == 0);
            double t0 = common_now();
            kv_pair_step(&pair, m, x[t], t);
            double dt = common_now() - t0;
            if (t < cfg->prefill) t_prefill += dt;
            else t_decode += dt;
            if (t + 1 < cfg->prefill || t + 1 >= T) continue; // score tokens prefill .. T-1
            // log-softmax of both; KL(full || compressed); nll of the true next token
            const float *a = pair.dfull.logits, *b = pair.dcomp.logits;
            float ma = a[0], mb = b[0];
            int arg_a = 0, arg_b = 0;
            for (int i = 1; i < V; i++) {
                if (a[i] > ma) ma = a[i], arg_a = i;
                if (b[i] > mb) mb = b[i], arg_b = i;
            }
            double za = 0.0, zb = 0.0;
            for (int i = 0; i < V; i++) za += exp(a[i] - ma), zb += exp(b[i] - mb);
            double lza = log(za), lzb = log(zb), k = 0.0;
            for (int i = 0; i < V; i++) {
                double la = a[i] - ma - lza, lb = b[i] - mb - lzb;
                k += exp(la) * (la - lb);
            }
            int y = x[t + 1];
            nll += -(b[y] - mb - lzb);
            nll_full += -(a[y] - ma - lza);
            if (cfg->curve) {
                int k = (int)((long long)(t + 1 - cfg->prefill) * cfg->curve / span);
                cnll[k] += -(b[y] - mb - lzb), cnll_full[k] += -(a[y] - ma - lza), cn[k]++;
            }
            kl += k;
            agree += arg_a == arg_b;
            scored++;
        }
        bytes = kv_pair_bytes(&pair);
    }
    int KVC = model_kv_dim(c);
    out->tokens = scored;
    out->ppl = exp(nll / scored);
    out->ppl_full = exp(nll_full / scored);
    out->kl = kl / scored;
    out->top1_agree = (double)agree / scored;
    out->kv_bytes = bytes;
    out->bytes_per_token = (double)bytes / T;
    out->fp16_bytes_per_token = (double)c->n_layer * 2 * KVC * 2;
    out->prefill_tokens_per_s = t_prefill > 0 ? (double)cfg->prefill * cfg->streams / t_prefill : 0.0;
    out->decode_tokens_per_s = t_decode > 0 ? (double)(T - cfg->prefill) * cfg->streams / t_decode : 0.0;
    out->peak_rss_bytes = kv_peak_rss_bytes();
    for (int k = 0; k < cfg->curve; k++) {
        out->curve_start[k] = cfg->prefill + (int)(((long long)k * span + cfg->curve - 1) / cfg->curve);
        out->curve_ppl[k] = cn[k] ? exp(cnll[k] / cn[k]) : 0.0;
        out->curve_ppl_full[k] = cn[k] ? exp(cnll_full[k] / cn[k]) : 0.0;
    }
    kv_pair_free(&pair);
    return 0;
}

void kv_eval_print_json(const KVSpec *spec, const KVEvalConfig *cfg, const KVEvalResult *r) {
    printf("{\"spec\": \"%s\", \"context\": %d, \"prefill\": %d, \"streams\": %d, \"tokens\": %zu, "
           "\"ppl\": %.6g, \"ppl_full\": %.6g, \"kl\": %.6g, \"top1_agree\": %.6g, \"kv_bytes\": %zu, "
           "\"bytes_per_token\": %.6g, \"fp16_bytes_per_token\": %.6g, \"prefill_tokens_per_s\": %.1f, "
           "\"decode_tokens_per_s\": %.1f, \"peak_rss_bytes\": %zu",
           spec->text, cfg->context, cfg->prefill, cfg->streams, r->tokens, r->ppl, r->ppl_full, r->kl, r->top1_agree,
           r->kv_bytes, r->bytes_per_token, r->fp16_bytes_per_token, r->prefill_tokens_per_s, r->decode_tokens_per_s,
           r->peak_rss_bytes);
    if (cfg->curve) {
        const char *keys[3] = {"curve_position", "curve_ppl", "curve_ppl_full"};
        for (int j = 0; j < 3; j++) {
            printf(", \"%s\": [", keys[j]);
            for (int k = 0; k < cfg->curve; k++) {
                if (j == 0) printf("%s%d", k ? ", " : "", r->curve_start[k]);
                else printf("%s%.6g", k ? ", " : "", j == 1 ? r->curve_ppl[k] : r->curve_ppl_full[k]);
            }
            printf("]");
        }
    }
    printf("}\n");
}
