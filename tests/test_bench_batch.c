// The harness of build/bench --decode-batch (suite `bench_batch`, bench/batch_run.c): caches filled from the
// recorded prompt hold what a prefill of that prompt leaves, the B-row step gives each row the logits of that
// sequence stepped alone, every cache ends with context tokens and the bytes the budget arithmetic assumes, and
// the budget's largest batch on known numbers. Speed is never tested here.
//
// bench/ is a program, not part of the library the tests link, so its harness file is compiled into this test
// directly (it prints nothing and depends on the library only).
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "../bench/batch_run.c"
#include "../layers/cpu_ops.h"

enum { CONTEXT = 48, B = 3 };

static Model model; // the bench's model with 2 kv heads (GQA), random weights

static void load(void) {
    ModelConfig c = batch_model_config(2, CONTEXT);
    model_init(&model, &c, &ops_cpu);
    model_init_weights(&model, 1);
}

static void unload(void) { model_free(&model); }

TestSuite(bench_batch, .init = load, .fini = unload, .timeout = 60);

// Each layer's view (keys rotated, values) of a against b: the largest difference, and whether both hold
// `tokens` tokens in every layer.
static float cache_diff(KVCache *a, KVCache *b, int tokens) {
    float d = 0.0f;
    for (int l = 0; l < model.cfg.n_layer; l++) {
        cr_assert_eq(kv_cache_tokens(a, l), tokens);
        cr_assert_eq(kv_cache_tokens(b, l), tokens);
        const float *ka, *va, *kb, *vb;
        int Ta, Tb, qa, qb;
        size_t sa, sb;
        kv_cache_view(a, l, &ka, &va, &Ta, &qa, &sa);
        kv_cache_view(b, l, &kb, &vb, &Tb, &qb, &sb);
        cr_assert_eq(Ta, Tb);
        cr_assert_eq(sa, sb);
        for (int g = 0; g < model.cfg.n_kv_head; g++)
            for (size_t i = 0; i < (size_t)Ta * model_head_dim(&model.cfg); i++) {
                d = fmaxf(d, fabsf(ka[g * sa + i] - kb[g * sb + i]));
                d = fmaxf(d, fabsf(va[g * sa + i] - vb[g * sb + i]));
            }
    }
    return d;
}

// A cache prefilled with the prompt's first n tokens by the decode code's own chunked prefill.
static KVCache *prefilled(int n) {
    char err[ERR_LEN];
    KVShape shape = decode_kv_shape(&model.cfg, CONTEXT);
    KVCache *kv;
    cr_assert_eq(kv_full_init(&kv, &shape, err), 0, "%s", err);
    DecodeState ds;
    decode_state_init(&ds, &model.cfg, BATCH_PREFILL_ROWS, CONTEXT);
    int tokens[CONTEXT];
    for (int i = 0; i < n; i++) tokens[i] = batch_prompt_token(i, model.cfg.vocab_size);
    cr_assert_eq(decode_prefill_cache(&model, &ds, kv, tokens, n, err), 0, "%s", err);
    decode_state_free(&ds);
    return kv;
}

Test(bench_batch, filled_caches_hold_the_prefill) {
    char err[ERR_LEN];
    int n = CONTEXT - BATCH_DECODE_STEPS;
    KVCache *ref = prefilled(n);
    // a prompt of exactly n tokens goes through the same chunks as the prefill: the same bits
    BatchPrompt p;
    cr_assert_eq(batch_prompt_record(&p, &model, n, err), 0, "%s", err);
    BatchRun r;
    cr_assert_eq(batch_run_init(&r, &model, B, CONTEXT, err), 0, "%s", err);
    cr_assert_eq(batch_run_fill(&r, &p, err), 0, "%s", err);
    for (int b = 0; b < B; b++) cr_expect_eq(cache_diff(r.kv[b], ref, n), 0.0f, "sequence %d", b);
    batch_prompt_free(&p);
    // the bench records the longest context's prompt once and fills shorter contexts with its first rows: the
    // same values up to float rounding (a causal model; the chunks' matrix products have more rows)
    cr_assert_eq(batch_prompt_record(&p, &model, CONTEXT + 20, err), 0, "%s", err);
    cr_assert_eq(batch_run_fill(&r, &p, err), 0, "%s", err);
    for (int b = 0; b < B; b++) cr_expect_leq(cache_diff(r.kv[b], ref, n), 1e-5f, "sequence %d", b);
    batch_prompt_free(&p);
    batch_run_free(&r);
    kv_cache_free(ref);
}

Test(bench_batch, batched_steps_are_single_sequences) {
    char err[ERR_LEN];
    int V = model.cfg.vocab_size;
    BatchPrompt p;
    cr_assert_eq(batch_prompt_record(&p, &model, CONTEXT - BATCH_DECODE_STEPS, err), 0, "%s", err);
    BatchRun batched, single;
    cr_assert_eq(batch_run_init(&batched, &model, B, CONTEXT, err), 0, "%s", err);
    cr_assert_eq(batch_run_init(&single, &model, B, CONTEXT, err), 0, "%s", err);
    cr_assert_eq(batch_run_fill(&single, &p, err), 0, "%s", err);
    DecodeState one;
    decode_state_init(&one, &model.cfg, 1, CONTEXT);
    float first[BATCH_DECODE_STEPS][B][BATCH_VOCAB];
    for (int pass = 0; pass < 2; pass++) { // the bench refills the caches before each run: the same again
        cr_assert_eq(batch_run_fill(&batched, &p, err), 0, "%s", err);
        for (int s = 0; s < BATCH_DECODE_STEPS; s++) {
            cr_assert_eq(batch_run_step(&batched, s, err), 0, "%s", err);
            for (int b = 0; b < B; b++) {
                const float *row = batched.ds.logits + (size_t)b * V;
                if (pass == 1) {
                    cr_assert(memcmp(row, first[s][b], V * sizeof(float)) == 0, "refilled: row %d step %d", b, s);
                    continue;
                }
                memcpy(first[s][b], row, V * sizeof(float));
                int tok = batch_token(b, s, V), pos = CONTEXT - BATCH_DECODE_STEPS + s;
                cr_assert_eq(batched.tokens[b], tok);
                cr_assert_eq(batched.pos[b], pos);
                cr_assert_eq(decode_forward(&model, &one, &single.stores[b], 1, &tok, &pos, 1, DECODE_LOGITS_ALL,
                                            err), 1, "%s", err);
                cr_assert(memcmp(row, one.logits, V * sizeof(float)) == 0, "row %d differs at step %d", b, s);
            }
        }
        for (int b = 0; b < B; b++) // every sequence ends with the whole context, and the bytes of the arithmetic
            for (int l = 0; l < model.cfg.n_layer; l++) {
                cr_assert_eq(kv_cache_tokens(batched.kv[b], l), CONTEXT);
                cr_assert_eq(kv_cache_bytes(batched.kv[b]), batch_kv_bytes_per_seq(&model.cfg, CONTEXT));
            }
    }
    decode_state_free(&one);
    batch_run_free(&batched);
    batch_run_free(&single);
    batch_prompt_free(&p);
}

Test(bench_batch, budget_arithmetic) {
    ModelConfig mha = batch_model_config(8, 4096), mqa = batch_model_config(1, 4096);
    cr_assert_eq(mha.n_layer, 4);
    cr_assert_eq(model_head_dim(&mha), 16);
    // 4 layers x 8 kv heads x (4096 tokens x 2 x 16 floats x 4 bytes + a 4-byte count)
    cr_assert_eq(batch_kv_bytes_per_seq(&mha, 4096), (size_t)4 * 8 * (4096 * 128 + 4));
    cr_assert_eq(batch_kv_bytes_per_seq(&mqa, 256), (size_t)4 * 1 * (256 * 128 + 4));
    double mib64 = 64.0 * 1024 * 1024;
    int capped;
    // 64 MiB / 16,777,344 bytes = 3.99998: the counts keep the fourth MHA sequence out
    cr_assert_eq(batch_max_batch(mib64, batch_kv_bytes_per_seq(&mha, 4096), 256, &capped), 3);
    cr_assert_eq(capped, 0);
    // MQA at 256 tokens: 131,088 bytes, 511 fit, capped at 256
    cr_assert_eq(batch_max_batch(mib64, batch_kv_bytes_per_seq(&mqa, 256), 256, &capped), 256);
    cr_assert_eq(capped, 1);
    cr_assert_eq(batch_max_batch(1000, 100, 256, &capped), 10);
    cr_assert_eq(batch_max_batch(1099, 100, 256, &capped), 10);
    cr_assert_eq(batch_max_batch(99, 100, 256, &capped), 0);
    cr_assert_eq(capped, 0);
    cr_assert_eq(batch_max_batch(25600, 100, 256, &capped), 256); // exactly the cap: not cut
    cr_assert_eq(capped, 0);
    cr_assert_eq(batch_max_batch(25700, 100, 256, &capped), 256);
    cr_assert_eq(capped, 1);
}
