// The chunked prompt prefill and the batched step of infer/evalcore.c (suite `prefill`): a prompt taken in chunks of rows leaves
// every cache exactly as token-by-token steps do, for each kind of cache that takes chunks (selection policies
// that evict while the prompt goes in, SnapKV's compression at its end, quantized and KIVI storage, low rank,
// per-layer budgets), and minicache and the paged pool keep their token-by-token path. Compared: the last
// token's logits, the bytes held and the tokens held, and the logits of 8 tokens decoded after the prompt.
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "../infer/evalcore.h"
#include "../kv/spec.h"

static Model model;
static int prompt[150];

// A random model (the test needs no trained weights: caches must match, whatever they hold), GQA 4/2 with
// head dimension 16, and random tokens.
static void load(void) {
    ModelConfig c = {.vocab_size = 40, .n_layer = 3, .n_head = 4, .n_kv_head = 2, .n_embd = 64, .n_hidden = 160,
                     .block_size = 128, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    model_init(&model, &c, &ops_cpu);
    model_init_weights(&model, 5);
    Rng rng;
    rng_init(&rng, 9);
    for (int i = 0; i < 150; i++) prompt[i] = (int)rng_below(&rng, (uint64_t)c.vocab_size);
}

static void unload(void) { model_free(&model); }

TestSuite(prefill, .init = load, .fini = unload, .timeout = 120);

static float max_diff(const float *a, const float *b, int n) {
    float d = 0.0f;
    for (int i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

// tol: the logits' largest difference. Chunks go through GEMM, single tokens through matrix-vector code, so
// fp32 caches differ by float rounding only; a quantized cache can round one value to the next level, which
// shows as a larger (still small) difference.
static void check_spec(const char *text, int expect_chunked, float tol) {
    char err[ERR_LEN];
    KVSpec spec;
    cr_assert_eq(kv_spec_parse(&spec, text, err), 0, "%s: %s", text, err);
    int T = model.cfg.block_size, V = model.cfg.vocab_size, n = T - 10;
    cr_assert(n <= 150 && n > 64, "the prompt must span several chunks");
    EvalCache chunk, step;
    cr_assert_eq(evalcore_cache_init(&chunk, &model, &spec, T, prompt, 150, err), 0, "%s: %s", text, err);
    cr_assert_eq(evalcore_cache_init(&step, &model, &spec, T, prompt, 150, err), 0, "%s: %s", text, err);
    cr_expect_eq(chunk.chunked, expect_chunked, "%s", text);
    cr_assert_eq(evalcore_cache_prefill(&chunk, &model, prompt, n, err), 0, "%s: %s", text, err);
    evalcore_cache_reset(&step, n);
    for (int t = 0; t < n; t++) cr_assert_eq(evalcore_cache_step(&step, &model, prompt[t], t, err), 0, "%s", err);
    for (int t = n; t <= n + 8; t++) {
        float d = max_diff(chunk.ds.logits, step.ds.logits, V);
        cr_expect_leq(d, tol, "%s: logits differ by %g at position %d", text, d, t);
        cr_expect_eq(evalcore_cache_bytes(&chunk), evalcore_cache_bytes(&step), "%s at %d", text, t);
        cr_expect_eq(evalcore_cache_held(&chunk), evalcore_cache_held(&step), "%s at %d", text, t);
        if (t == n + 8) break;
        int next = prompt[t % 150];
        cr_assert_eq(evalcore_cache_step(&chunk, &model, next, t, err), 0, "%s", err);
        cr_assert_eq(evalcore_cache_step(&step, &model, next, t, err), 0, "%s", err);
    }
    evalcore_cache_free(&chunk);
    evalcore_cache_free(&step);
}

Test(prefill, chunks_leave_every_cache_as_steps_do) {
    const char *fp32[] = {"full", "window:40", "sink:4,window:36", "h2o:16,16", "tova:32", "snapkv:32,8", "knorm:32",
                          "random:32", "window:48+pyramid", "lowrank:4"};
    const char *quantized[] = {"int4", "int2:8", "fp8", "kivi2:16,32", "h2o:16,16+int8", "fpkeep:4,16+int4"};
    for (size_t i = 0; i < sizeof fp32 / sizeof fp32[0]; i++) check_spec(fp32[i], 1, 1e-3f);
    for (size_t i = 0; i < sizeof quantized / sizeof quantized[0]; i++) check_spec(quantized[i], 1, 0.1f);
}

Test(prefill, minicache_and_paged_go_token_by_token) {
    check_spec("minicache:1", 0, 0.0f);
    check_spec("window:64+paged:16", 0, 0.0f);
}

// evalcore_caches_step: n caches stepped in one decode_forward of n rows give the bits of n single steps (the
// streaming eval batches its streams on this), for contiguous and paged caches, up to 8 rows.
Test(prefill, batched_step_is_single_steps) {
    const char *specs[] = {"full", "h2o:16,16+int4", "window:32+paged:16", "minicache:1", "random:24", "kivi2:16,32"};
    enum { N = 5, STEPS = 70 };
    char err[ERR_LEN];
    int V = model.cfg.vocab_size;
    for (size_t k = 0; k < sizeof specs / sizeof specs[0]; k++) {
        KVSpec spec;
        cr_assert_eq(kv_spec_parse(&spec, specs[k], err), 0, "%s", err);
        EvalCache batched[N], single[N], *ptrs[N];
        for (int i = 0; i < N; i++) {
            cr_assert_eq(evalcore_cache_init(&batched[i], &model, &spec, 128, prompt, 150, err), 0, "%s", err);
            cr_assert_eq(evalcore_cache_init(&single[i], &model, &spec, 128, prompt, 150, err), 0, "%s", err);
            evalcore_cache_reset(&batched[i], 20);
            evalcore_cache_reset(&single[i], 20);
            ptrs[i] = &batched[i];
        }
        DecodeState ds;
        decode_state_init(&ds, &model.cfg, N, 128);
        for (int t = 0; t < STEPS; t++) {
            int tok[N], pos[N];
            for (int i = 0; i < N; i++) tok[i] = prompt[(t + 17 * i) % 150], pos[i] = t;
            cr_assert_eq(evalcore_caches_step(ptrs, N, &model, &ds, tok, pos, err), 0, "%s", err);
            for (int i = 0; i < N; i++) {
                cr_assert_eq(evalcore_cache_step(&single[i], &model, tok[i], t, err), 0, "%s", err);
                cr_assert(memcmp(ds.logits + (size_t)i * V, single[i].ds.logits, V * sizeof(float)) == 0,
                          "%s: stream %d differs at step %d", specs[k], i, t);
            }
        }
        for (int i = 0; i < N; i++) {
            cr_expect_eq(evalcore_cache_bytes(&batched[i]), evalcore_cache_bytes(&single[i]), "%s", specs[k]);
            evalcore_cache_free(&batched[i]);
            evalcore_cache_free(&single[i]);
        }
        decode_state_free(&ds);
    }
}
