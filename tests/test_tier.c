// The slower tier (kv/tier.h): attention over fast-tier copies equals attention over the pool in every mode
// and decode logits equal the full cache's; a known access pattern moves the bytes and stalls it should;
// a perfect predictor turns prefetches into hits; resident moves nothing after warm-up; skip reads K blocks
// and the tail and nothing else; bad configs are errors; the prefetch thread starts and stops cleanly. With
// the slow tier in a file: the same attention and logits bit for bit as in RAM, every transfer a read of one
// unit, no unit written twice, a path that exists or cannot be made an error, the file gone after free.
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../infer/kvtier.h"
#include "../layers/cpu_ops.h"

typedef struct {
    KVPool *pool;
    KVSeq seq;
    int L, NH, NKV, HD;
    Rng rng;
    float *aligned; // non-NULL: keys of block `hot` are this (NKV*HD) vector, the others small noise
    int hot, B;
    const char *slow_file; // fx_tier's slow tier: this file, or RAM when NULL
    int cold;
    KVTier *twin;          // non-NULL: append_layer writes rows through this tier too
} Fx;

static void fx_init(Fx *f, int L, int NH, int NKV, int HD, int B, int max_tokens) {
    *f = (Fx){.L = L, .NH = NH, .NKV = NKV, .HD = HD, .B = B, .hot = -1};
    KVShape shape = {L, NH, NKV, HD, max_tokens, 10000.0f, 0};
    char err[ERR_LEN];
    cr_assert_eq(kv_pool_init(&f->pool, &shape, B, (max_tokens + B - 1) / B, err), 0, "%s", err);
    cr_assert_eq(kv_paged_begin(f->pool, &f->seq, NULL, 0, KV_PRIORITY_DEFAULT, err), 0, "%s", err);
    rng_init(&f->rng, 11);
}

static void fx_free(Fx *f) {
    kv_paged_end(f->pool, &f->seq);
    kv_pool_free(f->pool);
}

// Token `pos`'s random key and value for one layer into the pool and (when t) through the tier.
static void append_layer(Fx *f, KVTier *t, int l, int pos) {
    float k[256], v[256];
    char err[ERR_LEN];
    for (int i = 0; i < f->NKV * f->HD; i++) {
        k[i] = f->aligned ? 0.05f * rng_normal(&f->rng) : rng_normal(&f->rng), v[i] = rng_normal(&f->rng);
        if (f->aligned && pos / f->B == f->hot) k[i] = f->aligned[i];
    }
    cr_assert_eq(kv_paged_append(f->pool, &f->seq, l, pos, pos, k, v, err), 0, "%s", err);
    if (t) cr_assert_eq(kv_tier_append(t, l, pos, k, v, err), 0, "%s", err);
    if (f->twin) cr_assert_eq(kv_tier_append(f->twin, l, pos, k, v, err), 0, "%s", err);
}

// n more tokens into the pool only (a prefill the tier never sees).
static void fx_append(Fx *f, int n) {
    for (int j = 0; j < n; j++)
        for (int l = 0, pos = f->seq.n_tokens; l < f->L; l++) append_layer(f, NULL, l, pos);
}

static KVTier *fx_tier(Fx *f, KVTierMode mode, int fast, int top_k, double us, int context) {
    KVTierConfig cfg = {.block = f->B, .fast_blocks = fast, .mode = mode, .top_k = top_k, .transfer_us = us,
                        .context = context, .slow_file = f->slow_file, .slow_cold = f->cold};
    KVTier *t;
    char err[ERR_LEN];
    cr_assert_eq(kv_tier_init(&t, f->pool, &f->seq, &cfg, err), 0, "%s", err);
    return t;
}

// A fresh directory under /tmp and a path in it that does not exist yet.
static void tmp_path(char *dir, char *path) {
    strcpy(dir, "/tmp/kvlab-tier-XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    snprintf(path, 64, "%s/slow.kv", dir);
}

// The tier deleted its file: the path is gone and the directory empty (rmdir removes it).
static void assert_gone(const char *dir, const char *path) {
    cr_assert(access(path, F_OK) != 0 && errno == ENOENT, "%s is still there", path);
    cr_assert_eq(rmdir(dir), 0, "rmdir %s: %s", dir, strerror(errno));
}

// Every layer through the tier (after appending the next token to it first, when `append`, as the decode
// step does), each compared with attention_decode_paged on the same query (1e-6).
static void step(Fx *f, KVTier *t, int append, int check, int drain) {
    int NH = f->NH, HD = f->HD, Tc = f->seq.n_tokens + (append ? 1 : 0);
    float q[512], out[512], ref[512], *att = calloc((size_t)2 * NH * Tc, sizeof(float)), *att_ref = att + NH * Tc;
    for (int l = 0; l < f->L; l++) {
        if (append) append_layer(f, t, l, Tc - 1);
        for (int i = 0; i < NH * HD; i++) // a query along the hot keys (each head its kv head's), or random
            q[i] = f->aligned ? f->aligned[(i / HD / (NH / f->NKV)) * HD + i % HD] : rng_normal(&f->rng);
        char err[ERR_LEN];
        cr_assert_eq(kv_tier_attend(t, out, att, q, l, NH, err), 0, "%s", err);
        if (drain) kv_tier_drain(t);
        if (!check) continue;
        attention_decode_paged(ref, att_ref, q, f->pool, &f->seq, l, NH, f->NKV, HD);
        for (int i = 0; i < NH * HD; i++)
            cr_assert(fabsf(out[i] - ref[i]) <= 1e-6f, "out[%d] %g vs %g (layer %d, Tc %d)", i, out[i], ref[i], l, Tc);
        for (int i = 0; i < NH * Tc; i++)
            cr_assert(fabsf(att[i] - att_ref[i]) <= 1e-6f, "att[%d] %g vs %g (Tc %d)", i, att[i], att_ref[i], Tc);
    }
    free(att);
}

Test(tier, attention_equals_paged_in_every_mode) {
    int shapes[][3] = {{4, 4, 8}, {4, 2, 8}, {8, 1, 16}}; // MHA, GQA, MQA
    int blocks[] = {1, 3, 7};
    struct { KVTierMode mode; int fast; } modes[] = {{KV_TIER_RESIDENT, 0}, {KV_TIER_REACTIVE, 2},
        {KV_TIER_REACTIVE, 3}, {KV_TIER_PREDICTIVE, 2}, {KV_TIER_PREDICTIVE, 4}};
    for (int si = 0; si < 3; si++)
        for (int bi = 0; bi < 3; bi++)
            for (int mi = 0; mi < 5; mi++) {
                Fx f;
                fx_init(&f, 2, shapes[si][0], shapes[si][1], shapes[si][2], blocks[bi], 25);
                fx_append(&f, 10); // a prefill the tier never saw, ending mid-block
                KVTier *t = fx_tier(&f, modes[mi].mode, modes[mi].fast, 0, 0.0, 25);
                for (int i = 0; i < 15; i++) step(&f, t, 1, 1, 0);
                KVTierStats st;
                kv_tier_stats(t, &st);
                cr_assert_eq(st.reads, st.hits + st.late + st.misses);
                kv_tier_free(t);
                fx_free(&f);
            }
}

// A known pattern: 2 layers, 4 full blocks + the tail, FAST 2 (4 unit slots: 2 tails + 2). Each layer reads
// its one resident unit first, then fetches the other 3, each evicting the unit it just read (the
// furthest next use): 6 misses and 2 hits per step once warm.
Test(tier, reactive_stalls_and_moves_the_expected_bytes) {
    Fx f;
    fx_init(&f, 2, 2, 1, 4, 4, 32);
    fx_append(&f, 16);
    KVTier *t = fx_tier(&f, KV_TIER_REACTIVE, 2, 0, 100.0, 32);
    step(&f, t, 1, 1, 0); // a new tail block: claimed without a transfer
    KVTierStats st;
    kv_tier_stats(t, &st);
    cr_assert(st.misses == 8 && st.hits == 0 && st.transfers == 8, "cold: %lld misses %lld hits", st.misses, st.hits);
    kv_tier_reset_stats(t);
    for (int i = 0; i < 2; i++) step(&f, t, 1, 1, 0);
    kv_tier_stats(t, &st);
    size_t unit = 2 * 1 * 4 * 4 * sizeof(float);
    cr_assert_eq(st.unit_bytes, unit);
    cr_assert(st.misses == 12 && st.hits == 4 && st.late == 0 && st.reads == 16, "%lld misses %lld hits", st.misses,
              st.hits);
    cr_assert(st.transfers == 12 && st.bytes_moved == (long long)(12 * unit) && st.prefetch_issued == 0);
    cr_assert(st.stall_s >= 12 * 100e-6 && st.copy_s > 0.0, "stall %g copy %g", st.stall_s, st.copy_s);
    kv_tier_free(t);
    fx_free(&f);
}

Test(tier, resident_moves_nothing_after_warm_up) {
    Fx f;
    fx_init(&f, 3, 4, 2, 8, 4, 40);
    fx_append(&f, 14);
    KVTier *t = fx_tier(&f, KV_TIER_RESIDENT, 0, 0, 0.0, 40);
    step(&f, t, 1, 1, 0);
    KVTierStats st;
    kv_tier_stats(t, &st);
    cr_assert_eq(st.transfers, 3 * 4); // 3 full blocks and the partial tail, once per layer
    cr_assert_eq(st.fast_blocks, 10);
    kv_tier_reset_stats(t);
    for (int i = 0; i < 20; i++) step(&f, t, 1, 1, 0); // crosses block boundaries
    kv_tier_stats(t, &st);
    cr_assert(st.transfers == 0 && st.misses == 0 && st.stall_s == 0.0 && st.hits == st.reads && st.reads > 0);
    kv_tier_free(t);
    fx_free(&f);
}

// Zero transfer cost and the worker drained after each layer (so every prefetch lands before it is needed):
// each layer's units come in while the layer before computes, and attention finds all of them.
Test(tier, predictive_prefetches_become_hits) {
    Fx f;
    fx_init(&f, 3, 2, 1, 4, 4, 40);
    fx_append(&f, 17);
    KVTier *t = fx_tier(&f, KV_TIER_PREDICTIVE, 3, 0, 0.0, 40);
    step(&f, t, 1, 1, 1);
    kv_tier_reset_stats(t);
    for (int i = 0; i < 6; i++) step(&f, t, 1, 1, 1); // crosses a block boundary
    KVTierStats st;
    kv_tier_stats(t, &st);
    cr_assert(st.reads == (2 * 4 + 4 * 5) * 3 && st.hits == st.reads && st.misses == 0 && st.late == 0,
              "%lld/%lld hits", st.hits, st.reads);
    // every prefetch is read, but the last plan's (for a step that never comes: at most 5 units)
    cr_assert(st.prefetch_used >= 6 * 3 * 2 && st.prefetch_issued - st.prefetch_used <= 5, "%lld used of %lld",
              st.prefetch_used, st.prefetch_issued);
    kv_tier_free(t);
    fx_free(&f);
}

// Skip:1 where one block's keys point along every query: Quest picks it, the previous step's mass predicts
// it, attention reads it and the tail only, and the output is attention over exactly those rows.
Test(tier, skip_reads_top_k_and_the_tail) {
    enum { NH = 4, NKV = 2, HD = 8, B = 4 };
    Fx f;
    fx_init(&f, 2, NH, NKV, HD, B, 40);
    float dir[NKV * HD];
    for (int i = 0; i < NKV * HD; i++) dir[i] = (i % 3 == 0) ? 1.0f : -0.5f;
    f.aligned = dir, f.hot = 2;
    fx_append(&f, 22);
    KVTier *t = fx_tier(&f, KV_TIER_PREDICTIVE, 2, 1, 0.0, 40);
    step(&f, t, 1, 0, 1);
    kv_tier_reset_stats(t);
    float q[NH * HD], out[NH * HD], ref[NH * HD], att[NH * 40], att_ref[NH * 40], kc[NKV * 40 * HD], vc[NKV * 40 * HD];
    for (int i = 0; i < 4; i++) {
        int Tc = f.seq.n_tokens + 1, N = (Tc + B - 1) / B;
        for (int l = 0; l < 2; l++) {
            append_layer(&f, t, l, Tc - 1);
            for (int i = 0; i < NH * HD; i++) q[i] = dir[(i / HD / (NH / NKV)) * HD + i % HD];
            char err[ERR_LEN];
            cr_assert_eq(kv_tier_attend(t, out, att, q, l, NH, err), 0, "%s", err);
            kv_tier_drain(t);
            const int *sel;
            cr_assert_eq(kv_tier_read_blocks(t, &sel), 2);
            cr_assert(sel[0] == 2 && sel[1] == N - 1, "read %d and %d", sel[0], sel[1]);
            int n = 0; // the read rows gathered contiguously: (NKV, n, HD)
            for (int j = 0; j < 2; j++)
                for (int r = sel[j] * B; r < Tc && r < (sel[j] + 1) * B; r++, n++);
            for (int g = 0, r0 = 0; g < NKV; g++, r0 = 0)
                for (int j = 0; j < 2; j++)
                    for (int r = sel[j] * B; r < Tc && r < (sel[j] + 1) * B; r++, r0++) {
                        int b = f.seq.table[r / B];
                        size_t o = ((size_t)g * n + r0) * HD, row = (r % B) * HD;
                        memcpy(kc + o, kv_pool_k(f.pool, b, l, g) + row, sizeof(float) * HD);
                        memcpy(vc + o, kv_pool_v(f.pool, b, l, g) + row, sizeof(float) * HD);
                    }
            attention_decode_cpu(ref, att_ref, q, kc, vc, n, (size_t)n * HD, NH, NKV, HD);
            for (int i = 0; i < NH * HD; i++) cr_assert(fabsf(out[i] - ref[i]) <= 1e-6f, "out[%d]", i);
            for (int h = 0; h < NH; h++)
                for (int r = 0; r < Tc; r++)
                    if (r / B != 2 && r / B != N - 1) cr_assert_eq(att[h * Tc + r], 0.0f, "skipped row %d", r);
        }
    }
    KVTierStats st;
    kv_tier_stats(t, &st);
    cr_assert(st.reads == 8 && st.skipped > 0 && st.hits == 8, "reads %lld hits %lld", st.reads, st.hits);
    cr_assert(st.prefetch_used == st.prefetch_issued, "accuracy %lld/%lld", st.prefetch_used, st.prefetch_issued);
    kv_tier_free(t);
    fx_free(&f);
}

// ---- the decode step and the workload ------------------------------------------------------------------

static void tiny_model(Model *m, int n_kv_head) {
    ModelConfig cfg = {.vocab_size = 13, .n_layer = 3, .n_head = 4, .n_kv_head = n_kv_head, .n_embd = 32,
                       .n_hidden = 48, .block_size = 24, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    model_init(m, &cfg, &ops_cpu);
    model_init_weights(m, 42);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] *= 3.0f;
}

Test(tier, decode_logits_equal_the_full_cache) {
    enum { T = 24, P = 5, B = 3 };
    Model m;
    tiny_model(&m, 2);
    const ModelConfig *c = &m.cfg;
    int tokens[T];
    Rng rng;
    rng_init(&rng, 5);
    for (int t = 0; t < T; t++) tokens[t] = (int)rng_below(&rng, c->vocab_size);
    KVShape shape = {c->n_layer, c->n_head, c->n_kv_head, model_head_dim(c), T, c->rope_theta, 0};
    struct { KVTierMode mode; int fast, file; } modes[] = {{KV_TIER_RESIDENT, 0, 0}, {KV_TIER_REACTIVE, 2, 0},
        {KV_TIER_PREDICTIVE, 2, 0}, {KV_TIER_PREDICTIVE, 3, 0}, {KV_TIER_RESIDENT, 0, 1}, {KV_TIER_REACTIVE, 2, 1},
        {KV_TIER_PREDICTIVE, 2, 1}};
    char err[ERR_LEN], dir[64], path[64];
    float first[T][13]; // the first mode's logits: every mode (and slow tier) gives these bit for bit
    for (int mi = 0; mi < 7; mi++) {
        KVPool *pool;
        KVCache *full;
        cr_assert_eq(kv_pool_init(&pool, &shape, B, T / B, err), 0, "%s", err);
        cr_assert_eq(kv_full_init(&full, &shape, err), 0, "%s", err);
        DecodeState dt, df;
        decode_state_init(&dt, c, 1, T), decode_state_init(&df, c, 1, T);
        KVSeq seq = {0};
        cr_assert_eq(kv_paged_begin(pool, &seq, NULL, 0, 35, err), 0);
        for (int t = 0; t < P; t++) {
            cr_assert_eq(model_decode_step_paged(&m, &dt, pool, &seq, tokens[t], t, err), 0, "%s", err);
            cr_assert_eq(model_decode_step(&m, &df, full, tokens[t], t), 0);
        }
        KVTierConfig cfg = {.block = B, .fast_blocks = modes[mi].fast, .mode = modes[mi].mode, .context = T};
        if (modes[mi].file) tmp_path(dir, path), cfg.slow_file = path;
        KVTier *tier;
        cr_assert_eq(kv_tier_init(&tier, pool, &seq, &cfg, err), 0, "%s", err);
        float max_err = 0.0f;
        for (int t = P; t < T; t++) {
            cr_assert_eq(decode_tier_step(&m, &dt, &(DecodeTier){pool, &seq, tier, NULL, NULL, 0}, tokens[t], t, err), 0, "%s", err);
            cr_assert_eq(model_decode_step(&m, &df, full, tokens[t], t), 0);
            for (int i = 0; i < c->vocab_size; i++) max_err = fmaxf(max_err, fabsf(dt.logits[i] - df.logits[i]));
            if (mi == 0) memcpy(first[t], dt.logits, sizeof(first[t]));
            else cr_assert(!memcmp(first[t], dt.logits, sizeof(first[t])), "mode %d: other logits at %d", mi, t);
        }
        cr_assert(max_err <= 1e-5f, "mode %d fast %d: tier vs full max |diff| %g", modes[mi].mode, modes[mi].fast,
                  max_err);
        kv_tier_free(tier);
        if (modes[mi].file) assert_gone(dir, path);
        kv_paged_end(pool, &seq);
        decode_state_free(&dt), decode_state_free(&df);
        kv_cache_free(full);
        kv_pool_free(pool);
    }
    model_free(&m);
}

Test(tier, eval_reports_agreement_and_stats) {
    enum { T = 24 };
    Model m;
    tiny_model(&m, 4);
    int tokens[T];
    for (int t = 0; t < T; t++) tokens[t] = (t * 7 + 3) % m.cfg.vocab_size;
    const char *modes[] = {"resident", "reactive", "predictive", "skip:2", "reactive"}; // the last from a file
    char err[ERR_LEN], dir[64], path[64];
    for (int mi = 0; mi < 5; mi++) {
        KVTierConfig cfg = {.block = 4, .fast_blocks = mi ? 2 : 0, .transfer_us = 5.0, .context = T, .prefill = 8};
        if (mi == 4) tmp_path(dir, path), cfg.slow_file = path;
        cr_assert_eq(kv_tier_parse_mode(&cfg, modes[mi], err), 0, "%s", err);
        KVTierResult r;
        cr_assert_eq(kv_eval_tier(&m, tokens, T, &cfg, &r, err), 0, "%s", err);
        cr_assert(r.blocks == 6 && r.decode_tokens == 16 && r.fast_blocks == (mi ? 2 : 6));
        cr_assert_eq(r.st.reads, r.st.hits + r.st.late + r.st.misses);
        if (mi != 3) {
            cr_assert(r.max_abs_logit_diff <= 1e-5 && r.top1_agree == 1.0, "%s: diff %g", modes[mi],
                      r.max_abs_logit_diff);
            cr_assert(r.mass_covered == 1.0 && r.st.skipped == 0);
        } else {
            cr_assert(r.st.skipped > 0 && r.mass_covered > 0.0 && r.mass_covered < 1.0, "covered %g", r.mass_covered);
        }
        if (mi == 0) cr_assert(r.st.transfers == 0 && r.hit_rate == 1.0);
        if (mi == 1 || mi == 4) cr_assert(r.st.misses > 0 && r.st.stall_s > 0.0 && r.st.prefetch_issued == 0);
        if (mi == 4) {
            cr_assert(r.st.file_bytes_read == r.st.transfers * (long long)r.unit_bytes && r.st.transfers > 0);
            cr_assert(r.st.file_bytes == (size_t)r.blocks * 3 * r.unit_bytes && r.st.read_s > 0.0);
            assert_gone(dir, path);
        } else {
            cr_assert(r.st.file_bytes == 0 && r.st.file_bytes_read == 0 && r.st.file_bytes_written == 0);
        }
        // how many prefetches land in time depends on the machine: only their bookkeeping is checked
        cr_assert(r.st.prefetch_used <= r.st.prefetch_issued && (mi % 4 >= 2 || r.st.prefetch_issued == 0));
    }
    model_free(&m);
}

// ---- errors and the thread --------------------------------------------------------------------------------

Test(tier, bad_configs_are_rejected) {
    Fx f;
    fx_init(&f, 2, 2, 1, 4, 4, 32);
    fx_append(&f, 5);
    char err[ERR_LEN] = "";
    KVTier *t = (KVTier *)&f;
    KVTierConfig cfg = {.block = 4, .fast_blocks = 1, .mode = KV_TIER_REACTIVE, .context = 32};
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    cr_assert(t == NULL && strstr(err, "at least 2"), "%s", err);
    cfg.fast_blocks = 4, cfg.mode = KV_TIER_RESIDENT;
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    cr_assert(strstr(err, "resident"), "%s", err);
    cfg.mode = KV_TIER_REACTIVE, cfg.transfer_us = -1.0;
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    cfg.transfer_us = 0.0, cfg.context = 4; // shorter than the sequence
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    const char *bad[] = {"", "lru", "skip", "skip:", "skip:0", "skip:-2", "skip:3x", "skip: 3", "skip:+3", "Reactive"};
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(kv_tier_parse_mode(&cfg, bad[i], err), -1, "'%s' accepted", bad[i]);
        cr_assert(strstr(err, "resident | reactive | predictive | skip:K"), "%s", err);
    }
    cr_assert(kv_tier_parse_mode(&cfg, "skip:4", err) == 0 && cfg.mode == KV_TIER_PREDICTIVE && cfg.top_k == 4);
    char name[32];
    cr_assert_str_eq(kv_tier_mode_name(&cfg, name), "skip:4");
    fx_free(&f);
    Model m;
    tiny_model(&m, 4);
    int tokens[24] = {0};
    KVTierResult r;
    KVTierConfig ec = {.block = 4, .fast_blocks = 2, .mode = KV_TIER_REACTIVE, .context = 32, .prefill = 8};
    cr_assert_eq(kv_eval_tier(&m, tokens, 24, &ec, &r, err), -1);
    cr_assert(strstr(err, "fewer than --context"), "%s", err);
    ec.context = 24, ec.prefill = 23;
    cr_assert_eq(kv_eval_tier(&m, tokens, 24, &ec, &r, err), -1);
    cr_assert(strstr(err, "--prefill"), "%s", err);
    ec.prefill = 8, ec.block = 0;
    cr_assert_eq(kv_eval_tier(&m, tokens, 24, &ec, &r, err), -1);
    cr_assert(strstr(err, "paged:BLOCK"), "%s", err);
    ec.block = 4, ec.fast_blocks = 1;
    cr_assert_eq(kv_eval_tier(&m, tokens, 24, &ec, &r, err), -1);
    cr_assert(strstr(err, "--fast 1"), "%s", err);
    model_free(&m);
}

// Freed while the worker is mid-transfer or waiting, many times (every fifth reading a slow file, which is
// deleted after): it is always joined (ASan sees leaks or use-after-free otherwise; a missed wake-up would
// hang the test).
Test(tier, worker_starts_and_stops_cleanly, .timeout = 20) {
    for (int i = 0; i < 300; i++) {
        Fx f;
        fx_init(&f, 2, 2, 1, 4, 2, 64);
        fx_append(&f, 9 + i % 4);
        char dir[64], path[64];
        if (i % 5 == 0) tmp_path(dir, path), f.slow_file = path; // the worker mid-read of the file
        KVTier *t = fx_tier(&f, KV_TIER_PREDICTIVE, 2, i % 3, i % 2 ? 20.0 : 0.0, 64);
        if (i % 4) step(&f, t, 1, 0, 0); // queues plans: the worker is busy when freed
        kv_tier_free(t);
        if (f.slow_file) assert_gone(dir, path);
        fx_free(&f);
    }
}

// ---- the slow tier in a file ------------------------------------------------------------------------------

// One decode step through tier a (the file) and its twin b (RAM), both on f's sequence: the same rows and
// queries give the same outputs and probabilities bit for bit, and (check) attention over the pool within 1e-6.
static void twin_step(Fx *f, KVTier *a, KVTier *b, int check) {
    int NH = f->NH, HD = f->HD, Tc = f->seq.n_tokens + 1;
    float q[512], out[512], out_b[512], ref[512], *att = calloc((size_t)3 * NH * Tc, sizeof(float));
    float *att_b = att + NH * Tc, *att_ref = att_b + NH * Tc;
    char err[ERR_LEN];
    f->twin = b;
    for (int l = 0; l < f->L; l++) {
        append_layer(f, a, l, Tc - 1);
        for (int i = 0; i < NH * HD; i++) q[i] = rng_normal(&f->rng);
        cr_assert_eq(kv_tier_attend(a, out, att, q, l, NH, err), 0, "%s", err);
        cr_assert_eq(kv_tier_attend(b, out_b, att_b, q, l, NH, err), 0, "%s", err);
        cr_assert(!memcmp(out, out_b, sizeof(float) * NH * HD), "file vs RAM: other outputs (layer %d, Tc %d)", l, Tc);
        cr_assert(!memcmp(att, att_b, sizeof(float) * NH * Tc), "file vs RAM: other probabilities (Tc %d)", Tc);
        if (!check) continue;
        attention_decode_paged(ref, att_ref, q, f->pool, &f->seq, l, NH, f->NKV, HD);
        for (int i = 0; i < NH * HD; i++)
            cr_assert(fabsf(out[i] - ref[i]) <= 1e-6f, "out[%d] %g vs %g (layer %d, Tc %d)", i, out[i], ref[i], l, Tc);
    }
    f->twin = NULL;
    free(att);
}

// Every mode (skip and cold reads too), MHA/GQA/MQA, blocks of 1, 3, 7 tokens, a prefill ending mid-block:
// the file tier and a RAM tier side by side agree bit for bit (the predictive worker reads the file while the
// main thread writes other units back). Every transfer reads one unit; the file holds the prefill from init and
// no unit is written more than once (a partial prefill tail: twice); a small arena writes units back; the
// reactive and resident schedules, which do not depend on timing, make the same moves as in RAM.
Test(tier, file_tier_equals_the_ram_tier_in_every_mode, .timeout = 60) {
    int shapes[][3] = {{4, 4, 8}, {4, 2, 8}, {8, 1, 16}};
    int blocks[] = {1, 3, 7};
    struct { KVTierMode mode; int fast, top_k, cold; } modes[] = {{KV_TIER_RESIDENT, 0, 0, 0},
        {KV_TIER_REACTIVE, 2, 0, 0}, {KV_TIER_REACTIVE, 3, 0, 1}, {KV_TIER_PREDICTIVE, 2, 0, 0},
        {KV_TIER_PREDICTIVE, 4, 0, 1}, {KV_TIER_PREDICTIVE, 3, 2, 0}};
    for (int si = 0; si < 3; si++)
        for (int bi = 0; bi < 3; bi++)
            for (int mi = 0; mi < 6; mi++) {
                enum { L = 2, T = 25, P = 10 };
                char dir[64], path[64];
                tmp_path(dir, path);
                Fx f;
                fx_init(&f, L, shapes[si][0], shapes[si][1], shapes[si][2], blocks[bi], T);
                fx_append(&f, P);
                KVTier *ram = fx_tier(&f, modes[mi].mode, modes[mi].fast, modes[mi].top_k, 0.0, T);
                f.slow_file = path, f.cold = modes[mi].cold;
                KVTier *file = fx_tier(&f, modes[mi].mode, modes[mi].fast, modes[mi].top_k, 0.0, T);
                for (int i = 0; i < T - P; i++) twin_step(&f, file, ram, modes[mi].top_k == 0);
                KVTierStats st, rs;
                kv_tier_stats(file, &st), kv_tier_stats(ram, &rs);
                long long unit = (long long)st.unit_bytes, B = blocks[bi];
                long long spill = (P + B - 1) / B * L, units = (T + B - 1) / B * L;
                cr_assert(st.transfers > 0 && st.file_bytes_read == st.transfers * unit,
                          "read %lld bytes for %lld transfers", st.file_bytes_read, st.transfers);
                cr_assert(st.file_bytes_written >= spill * unit && st.file_bytes_written <= (units + L) * unit,
                          "wrote %lld units (spill %lld, %lld in all)", st.file_bytes_written / unit, spill, units);
                cr_assert(st.read_s > 0.0 && st.write_s > 0.0 && st.copy_s >= st.read_s);
                cr_assert(rs.file_bytes_read == 0 && rs.file_bytes_written == 0 && rs.file_bytes == 0);
                cr_assert_eq(st.file_bytes, (size_t)f.pool->n_blocks * L * st.unit_bytes);
                struct stat sb;
                cr_assert(stat(path, &sb) == 0 && (size_t)sb.st_size == st.file_bytes);
                if (modes[mi].mode == KV_TIER_REACTIVE && modes[mi].fast == 2)
                    cr_assert(st.file_bytes_written > spill * unit, "no write-back");
                if (modes[mi].mode != KV_TIER_PREDICTIVE)
                    cr_assert(st.transfers == rs.transfers && st.misses == rs.misses && st.hits == rs.hits,
                              "file %lld transfers, RAM %lld", st.transfers, rs.transfers);
                kv_tier_free(file), kv_tier_free(ram);
                fx_free(&f);
                assert_gone(dir, path);
            }
}

// The known reactive pattern (see reactive_stalls_and_moves_the_expected_bytes) from a file: the same moves,
// each a read of one unit, and the data does come from the file (the pool's copies of the prefill are NaN
// while the tier attends); the arena writes back each complete unit it evicts once, never again.
Test(tier, file_reads_are_the_transfers) {
    char dir[64], path[64];
    tmp_path(dir, path);
    Fx f;
    fx_init(&f, 2, 2, 1, 4, 4, 32);
    fx_append(&f, 16);
    f.slow_file = path;
    KVTier *t = fx_tier(&f, KV_TIER_REACTIVE, 2, 0, 0.0, 32);
    KVTierStats st;
    kv_tier_stats(t, &st);
    long long unit = 2 * 1 * 4 * 4 * sizeof(float);
    cr_assert(st.file_bytes_written == 8 * unit && st.file_bytes_read == 0, "the prefill's 4 blocks x 2 layers");
    float saved[4][2][2][16], q[8], out[8], ref[8], att[2 * 17], att_ref[2 * 17];
    char err[ERR_LEN];
    for (int l = 0; l < 2; l++) {
        append_layer(&f, t, l, 16);
        for (int i = 0; i < 8; i++) q[i] = rng_normal(&f.rng);
        for (int b = 0; b < 4; b++) // the pool's prefill rows: NaN while the tier attends
            for (int kv = 0; kv < 2; kv++) {
                float *rows = (kv ? kv_pool_v : kv_pool_k)(f.pool, f.seq.table[b], l, 0);
                memcpy(saved[b][l][kv], rows, sizeof(saved[b][l][kv]));
                for (int i = 0; i < 16; i++) rows[i] = NAN;
            }
        cr_assert_eq(kv_tier_attend(t, out, att, q, l, 2, err), 0, "%s", err);
        for (int b = 0; b < 4; b++)
            for (int kv = 0; kv < 2; kv++) {
                float *rows = (kv ? kv_pool_v : kv_pool_k)(f.pool, f.seq.table[b], l, 0);
                memcpy(rows, saved[b][l][kv], sizeof(saved[b][l][kv]));
            }
        attention_decode_paged(ref, att_ref, q, f.pool, &f.seq, l, 2, 1, 4);
        for (int i = 0; i < 8; i++) cr_assert(fabsf(out[i] - ref[i]) <= 1e-6f, "out[%d] %g vs %g", i, out[i], ref[i]);
    }
    kv_tier_stats(t, &st);
    cr_assert(st.misses == 8 && st.transfers == 8 && st.file_bytes_read == 8 * unit, "cold: %lld misses", st.misses);
    kv_tier_reset_stats(t);
    for (int i = 0; i < 2; i++) step(&f, t, 1, 1, 0);
    kv_tier_stats(t, &st);
    cr_assert(st.misses == 12 && st.hits == 4 && st.transfers == 12, "%lld misses %lld hits", st.misses, st.hits);
    cr_assert(st.file_bytes_read == 12 * unit && st.read_s > 0.0);
    cr_assert(st.file_bytes_written == 0, "the tails are still in the arena, the rest is in the file unchanged");
    for (int i = 0; i < 6; i++) step(&f, t, 1, 1, 0); // 2 more blocks complete: each of their 4 units written once
    kv_tier_stats(t, &st);
    cr_assert(st.file_bytes_written == 4 * unit, "wrote %lld units", st.file_bytes_written / unit);
    kv_tier_free(t);
    fx_free(&f);
    assert_gone(dir, path);
}

// A path that exists (a file, which keeps its bytes, or a directory), a missing folder, a place no file can be
// made, an empty path, cold reads without a file: one line each, and no tier. A file past the size limit (as a
// full disk): the reservation fails at init, and a write-back that fails later makes append or attend fail
// with the message from then on. Nothing is left behind.
Test(tier, slow_file_errors) {
    char dir[64], path[64], err[ERR_LEN] = "";
    tmp_path(dir, path);
    FILE *keep = fopen(path, "w");
    cr_assert(keep && fputs("keep", keep) >= 0 && fclose(keep) == 0);
    Fx f;
    fx_init(&f, 2, 2, 1, 4, 4, 32);
    fx_append(&f, 9);
    KVTier *t = (KVTier *)&f;
    KVTierConfig cfg = {.block = 4, .fast_blocks = 2, .mode = KV_TIER_REACTIVE, .context = 32, .slow_file = path};
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    cr_assert(t == NULL && strstr(err, "exists") && !strchr(err, '\n'), "%s", err);
    char buf[8] = "";
    keep = fopen(path, "r");
    cr_assert(keep && fgets(buf, sizeof(buf), keep) && fclose(keep) == 0);
    cr_assert_str_eq(buf, "keep");
    cr_assert_eq(unlink(path), 0);
    cfg.slow_file = dir;
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    cr_assert(strstr(err, "is a directory"), "%s", err);
    char missing[96];
    snprintf(missing, sizeof(missing), "%s/no/slow.kv", dir);
    const char *bad[] = {missing, "/proc/kvlab-tier.kv"};
    for (int i = 0; i < 2; i++) {
        cfg.slow_file = bad[i];
        cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
        cr_assert(strstr(err, "cannot create") && strstr(err, bad[i]), "%s", err);
    }
    cfg.slow_file = "";
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    cr_assert(strstr(err, "empty"), "%s", err);
    cfg.slow_file = NULL, cfg.slow_cold = 1;
    cr_assert_eq(kv_tier_init(&t, f.pool, &f.seq, &cfg, err), -1);
    cr_assert(strstr(err, "cold"), "%s", err);
    // a file size limit stands in for a full disk (EFBIG instead of ENOSPC, the same paths)
    struct rlimit old, small = {.rlim_cur = 100, .rlim_max = RLIM_INFINITY};
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    small.rlim_max = old.rlim_max;
    void (*handler)(int) = signal(SIGXFSZ, SIG_IGN);
    cfg.slow_file = path, cfg.slow_cold = 0;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    int rc = kv_tier_init(&t, f.pool, &f.seq, &cfg, err);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_assert(rc == -1 && strstr(err, "cannot reserve"), "%s", err);
    cr_assert(access(path, F_OK) != 0, "the tier's own file is removed on failure");
    f.slow_file = path;
    t = fx_tier(&f, KV_TIER_REACTIVE, 2, 0, 0.0, 32);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    int failed = 0;
    float k[4], v[4], q[8], out[8], att[2 * 32];
    for (int i = 0; i < 4; i++) k[i] = v[i] = 1.0f, q[i] = q[4 + i] = 0.5f;
    for (int pos = f.seq.n_tokens; pos < 20 && !failed; pos++)
        for (int l = 0; l < 2 && !failed; l++) {
            cr_assert_eq(kv_paged_append(f.pool, &f.seq, l, pos, pos, k, v, err), 0, "%s", err);
            failed = kv_tier_append(t, l, pos, k, v, err) != 0 || kv_tier_attend(t, out, att, q, l, 2, err) != 0;
        }
    char err2[ERR_LEN];
    int again = kv_tier_attend(t, out, att, q, 0, 2, err2) != 0 && !strcmp(err, err2); // sticky
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, handler);
    cr_assert(failed && again && strstr(err, "writing --slow-file") && strstr(err, strerror(EFBIG)), "%s", err);
    kv_tier_free(t);
    fx_free(&f);
    assert_gone(dir, path);
}

// The file exists while the tier is attached and is gone after kv_tier_free, also with the worker reading it.
Test(tier, slow_file_is_deleted_at_free) {
    for (int mode = KV_TIER_REACTIVE; mode <= KV_TIER_PREDICTIVE; mode++) {
        char dir[64], path[64];
        tmp_path(dir, path);
        Fx f;
        fx_init(&f, 2, 2, 1, 4, 2, 64);
        fx_append(&f, 11);
        f.slow_file = path;
        KVTier *t = fx_tier(&f, (KVTierMode)mode, 2, 0, 0.0, 64);
        cr_assert_eq(access(path, R_OK | W_OK), 0);
        for (int i = 0; i < 5; i++) step(&f, t, 1, 1, 0);
        kv_tier_free(t);
        assert_gone(dir, path);
        fx_free(&f);
    }
}
