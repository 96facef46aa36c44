// The harness of build/bench --fragmentation (fragment.h): the workload, first-come-first-served admission on
// both sides, and each side's real structures filled and decoded. Prints nothing.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../decode/step.h"
#include "../kv/kv.h"
#include "../kv/paged.h"
#include "../train/presets.h"
#include "bench.h"
#include "fragment.h"

ModelConfig frag_model_config(int max_len) {
    ModelConfig c = preset_find("baby")->model;
    c.n_head = c.n_kv_head = FRAG_HEADS;
    c.vocab_size = FRAG_VOCAB;
    c.n_hidden = model_default_hidden(c.n_embd);
    c.block_size = max_len;
    return c;
}

size_t frag_token_bytes(const ModelConfig *c) {
    return (size_t)2 * c->n_layer * c->n_kv_head * model_head_dim(c) * sizeof(float);
}

void frag_workload(int *lens, int n, int max_len, uint64_t seed, int variable) {
    Rng rng;
    rng_init(&rng, seed);
    double mu = log(max_len / 4.0);
    for (int i = 0; i < n; i++) {
        if (!variable) {
            lens[i] = max_len;
            continue;
        }
        double x = round(exp(mu + FRAG_LOGNORMAL_SIGMA * rng_normal(&rng)));
        lens[i] = x < FRAG_MIN_LEN ? FRAG_MIN_LEN : x > max_len ? max_len : (int)x;
    }
}

int frag_admit_contiguous(int n, size_t budget, int max_len, size_t token_bytes) {
    size_t reserve = (size_t)max_len * token_bytes, fit = budget / reserve;
    return fit < (size_t)n ? (int)fit : n;
}

int frag_pool_blocks(size_t budget, int block, size_t token_bytes) {
    size_t n = budget / ((size_t)block * token_bytes);
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

int frag_admit_paged(const int *lens, int n, int n_blocks, int block) {
    int64_t left = n_blocks;
    for (int i = 0; i < n; i++) {
        int64_t need = (lens[i] + block - 1) / block;
        if (need > left) return i;
        left -= need;
    }
    return n;
}

static double median(double *x, int n) {
    qsort(x, n, sizeof(double), bench_cmp_double);
    return x[n / 2];
}

int frag_token(int request, int step) { return (request * 7 + step * 3 + 1) % FRAG_VOCAB; }

// The filled positions' keys (before RoPE) and values: a deterministic function of (request, layer, pos), in
// [-1, 1), so both sides hold the same states and attention sees varied scores.
static void synthetic_row(float *k, float *v, int kv_dim, int request, int layer, int pos) {
    Rng rng;
    rng_init(&rng, ((uint64_t)request << 40) ^ ((uint64_t)layer << 32) ^ (uint64_t)pos);
    for (int j = 0; j < kv_dim; j++) k[j] = 2 * rng_uniform(&rng) - 1;
    for (int j = 0; j < kv_dim; j++) v[j] = 2 * rng_uniform(&rng) - 1;
}

static int fill_token(int request, int pos) { return (request * 31 + pos) % FRAG_VOCAB; }

// A store per admitted request, stepped together: FRAG_DECODE_STEPS + 1 steps (the first untimed) from each
// request's filled length; the logits of the last step copied to out->logits.
static int decode_batch(const Model *m, KVStore *const *stores, const int *lens, int n, int max_len, FragSide *out,
                        double *seconds, char *err) {
    DecodeState ds;
    decode_state_init(&ds, &m->cfg, n, max_len);
    int *tokens = common_calloc((size_t)n, sizeof(int)), *pos = common_calloc((size_t)n, sizeof(int));
    int rc = 0;
    double t0 = 0;
    for (int s = 0; s <= FRAG_DECODE_STEPS && rc == 0; s++) {
        if (s == 1) t0 = common_now();
        for (int i = 0; i < n; i++) {
            tokens[i] = frag_token(i, s);
            pos[i] = lens[i] - FRAG_DECODE_STEPS - 1 + s;
        }
        rc = decode_forward(m, &ds, stores, n, tokens, pos, n, DECODE_LOGITS_ALL, err) == n ? 0 : -1;
    }
    *seconds = common_now() - t0;
    if (rc == 0) {
        size_t nl = (size_t)n * m->cfg.vocab_size;
        if (!out->logits) out->logits = common_calloc(nl, sizeof(float));
        memcpy(out->logits, ds.logits, nl * sizeof(float));
    }
    common_free(tokens);
    common_free(pos);
    decode_state_free(&ds);
    return rc;
}

int frag_run_contiguous(const Model *m, const int *lens, int admitted, int max_len, FragSide *out, char *err) {
    const ModelConfig *c = &m->cfg;
    *out = (FragSide){.admitted = admitted};
    if (admitted == 0) return 0;
    int KVC = model_kv_dim(c), HD = model_head_dim(c);
    KVShape shape = decode_kv_shape(c, max_len); // the cache's capacity: max_len tokens, reserved at init
    KVCache **kv = common_calloc((size_t)admitted, sizeof(KVCache *));
    DecodeCache *dc = common_calloc((size_t)admitted, sizeof(DecodeCache));
    KVStore *st = common_calloc((size_t)admitted, sizeof(KVStore));
    KVStore **stores = common_calloc((size_t)admitted, sizeof(KVStore *));
    float *k = common_calloc((size_t)KVC, sizeof(float)), *v = common_calloc((size_t)KVC, sizeof(float));
    int rc = 0;
    for (int i = 0; i < admitted && rc == 0; i++) {
        rc = kv_full_init(&kv[i], &shape, err);
        if (rc == 0) dc[i] = (DecodeCache){.kv = kv[i]}, st[i] = decode_store_cache(&dc[i]), stores[i] = &st[i];
    }
    double secs[FRAG_RUNS];
    for (int r = 0; r < FRAG_RUNS && rc == 0; r++) {
        for (int i = 0; i < admitted && rc == 0; i++) {
            kv_cache_reset(kv[i]);
            for (int p = 0; p < lens[i] - FRAG_DECODE_STEPS - 1 && rc == 0; p++)
                for (int l = 0; l < c->n_layer && rc == 0; l++) {
                    synthetic_row(k, v, KVC, i, l, p);
                    if (kv_cache_append(kv[i], l, p, k, v) != 0)
                        rc = -1, err_set(err, "contiguous cache %d refused position %d", i, p);
                }
        }
        if (rc == 0) rc = decode_batch(m, stores, lens, admitted, max_len, out, &secs[r], err);
    }
    if (rc == 0) out->seconds = median(secs, FRAG_RUNS);
    if (rc == 0) {
        // What the caches hold, from their own counts; each reserved max_len tokens at init.
        for (int i = 0; i < admitted; i++) {
            out->tokens += kv_cache_tokens(kv[i], 0);
            for (int l = 0; l < c->n_layer; l++)
                out->used_bytes += (size_t)kv_cache_tokens(kv[i], l) * c->n_kv_head * 2 * HD * sizeof(float);
        }
        out->reserved_bytes = (size_t)admitted * max_len * frag_token_bytes(c);
    }
    for (int i = 0; i < admitted; i++)
        if (kv[i]) kv_cache_free(kv[i]);
    common_free(kv), common_free(dc), common_free(st), common_free(stores), common_free(k), common_free(v);
    return rc;
}

int frag_run_paged(const Model *m, const int *lens, int admitted, int max_len, int block, int n_blocks,
                   FragSide *out, char *err) {
    const ModelConfig *c = &m->cfg;
    *out = (FragSide){.admitted = admitted};
    KVShape shape = decode_kv_shape(c, max_len);
    KVPool *pool;
    if (kv_pool_init(&pool, &shape, block, n_blocks, err) != 0) return -1;
    int KVC = model_kv_dim(c);
    KVSeq *seqs = common_calloc((size_t)admitted + 1, sizeof(KVSeq));
    DecodePaged *dp = common_calloc((size_t)admitted + 1, sizeof(DecodePaged));
    KVStore *st = common_calloc((size_t)admitted + 1, sizeof(KVStore));
    KVStore **stores = common_calloc((size_t)admitted + 1, sizeof(KVStore *));
    float *k = common_calloc((size_t)KVC, sizeof(float)), *v = common_calloc((size_t)KVC, sizeof(float));
    float *q = common_calloc((size_t)c->n_embd, sizeof(float)); // rotated by the store, unused here
    for (int i = 0; i < admitted; i++)
        dp[i] = (DecodePaged){pool, &seqs[i]}, st[i] = decode_store_paged(&dp[i]), stores[i] = &st[i];
    double secs[FRAG_RUNS];
    int rc = 0;
    for (int r = 0; r < FRAG_RUNS && rc == 0; r++) {
        for (int i = 0; i < admitted && rc == 0; i++) {
            if (kv_paged_begin(pool, &seqs[i], NULL, 0, KV_PRIORITY_DEFAULT, err) < 0) {
                rc = -1;
                break;
            }
            for (int p = 0; p < lens[i] - FRAG_DECODE_STEPS - 1 && rc == 0; p++)
                for (int l = 0; l < c->n_layer && rc == 0; l++) {
                    synthetic_row(k, v, KVC, i, l, p);
                    rc = decode_paged_store(m, pool, &seqs[i], l, p, fill_token(i, p), q, k, v, err);
                }
        }
        if (rc == 0 && admitted > 0) rc = decode_batch(m, stores, lens, admitted, max_len, out, &secs[r], err);
        if (rc == 0 && r == FRAG_RUNS - 1) { // the pool's own counters, every admitted request at its full length
            KVPagedStats ps;
            kv_pool_stats(pool, &ps);
            out->tokens = ps.tokens_held;
            out->reserved_bytes = ps.bytes_used; // the used blocks' key and value rows
            out->used_bytes = ps.slots_allocated ? (size_t)(ps.bytes_used / ps.slots_allocated * ps.tokens_held) : 0;
            out->pool_bytes = (size_t)n_blocks * block * frag_token_bytes(c);
            out->blocks_used = ps.blocks_used, out->blocks_total = ps.blocks_total;
            out->last_block_waste = ps.fragmentation;
            out->seconds = admitted > 0 ? median(secs, FRAG_RUNS) : 0;
            rc = kv_pool_validate(pool, err);
        }
        for (int i = 0; i < admitted; i++) kv_paged_end(pool, &seqs[i]); // blocks back (cached) for the next run
    }
    kv_pool_free(pool);
    common_free(seqs), common_free(dp), common_free(st), common_free(stores);
    common_free(k), common_free(v), common_free(q);
    return rc;
}

void frag_side_free(FragSide *s) {
    common_free(s->logits);
    s->logits = NULL;
}
