// The slower tier under one stream (`--eval tier --kv paged:B --fast N --prefetch MODE --transfer-us T
// [--slow-file PATH]`): the first `prefill` tokens go into the pool without the tier (a prompt, held in host
// memory; spilled to the file when there is one), then every later token is decoded through the tier, its
// logits compared with a full cache's. The reference logits are computed before the tier run and the skip
// mode's coverage oracle after it, so between tier steps nothing runs that a prefetch could hide behind:
// transfers overlap only the decode's own compute.
#include <stb/stb_ds.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../decode/sample.h"
#include "kvtier.h"


// Mean over (step, layer) of the full attention's mass (mean over heads) in the blocks that step read.
static double coverage(const Model *m, const KVPool *pool, const KVSeq *seq, const float *q_log, const int *sel_log,
                       int first, int last, int K1) {
    const ModelConfig *c = &m->cfg;
    int NH = c->n_head, HD = model_head_dim(c), B = pool->block;
    float *out = common_calloc((size_t)NH * HD + (size_t)NH * last, sizeof(float)), *att = out + (size_t)NH * HD;
    double sum = 0.0;
    int *table = NULL; // the view's table holds only the blocks of tokens 0..t: the pool reads its length
    arrsetlen(table, arrlen(seq->table));
    memcpy(table, seq->table, arrlen(seq->table) * sizeof(int));
    for (int t = first; t < last; t++) {
        KVSeq view = *seq;
        arrsetlen(table, t / B + 1);
        view.table = table, view.n_tokens = t + 1;
        for (int l = 0; l < c->n_layer; l++, q_log += (size_t)NH * HD, sel_log += K1) {
            attention_decode_paged(out, att, q_log, pool, &view, l, NH, c->n_kv_head, HD);
            double cov = 0.0;
            for (int h = 0; h < NH; h++)
                for (int j = 0; j < K1 && sel_log[j] >= 0; j++)
                    for (int r = sel_log[j] * B; r < (sel_log[j] + 1) * B && r <= t; r++)
                        cov += att[(size_t)h * (t + 1) + r];
            sum += cov / NH;
        }
    }
    arrfree(table), common_free(out);
    return sum / ((double)(last - first) * c->n_layer);
}

int kv_eval_tier(const Model *m, const int *tokens, size_t n, const KVTierConfig *cfg, KVTierResult *out,
                 char *err) {
    const ModelConfig *c = &m->cfg;
    int T = cfg->context, P = cfg->prefill, B = cfg->block, V = c->vocab_size;
    if (B < 1) return err_set(err, "--eval tier needs --kv paged:BLOCK"), -1;
    if (T < 2 || P < 0 || P > T - 2)
        return err_set(err, "--eval tier: need 0 <= --prefill <= --context - 2 (got prefill %d, context %d): "
                       "the first tier step warms the fast tier up, the rest are measured", P, T), -1;
    if ((size_t)T > n) return err_set(err, "--eval tier: the text has %zu tokens, fewer than --context %d", n, T), -1;
    int blocks = (T + B - 1) / B, steps = T - P;
    KVShape shape = decode_kv_shape(c, T);
    KVPool *pool;
    if (kv_pool_init(&pool, &shape, B, blocks, err) != 0) return -1;
    KVCache *full;
    KVSeq seq = {0};
    KVTier *tier = NULL;
    if (kv_tier_init(&tier, pool, &seq, cfg, err) != 0) return kv_pool_free(pool), -1; // the config, before work
    kv_tier_free(tier), tier = NULL;
    if (kv_full_init(&full, &shape, err) != 0) return kv_pool_free(pool), -1;
    DecodeState ds;
    decode_state_init(&ds, c, 1, T);
    // the reference first: a full cache over the whole stream, logits kept for the tier's steps
    float *ref = common_calloc((size_t)steps * V, sizeof(float));
    for (int t = 0; t < T; t++) {
        CHECK(model_decode_step(m, &ds, full, tokens[t], t) == 0);
        if (t >= P) memcpy(ref + (size_t)(t - P) * V, ds.logits, (size_t)V * sizeof(float));
    }
    int rc = kv_paged_begin(pool, &seq, NULL, 0, KV_PRIORITY_DEFAULT, err) < 0 ? -1 : 0;
    for (int t = 0; t < P && rc == 0; t++) rc = model_decode_step_paged(m, &ds, pool, &seq, tokens[t], t, err);
    if (rc == 0) rc = kv_tier_init(&tier, pool, &seq, cfg, err);
    int K1 = cfg->top_k > 0 ? cfg->top_k + 1 : 0, NHD = c->n_head * model_head_dim(c);
    float *q_log = K1 ? common_calloc((size_t)steps * c->n_layer * NHD, sizeof(float)) : NULL;
    int *sel_log = K1 ? common_calloc((size_t)steps * c->n_layer * K1, sizeof(int)) : NULL;
    DecodeTier ctx = {pool, &seq, tier, NULL, NULL, K1};
    double secs = 0.0, max_diff = 0.0;
    int agree = 0;
    *out = (KVTierResult){0};
    for (int t = P; t < T && rc == 0; t++) {
        ctx.q_log = q_log ? q_log + (size_t)(t - P) * c->n_layer * NHD : NULL;
        ctx.sel_log = sel_log ? sel_log + (size_t)(t - P) * c->n_layer * K1 : NULL;
        double t0 = common_now();
        rc = decode_tier_step(m, &ds, &ctx, tokens[t], t, err);
        if (t == P) kv_tier_reset_stats(tier); // the warm-up step
        else secs += common_now() - t0;
        if (rc != 0) break;
        const float *r = ref + (size_t)(t - P) * V;
        for (int i = 0; i < V; i++) max_diff = fmax(max_diff, fabs(ds.logits[i] - r[i]));
        agree += sample_argmax(ds.logits, V) == sample_argmax(r, V);
    }
    if (rc == 0) {
        kv_tier_stats(tier, &out->st);
        const KVTierStats *st = &out->st;
        int measured = steps - 1;
        out->blocks = blocks, out->fast_blocks = st->fast_blocks;
        out->unit_bytes = st->unit_bytes, out->fast_bytes = st->bytes;
        KVPagedStats ps;
        kv_pool_stats(pool, &ps);
        out->pool_bytes = ps.bytes;
        out->decode_tokens = steps;
        out->hit_rate = st->reads ? (double)st->hits / st->reads : 1.0;
        out->prefetch_accuracy = st->prefetch_issued ? (double)st->prefetch_used / st->prefetch_issued : 0.0;
        out->mass_covered = K1 ? coverage(m, pool, &seq, q_log + (size_t)c->n_layer * NHD,
                                          sel_log + (size_t)c->n_layer * K1, P + 1, T, K1) : 1.0;
        out->max_abs_logit_diff = max_diff;
        out->top1_agree = (double)agree / steps;
        out->decode_tokens_per_s = secs > 0 ? measured / secs : 0.0;
        out->stall_ms_per_token = 1e3 * st->stall_s / measured;
        out->mb_moved_per_token = st->bytes_moved / 1e6 / measured;
    }
    kv_tier_free(tier);
    common_free(q_log), common_free(sel_log), common_free(ref);
    kv_paged_end(pool, &seq);
    decode_state_free(&ds);
    kv_cache_free(full);
    kv_pool_free(pool);
    return rc;
}

void kv_tier_print_json(const KVTierConfig *cfg, const KVTierResult *r) {
    char mode[32];
    const KVTierStats *s = &r->st;
    printf("{\"task\": \"tier\", \"spec\": \"paged:%d\", \"prefetch\": \"%s\", \"fast_blocks\": %d, \"blocks\": %d, "
           "\"transfer_us\": %g, \"context\": %d, \"prefill\": %d, \"decode_tokens\": %d, \"unit_bytes\": %zu, "
           "\"fast_bytes\": %zu, \"pool_bytes\": %zu, \"reads\": %lld, \"hits\": %lld, \"late\": %lld, "
           "\"misses\": %lld, \"skipped\": %lld, \"hit_rate\": %.6g, \"transfers\": %lld, \"bytes_moved\": %lld, "
           "\"mb_moved_per_token\": %.6g, \"prefetch_issued\": %lld, \"prefetch_used\": %lld, "
           "\"prefetch_accuracy\": %.6g, \"stall_s\": %.6g, \"stall_ms_per_token\": %.6g, \"copy_s\": %.6g, "
           "\"slow_tier\": \"%s\", \"cold_reads\": %s, \"file_bytes\": %zu, \"file_bytes_written\": %lld, "
           "\"file_bytes_read\": %lld, \"read_s\": %.6g, \"write_s\": %.6g, "
           "\"mass_covered\": %.6g, \"max_abs_logit_diff\": %.3g, \"top1_agree\": %.6g, "
           "\"decode_tokens_per_s\": %.6g}\n",
           cfg->block, kv_tier_mode_name(cfg, mode), r->fast_blocks, r->blocks, cfg->transfer_us, cfg->context,
           cfg->prefill, r->decode_tokens, r->unit_bytes, r->fast_bytes, r->pool_bytes, s->reads, s->hits, s->late,
           s->misses, s->skipped, r->hit_rate, s->transfers, s->bytes_moved, r->mb_moved_per_token,
           s->prefetch_issued, s->prefetch_used, r->prefetch_accuracy, s->stall_s, r->stall_ms_per_token, s->copy_s,
           cfg->slow_file ? "file" : "ram", cfg->slow_cold ? "true" : "false", s->file_bytes, s->file_bytes_written,
           s->file_bytes_read, s->read_s, s->write_s, r->mass_covered, r->max_abs_logit_diff, r->top1_agree,
           r->decode_tokens_per_s);
}
