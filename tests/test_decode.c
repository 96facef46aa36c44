// The decode step through the KV cache must reproduce the full-sequence forward pass: same logits at every
// position (within 1e-5), for MHA, GQA and MQA.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "../decode/step.h"
#include "../layers/model.h"

// scale multiplies the initial weights (larger = sharper attention, larger logits); tol_rel = 0 asks for
// an absolute 1e-5, otherwise the bound is tol_rel * max |logit|.
static void check_decode_matches_forward(int n_kv_head, float scale, float tol_rel) {
    ModelConfig cfg = {.vocab_size = 13, .n_layer = 3, .n_head = 4, .n_kv_head = n_kv_head, .n_embd = 32,
                       .n_hidden = 48, .block_size = 24, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    Model m;
    model_init(&m, &cfg, &ops_cpu);
    model_init_weights(&m, 42);
    // larger weights than the init so attention is far from uniform and a position bug would show
    for (size_t i = 0; i < m.n_params; i++) m.params_memory[i] *= scale;
    int T = cfg.block_size, tokens[24];
    Rng rng;
    rng_init(&rng, 7);
    for (int t = 0; t < T; t++) tokens[t] = (int)rng_below(&rng, cfg.vocab_size);
    model_alloc_acts(&m, 1, T);
    model_forward(&m, tokens, NULL, 1, T, 0);

    KVCache *kv;
    char err[ERR_LEN];
    KVShape shape = {cfg.n_layer, cfg.n_head, cfg.n_kv_head, model_head_dim(&cfg), T, cfg.rope_theta, 0};
    cr_assert_eq(kv_full_init(&kv, &shape, err), 0, "%s", err);
    DecodeState ds;
    decode_state_init(&ds, &cfg, 1, T);
    float max_err = 0.0f, max_abs = 0.0f;
    for (int t = 0; t < T; t++) {
        cr_assert_eq(model_decode_step(&m, &ds, kv, tokens[t], t), 0);
        for (int i = 0; i < cfg.vocab_size; i++) {
            float ref = m.acts.logits[(size_t)t * cfg.vocab_size + i];
            max_err = fmaxf(max_err, fabsf(ds.logits[i] - ref));
            max_abs = fmaxf(max_abs, fabsf(ref));
        }
    }
    cr_assert(max_abs > 1.0f, "logits too small to make the comparison meaningful (max |logit| %g)", max_abs);
    float bound = tol_rel > 0 ? tol_rel * max_abs : 1e-5f;
    cr_assert(max_err <= bound, "n_kv_head %d: decode vs forward max |diff| %g > %g (max |logit| %g)", n_kv_head,
              max_err, bound, max_abs);
    // the cache is now full: one more token is refused, not written past the end
    cr_assert_eq(model_decode_step(&m, &ds, kv, tokens[0], T), -1);
    // held: keys and values fp32 and each lane's count (a full cache's positions are its slot indices)
    cr_assert_eq(kv_cache_bytes(kv), (size_t)cfg.n_layer * cfg.n_kv_head * (T * 2 * model_head_dim(&cfg) * sizeof(float) + sizeof(int)));
    decode_state_free(&ds);
    kv_cache_free(kv);
    model_free(&m);
}

Test(decode, matches_forward_mha) { check_decode_matches_forward(4, 3.0f, 0.0f); }
Test(decode, matches_forward_gqa) { check_decode_matches_forward(2, 3.0f, 0.0f); }
Test(decode, matches_forward_mqa) { check_decode_matches_forward(1, 3.0f, 0.0f); }
// with logits around 20 float32 rounding alone reaches a few 1e-5 absolute (different summation orders of
// sgemm and sgemv), so the sharp case is held to 1e-5 relative to the largest logit
Test(decode, matches_forward_sharp_mqa) { check_decode_matches_forward(1, 8.0f, 1e-5f); }
Test(decode, matches_forward_sharp_gqa) { check_decode_matches_forward(2, 8.0f, 1e-5f); }

// The paged pool gives the same logits as the full cache, and a second request whose prompt starts like the
// first reuses its full blocks (skipping their prefill) and still gets the same logits for every token it
// computes: prefix reuse is exact, positions never shift.
static void check_paged_matches_full(int n_kv_head, int block) {
    ModelConfig cfg = {.vocab_size = 13, .n_layer = 3, .n_head = 4, .n_kv_head = n_kv_head, .n_embd = 32,
                       .n_hidden = 48, .block_size = 24, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    Model m;
    model_init(&m, &cfg, &ops_cpu);
    model_init_weights(&m, 42);
    for (size_t i = 0; i < m.n_params; i++) m.params_memory[i] *= 3.0f;
    enum { T = 24 };
    int a[T], b[T];
    Rng rng;
    rng_init(&rng, 9);
    for (int t = 0; t < T; t++) a[t] = (int)rng_below(&rng, cfg.vocab_size);
    for (int t = 0; t < T; t++) b[t] = t < 13 ? a[t] : (int)rng_below(&rng, cfg.vocab_size); // shares 13 tokens
    KVShape shape = {cfg.n_layer, cfg.n_head, cfg.n_kv_head, model_head_dim(&cfg), T, cfg.rope_theta, 0};
    char err[ERR_LEN];
    KVPool *pool;
    cr_assert_eq(kv_pool_init(&pool, &shape, block, 2 * ((T + block - 1) / block), err), 0, "%s", err);
    DecodeState full_s, paged_s;
    decode_state_init(&full_s, &cfg, 1, T);
    decode_state_init(&paged_s, &cfg, 1, T);
    const int *reqs[2] = {a, b};
    int reused_b = -1;
    for (int r = 0; r < 2; r++) {
        KVCache *kv;
        cr_assert_eq(kv_full_init(&kv, &shape, err), 0, "%s", err);
        KVSeq seq = {0};
        int reused = kv_paged_begin(pool, &seq, reqs[r], T, KV_PRIORITY_DEFAULT, err);
        cr_assert_geq(reused, 0, "%s", err);
        if (r == 1) reused_b = reused;
        float max_err = 0.0f;
        for (int t = 0; t < T; t++) {
            cr_assert_eq(model_decode_step(&m, &full_s, kv, reqs[r][t], t), 0);
            if (t < reused) continue; // its K/V came from the pool
            cr_assert_eq(model_decode_step_paged(&m, &paged_s, pool, &seq, reqs[r][t], t, err), 0, "%s", err);
            for (int i = 0; i < cfg.vocab_size; i++) max_err = fmaxf(max_err, fabsf(paged_s.logits[i] - full_s.logits[i]));
        }
        cr_assert(max_err <= 1e-5f, "request %d, block %d: paged vs full max |diff| %g", r, block, max_err);
        kv_paged_end(pool, &seq);
        kv_cache_free(kv);
    }
    cr_assert_eq(reused_b, 13 / block * block, "request b reuses its full shared blocks (block %d)", block);
    cr_assert_eq(kv_pool_validate(pool, err), 0, "%s", err);
    decode_state_free(&full_s);
    decode_state_free(&paged_s);
    kv_pool_free(pool);
    model_free(&m);
}

Test(decode, paged_matches_full_mha) { check_paged_matches_full(4, 4); }
Test(decode, paged_matches_full_gqa) { check_paged_matches_full(2, 5); }
Test(decode, paged_matches_full_mqa_block1) { check_paged_matches_full(1, 1); }

// Batched decode over the pool: three sequences of different lengths advanced together give the logits each
// gets alone (float order aside), and the pool holds the same rows either way.
Test(decode, batch_paged_matches_single) {
    ModelConfig cfg = {.vocab_size = 13, .n_layer = 3, .n_head = 4, .n_kv_head = 2, .n_embd = 32,
                       .n_hidden = 48, .block_size = 24, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    Model m;
    model_init(&m, &cfg, &ops_cpu);
    model_init_weights(&m, 42);
    for (size_t i = 0; i < m.n_params; i++) m.params_memory[i] *= 3.0f;
    enum { T = 24, S = 3 };
    int toks[S][T];
    Rng rng;
    rng_init(&rng, 11);
    for (int s = 0; s < S; s++)
        for (int t = 0; t < T; t++) toks[s][t] = (int)rng_below(&rng, cfg.vocab_size);
    KVShape shape = {cfg.n_layer, cfg.n_head, cfg.n_kv_head, model_head_dim(&cfg), T, cfg.rope_theta, 0};
    char err[ERR_LEN];
    KVPool *single, *batched;
    cr_assert_eq(kv_pool_init(&single, &shape, 4, 3 * 6, err), 0, "%s", err);
    cr_assert_eq(kv_pool_init(&batched, &shape, 4, 3 * 6, err), 0, "%s", err);
    KVSeq a[S] = {{0}}, b[S] = {{0}};
    for (int s = 0; s < S; s++) a[s].salt = b[s].salt = (uint64_t)s + 1;
    DecodeState ds;
    DecodeState db;
    decode_state_init(&ds, &cfg, 1, T);
    decode_state_init(&db, &cfg, S, T);
    int start[S] = {0, 5, 11}; // sequence s joins at round start[s], so positions differ within a batch
    float max_err = 0.0f, ref[S][13];
    for (int round = 0; round < T + 11; round++) {
        KVSeq *seqs[S];
        int tok[S], pos[S], rows = 0, which[S];
        for (int s = 0; s < S; s++) {
            int t = round - start[s];
            if (t < 0 || t >= T) continue;
            cr_assert_eq(model_decode_step_paged(&m, &ds, single, &a[s], toks[s][t], t, err), 0, "%s", err);
            memcpy(ref[s], ds.logits, sizeof(ref[s]));
            seqs[rows] = &b[s], tok[rows] = toks[s][t], pos[rows] = t, which[rows++] = s;
        }
        if (!rows) continue;
        cr_assert_eq(model_decode_batch_paged(&m, &db, batched, seqs, tok, pos, rows, err), 0, "%s", err);
        for (int i = 0; i < rows; i++)
            for (int v = 0; v < cfg.vocab_size; v++)
                max_err = fmaxf(max_err, fabsf(db.logits[i * cfg.vocab_size + v] - ref[which[i]][v]));
    }
    cr_assert(max_err <= 1e-5f, "batched vs single max |diff| %g", max_err);
    for (int s = 0; s < S; s++) {
        cr_assert_eq(a[s].n_tokens, T);
        cr_assert_eq(b[s].n_tokens, T);
        kv_paged_end(single, &a[s]);
        kv_paged_end(batched, &b[s]);
    }
    cr_assert_eq(kv_pool_validate(batched, err), 0, "%s", err);
    decode_state_free(&ds);
    decode_state_free(&db);
    kv_pool_free(single);
    kv_pool_free(batched);
    model_free(&m);
}
