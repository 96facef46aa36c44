// The KV cache engine and its policies: strict specs, exact budgets, what each policy promises to keep,
// storage formats against fp32, and streaming past the trained context.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kv/codec.h"
#include "../kv/kv.h"
#include "../kv/policy.h"
#include "../kv/minicache.h"
#include "../decode/step.h"

// ---- specs -----------------------------------------------------------------------------------------------

Test(kv, spec_accepts_valid_forms) {
    const char *good[] = {"full", "window:8", "sink:4,window:60", "h2o:16,16", "tova:32", "snapkv:32",
                          "snapkv:32,8", "snapkv:32,8,3", "knorm:32", "knorm:32,0", "full+fp16", "full+int8",
                          "window:8+int4:8", "h2o:4,4+int2:4+hadamard", "tova:8+pyramid", "sink:1,window:7+fp16+pyramid"};
    char err[ERR_LEN];
    KVSpec sp;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        cr_assert_eq(kv_spec_parse(&sp, good[i], err), 0, "'%s' rejected: %s", good[i], err);
    cr_assert_eq(kv_spec_parse(&sp, "snapkv:32", err), 0);
    cr_assert(sp.window == 32 && sp.kernel == 5 && kv_spec_budget(&sp) == 64);
    cr_assert_eq(kv_spec_parse(&sp, "knorm:32", err), 0);
    cr_assert_eq(sp.skip_layers, 2);
    cr_assert_eq(kv_spec_parse(&sp, "sink:4,window:60+int4:16", err), 0);
    cr_assert(sp.policy == kv_policy_find("sink", 4) && sp.sink == 4 && sp.window == 60 && sp.codec->bits == 4 && sp.group == 16);
}

Test(kv, spec_rejects_bad_forms) {
    const char *bad[] = {"", "ful", "window", "window:", "window:0", "window:-3", "window:8,", "window:8x",
                         "sink:4", "sink:0,window:8", "sink:4,window:", "h2o:16", "h2o:16,0", "tova:", "snapkv:8,4,2",
                         "knorm:0", "full+int3", "full+int4:0", "full+fp16+int8", "full+hadamard", "full+pyramid",
                         "window:8++int4", "+int4", "window:8+", "int4+int8", "window:8+window:4", "random:4,4", "fp8:0", "paged:8+tova:4"};
    char err[ERR_LEN];
    KVSpec sp;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        cr_assert_eq(kv_spec_parse(&sp, bad[i], err), -1, "'%s' accepted", bad[i]);
        cr_assert(strstr(err, "valid forms are") && strstr(err, "sink:S,window:W") && !strchr(err, '\n'),
                  "message for '%s': %s", bad[i], err);
    }
}

// ---- policies on synthetic streams -----------------------------------------------------------------------

enum { L = 2, NH = 4, NKV = 2, HD = 8, MAXP = 64 };

static KVCache *make_cache(const char *text) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, text, err), 0, "%s", err);
    KVShape shape = {L, NH, NKV, HD, MAXP, 10000.0f, 0};
    KVCache *kv;
    cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), 0, "%s", err);
    return kv;
}

// Feeds n tokens to every layer. Token t's key has norm 1 + (t % 7) (so knorm has something to rank) and the
// synthetic attention puts most weight on positions divisible by 5 (so attention policies have favourites).
static void feed(KVCache *kv, int n) {
    float k[NKV * HD], v[NKV * HD], att[NH * MAXP];
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < NKV * HD; i++) {
            k[i] = (i % HD == 0) ? 1.0f + (float)(t % 7) : 0.0f;
            v[i] = (float)t + 0.01f * i;
        }
        for (int l = 0; l < L; l++) {
            cr_assert_eq(kv_cache_append(kv, l, t, k, v), 0);
            const float *kc, *vc;
            int Tc, qpos;
            size_t stride;
            kv_cache_view(kv, l, &kc, &vc, &Tc, &qpos, &stride);
            const KVLane *lane = kv_cache_lane(kv, l, 0);
            float sum = 0.0f;
            for (int s = 0; s < Tc; s++) sum += att[s] = kv_lane_pos(lane, s) % 5 == 0 ? 10.0f : 1.0f;
            for (int h = 0; h < NH; h++)
                for (int s = 0; s < Tc; s++) att[h * Tc + s] = (kv_lane_pos(lane, s) % 5 == 0 ? 10.0f : 1.0f) / sum;
            kv_cache_observe(kv, l, att);
        }
    }
}

static int holds(const KVCache *kv, int layer, int pos) {
    const KVLane *lane = kv_cache_lane(kv, layer, 0);
    for (int s = 0; s < lane->n; s++)
        if (lane->pos[s] == pos) return 1;
    return 0;
}

static void expect_budget(const KVCache *kv, int seen) {
    for (int l = 0; l < L; l++) {
        int b = kv_cache_layer_budget(kv, l), want = b && seen > b ? b : seen;
        for (int g = 0; g < NKV; g++) cr_assert_eq(kv_cache_lane(kv, l, g)->n, want, "layer %d head %d", l, g);
    }
}

Test(kv, window_keeps_newest) {
    KVCache *kv = make_cache("window:8");
    feed(kv, 30);
    expect_budget(kv, 30);
    for (int p = 22; p < 30; p++) cr_assert(holds(kv, 0, p));
    kv_cache_free(kv);
}

Test(kv, sink_keeps_first_and_newest_at_cache_positions) {
    KVCache *kv = make_cache("sink:2,window:6");
    feed(kv, 40);
    expect_budget(kv, 40);
    int want[] = {0, 1, 34, 35, 36, 37, 38, 39};
    const KVLane *lane = kv_cache_lane(kv, 1, 1);
    for (int s = 0; s < 8; s++) cr_assert_eq(lane->pos[s], want[s]);
    const float *kc, *vc;
    int Tc, qpos;
    size_t stride;
    kv_cache_view(kv, 0, &kc, &vc, &Tc, &qpos, &stride);
    cr_assert_eq(qpos, 7, "the query sits at its slot in the cache, not at position 39");
    kv_cache_free(kv);
}

Test(kv, h2o_keeps_recent_and_heavy) {
    KVCache *kv = make_cache("h2o:4,4");
    feed(kv, 40);
    expect_budget(kv, 40);
    for (int p = 36; p < 40; p++) cr_assert(holds(kv, 0, p), "recent %d", p);
    // heavy hitters: the favoured positions that entered early accumulated the most attention
    int heavy = 0;
    const KVLane *lane = kv_cache_lane(kv, 0, 0);
    for (int s = 0; s < lane->n; s++) heavy += lane->pos[s] < 36 && kv_lane_pos(lane, s) % 5 == 0;
    cr_assert_eq(heavy, 4);
    kv_cache_free(kv);
}

Test(kv, tova_keeps_most_attended) {
    KVCache *kv = make_cache("tova:6");
    feed(kv, 40);
    expect_budget(kv, 40);
    const KVLane *lane = kv_cache_lane(kv, 1, 0);
    int favoured = 0;
    for (int s = 0; s < lane->n; s++) favoured += kv_lane_pos(lane, s) % 5 == 0;
    cr_assert_geq(favoured, 5, "TOVA kept %d favoured tokens of 6", favoured);
    kv_cache_free(kv);
}

Test(kv, knorm_keeps_low_norm_and_skips_layers) {
    KVCache *kv = make_cache("knorm:5,1");
    feed(kv, 40);
    cr_assert_eq(kv_cache_layer_budget(kv, 0), 0, "the first layer is left whole");
    cr_assert_eq(kv_cache_tokens(kv, 0), 40);
    cr_assert_eq(kv_cache_tokens(kv, 1), 5);
    const KVLane *lane = kv_cache_lane(kv, 1, 0);
    for (int s = 0; s < lane->n; s++) cr_assert_leq(lane->pos[s] % 7, 1, "kept a key of norm %d", 1 + lane->pos[s] % 7);
    kv_cache_free(kv);
}

Test(kv, snapkv_compresses_once_at_prefill_end) {
    KVCache *kv = make_cache("snapkv:6,4,3");
    kv_cache_set_prefill(kv, 30);
    feed(kv, 29);
    cr_assert_eq(kv_cache_tokens(kv, 0), 29, "nothing is evicted during the prompt");
    KVCache *kv2 = make_cache("snapkv:6,4,3");
    kv_cache_set_prefill(kv2, 30);
    feed(kv2, 35);
    // at the end of the prompt: 6 voted + the 4-token window; then 5 generated tokens appended
    cr_assert_eq(kv_cache_tokens(kv2, 0), 10 + 5);
    for (int p = 26; p < 35; p++) cr_assert(holds(kv2, 0, p), "window/generated %d", p);
    kv_cache_free(kv);
    kv_cache_free(kv2);
}

Test(kv, pyramid_budgets) {
    KVCache *kv = make_cache("tova:10+pyramid");
    int b0 = kv_cache_layer_budget(kv, 0), b1 = kv_cache_layer_budget(kv, 1);
    cr_assert(b0 > b1 && b0 + b1 == 20, "budgets %d, %d", b0, b1);
    feed(kv, 40);
    expect_budget(kv, 40);
    kv_cache_free(kv);
}

// ---- storage formats -------------------------------------------------------------------------------------

static float view_error(const char *text, int n) {
    KVCache *ref = make_cache("full"), *kv = make_cache(text);
    Rng rng;
    rng_init(&rng, 3);
    float k[NKV * HD], v[NKV * HD], worst = 0.0f;
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < NKV * HD; i++) k[i] = rng_normal(&rng), v[i] = rng_normal(&rng);
        cr_assert_eq(kv_cache_append(ref, 0, t, k, v), 0);
        cr_assert_eq(kv_cache_append(kv, 0, t, k, v), 0);
    }
    const float *k1, *v1, *k2, *v2;
    int T1, T2, q1, q2;
    size_t s1, s2;
    kv_cache_view(ref, 0, &k1, &v1, &T1, &q1, &s1); // the fp32 full cache's view is its own storage
    kv_cache_view(kv, 0, &k2, &v2, &T2, &q2, &s2);
    cr_assert_eq(T1, T2);
    for (int g = 0; g < NKV; g++)
        for (int i = 0; i < T1 * HD; i++) {
            worst = fmaxf(worst, fabsf(k1[g * s1 + i] - k2[g * s2 + i]));
            worst = fmaxf(worst, fabsf(v1[g * s1 + i] - v2[g * s2 + i]));
        }
    kv_cache_free(ref);
    kv_cache_free(kv);
    return worst;
}

Test(kv, formats_against_fp32) {
    float e16 = view_error("full+fp16", 20), e8 = view_error("full+int8", 20), e4 = view_error("full+int4", 20);
    float e2 = view_error("full+int2", 20), e4h = view_error("full+int4+hadamard", 20);
    // N(0,1) data, groups of 8: range <= ~7, so the step is <= 7/255, 7/15, 7/3; error <= step/2 (+ fp16)
    cr_assert_leq(e16, 4e-3f, "fp16 %g", e16);
    cr_assert_leq(e8, 7.0f / 255 / 2 + 0.01f, "int8 %g", e8);
    cr_assert_leq(e4, 7.0f / 15 / 2 + 0.02f, "int4 %g", e4);
    cr_assert_leq(e2, 7.0f / 3 / 2 + 0.05f, "int2 %g", e2);
    cr_assert(e16 < e8 && e8 < e4 && e4 < e2, "errors %g %g %g %g", e16, e8, e4, e2);
    cr_assert_leq(e4h, 7.0f / 15 + 0.05f, "int4 + hadamard %g", e4h);
    KVCache *a = make_cache("full"), *b = make_cache("full+int4");
    feed(a, 10);
    feed(b, 10);
    // fp32 rows: 2 * 8 * 4 bytes; int4 with groups of 8: 2 * (4 + 4) bytes; a count per lane
    cr_assert_eq(kv_cache_bytes(a), (size_t)L * NKV * (10 * 64 + 4));
    cr_assert_eq(kv_cache_bytes(b), (size_t)L * NKV * (10 * 16 + 4));
    KVCache *w = make_cache("window:20+int4");
    feed(w, 10);
    cr_assert_eq(kv_cache_bytes(w), (size_t)L * NKV * (10 * (16 + 4) + 4), "an evicting cache holds positions");
    kv_cache_free(w);
    kv_cache_free(a);
    kv_cache_free(b);
}

// ---- through the model -----------------------------------------------------------------------------------

Test(kv, streaming_past_trained_context_stays_finite) {
    ModelConfig cfg = {.vocab_size = 11, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 16, .n_hidden = 32,
                       .block_size = 16, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    Model m;
    model_init(&m, &cfg, &ops_cpu);
    model_init_weights(&m, 5);
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, "sink:2,window:6+int8", err), 0);
    int n = 16 * cfg.block_size; // 16x the trained context
    KVShape shape = {cfg.n_layer, cfg.n_head, cfg.n_kv_head, model_head_dim(&cfg), n, cfg.rope_theta, 0};
    KVCache *kv;
    cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), 0, "%s", err);
    DecodeState ds;
    decode_state_init(&ds, &cfg, 1, 8);
    for (int t = 0; t < n; t++) {
        cr_assert_eq(model_decode_step(&m, &ds, kv, t % cfg.vocab_size, t), 0);
        for (int i = 0; i < cfg.vocab_size; i++) cr_assert(isfinite(ds.logits[i]), "step %d", t);
        cr_assert_leq(kv_cache_tokens(kv, 0), 8);
    }
    decode_state_free(&ds);
    kv_cache_free(kv);
    model_free(&m);
}

// ---- the streaming eval harness ----------------------------------------------------------------------------

#include "../infer/kveval.h"

static void tiny_model(Model *m) {
    ModelConfig cfg = {.vocab_size = 9, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 16, .n_hidden = 32,
                       .block_size = 24, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    model_init(m, &cfg, &ops_cpu);
    model_init_weights(m, 11);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] *= 4.0f; // sharp enough to tell caches apart
}

static KVEvalResult eval_spec(const Model *m, const char *text, const int *tokens, size_t n) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, text, err), 0, "%s", err);
    KVEvalConfig cfg = {.context = 24, .prefill = 12, .streams = 3};
    KVEvalResult r;
    cr_assert_eq(kv_eval_streams(m, &sp, tokens, n, &cfg, &r, err), 0, "%s", err);
    cr_assert_eq(r.tokens, 3 * 12);
    kv_eval_result_free(&r); // the per-stream sums: kv.eval_per_stream
    return r;
}

static KVEvalResult eval_cfg(const Model *m, const char *text, const int *tokens, size_t n, const KVEvalConfig *cfg) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, text, err), 0, "%s", err);
    KVEvalResult r;
    cr_assert_eq(kv_eval_streams(m, &sp, tokens, n, cfg, &r, err), 0, "%s: %s", text, err);
    return r;
}

// The per-stream sums add up to the totals; bytes are averaged over the scored steps (a full cache grows, a
// window does not); a stream with a start symbol is the same as the text with the symbol written first; the
// per-token file holds every scored token.
Test(kv, eval_per_stream_bytes_and_bos) {
    Model m;
    tiny_model(&m);
    int tokens[201];
    Rng rng;
    rng_init(&rng, 5);
    for (int i = 0; i < 201; i++) tokens[i] = (int)rng_below(&rng, 9);
    KVEvalConfig cfg = {.context = 24, .prefill = 12, .streams = 11}; // more streams than one batch of 8
    KVEvalResult w = eval_cfg(&m, "window:4", tokens, 200, &cfg);
    double nll = 0.0, kl = 0.0;
    long agree = 0;
    for (int s = 0; s < 11; s++) nll += w.stream_nll[s], kl += w.stream_kl[s], agree += w.stream_agree[s];
    cr_assert_eq(w.tokens, 11 * 12);
    cr_assert_float_eq(exp(nll / w.tokens), w.ppl, 1e-9 * w.ppl);
    cr_assert_float_eq(kl / w.tokens, w.kl, 1e-12);
    cr_assert_eq(agree, (long)llround(w.top1_agree * w.tokens));
    cr_assert_eq((size_t)w.kv_bytes_mean, w.kv_bytes_peak, "a full window holds the same at every scored step");
    // a full fp16 cache at the scored steps holds prefill .. context-1 tokens: (12 + 23) / 2 on average
    double fp16 = 2.0 * 2 * 8 * 2; // layers, K and V, kv dim (2 heads of 4), bytes
    cr_assert_float_eq(w.fp16_full_bytes_mean, fp16 * 17.5, 1e-9);
    KVEvalResult f = eval_cfg(&m, "full", tokens, 200, &cfg);
    cr_assert_lt(f.kv_bytes_mean, (double)f.kv_bytes_peak, "the full cache grows");
    cr_assert_lt(f.kv_bytes_peak, f.kv_bytes, "the last step scored comes before the last token fed");
    cr_assert_float_eq(f.kv_bytes_mean / f.fp16_full_bytes_mean, 2.0, 0.02, "fp32 is twice fp16, plus the lane counts (%g)",
                       f.kv_bytes_mean / f.fp16_full_bytes_mean);
    kv_eval_result_free(&w);
    kv_eval_result_free(&f);
    // the start symbol: one stream from offset 0 of the text, against the text with the symbol in front
    KVEvalConfig one = {.context = 24, .prefill = 12, .streams = 1, .bos = 1, .bos_id = 7};
    KVEvalResult b = eval_cfg(&m, "h2o:4,4", tokens + 1, 199, &one);
    int with[200];
    with[0] = 7;
    memcpy(with + 1, tokens + 1, 199 * sizeof(int));
    one.bos = 0;
    KVEvalResult ref = eval_cfg(&m, "h2o:4,4", with, 200, &one);
    cr_assert_eq(b.ppl, ref.ppl);
    cr_assert_eq(b.kl, ref.kl);
    cr_assert_eq(b.stream_nll[0], ref.stream_nll[0]);
    kv_eval_result_free(&ref);
    one.bos = 1;
    one.bos_id = 9;
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, "full", err), 0);
    cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &one, &ref, err), -1, "a start symbol outside the vocabulary");
    cr_assert(strstr(err, "start symbol"), "%s", err);
    // every scored token in the file, and its NLL sums to the stream's
    char path[] = "/tmp/kvlab-tokens-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    one.bos_id = 7;
    one.streams = 2;
    one.tokens_out = path;
    KVEvalResult t = eval_cfg(&m, "h2o:4,4", tokens, 200, &one);
    FILE *fp = fopen(path, "r");
    cr_assert(fp);
    char line[256];
    int lines = 0;
    double sum0 = 0.0;
    cr_assert(fgets(line, sizeof line, fp) && line[0] == '#');
    while (fgets(line, sizeof line, fp)) {
        int s, pos, ag;
        double a, b2, k;
        cr_assert_eq(sscanf(line, "%d %d %lf %lf %lf %d", &s, &pos, &a, &b2, &k, &ag), 6, "%s", line);
        cr_assert(pos >= 12 && pos < 24 && (s == 0 || s == 1));
        if (s == 0) sum0 += a;
        lines++;
    }
    fclose(fp);
    unlink(path);
    cr_assert_eq(lines, 2 * 12);
    cr_assert_float_eq(sum0, t.stream_nll[0], 1e-6);
    kv_eval_result_free(&t);
    kv_eval_result_free(&b);
    // without the reference: the same perplexity through the cache, compared with itself
    one.tokens_out = NULL;
    KVEvalResult with_ref = eval_cfg(&m, "tova:6+int4", tokens, 200, &one);
    one.no_reference = 1;
    KVEvalResult alone = eval_cfg(&m, "tova:6+int4", tokens, 200, &one);
    cr_assert_eq(alone.ppl, with_ref.ppl);
    cr_assert_eq(alone.kv_bytes_mean, with_ref.kv_bytes_mean);
    cr_assert(alone.kl == 0.0 && alone.top1_agree == 1.0 && alone.ppl_full == alone.ppl);
    cr_assert_gt(with_ref.kl, 0.0);
    kv_eval_result_free(&with_ref);
    kv_eval_result_free(&alone);
    one.no_reference = 0;
    one.tokens_out = "/nonexistent-dir/x";
    cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &one, &ref, err), -1);
    cr_assert(strstr(err, "cannot write"), "%s", err);
    model_free(&m);
}

Test(kv, eval_full_matches_itself_and_eviction_differs) {
    Model m;
    tiny_model(&m);
    int tokens[200];
    Rng rng;
    rng_init(&rng, 2);
    for (int i = 0; i < 200; i++) tokens[i] = (int)rng_below(&rng, 9);
    KVEvalResult full = eval_spec(&m, "full", tokens, 200);
    cr_assert_eq(full.kl, 0.0);
    cr_assert_eq(full.top1_agree, 1.0);
    cr_assert_eq(full.ppl, full.ppl_full);
    KVEvalResult win = eval_spec(&m, "window:4", tokens, 200);
    cr_assert_gt(win.kl, 0.0);
    cr_assert_eq(win.ppl_full, full.ppl_full, "the reference does not depend on the spec");
    cr_assert_lt(win.bytes_per_token, full.bytes_per_token);
    KVEvalResult none = eval_spec(&m, "full+minicache:0,0", tokens, 200);
    cr_assert_eq(none.kl, 0.0, "MiniCache with nothing merged is the full cache");
    KVEvalResult merged = eval_spec(&m, "full+minicache:0,180", tokens, 200);
    cr_assert_gt(merged.kl, 0.0);
    cr_assert_lt(merged.bytes_per_token, full.bytes_per_token);
    KVEvalResult q8 = eval_spec(&m, "full+int8", tokens, 200), q2 = eval_spec(&m, "full+int2", tokens, 200);
    cr_assert(q8.kl < q2.kl, "int8 KL %g should be below int2 KL %g", q8.kl, q2.kl);
    cr_assert(isfinite(q2.ppl) && q2.top1_agree >= 0.0 && q2.top1_agree <= 1.0);
    model_free(&m);
}

Test(kv, kivi_layout) {
    char err[ERR_LEN];
    KVSpec sp;
    cr_assert_eq(kv_spec_parse(&sp, "full+kivi2", err), 0, "%s", err);
    cr_assert(sp.codec->is_kivi && sp.codec->bits == 2 && sp.group == 32 && sp.residual == 128);
    cr_assert_eq(kv_spec_parse(&sp, "full+kivi4:4,8", err), 0, "%s", err);
    cr_assert_eq(kv_spec_parse(&sp, "window:8+kivi4", err), -1, "KIVI groups span tokens: no eviction");
    cr_assert_eq(kv_spec_parse(&sp, "full+kivi4:4,6", err), -1, "R must be a multiple of G");
    // groups of 4 tokens, residual 8: whenever 8 tokens wait the oldest 4 are quantized, so 21 tokens leave 4
    // blocks (16 tokens) and 5 in fp32
    KVCache *kv = make_cache("full+kivi4:4,8");
    feed(kv, 21);
    const KVLane *lane = kv_cache_lane(kv, 0, 0);
    cr_assert_eq(lane->n, 21);
    cr_assert_eq(lane->n_res, 5);
    kv_cache_free(kv);
    // reconstruction: fp32 residual exact, quantized part within the 4-bit bound; 2 bits worse than 4
    float e4 = view_error("full+kivi4:4,8", 20), e2 = view_error("full+kivi2:4,8", 20);
    cr_assert_leq(e4, 7.0f / 15 / 2 + 0.05f, "kivi4 %g", e4);
    cr_assert_lt(e4, e2);
    cr_assert_eq(view_error("full+kivi4:4,32", 20), 0.0f, "20 tokens never fill a residual of 32: all fp32");
}

Test(kv, lowrank_full_rank_reproduces_full) {
    Model m;
    tiny_model(&m); // head dim 4
    int tokens[300];
    Rng rng;
    rng_init(&rng, 8);
    for (int i = 0; i < 300; i++) tokens[i] = (int)rng_below(&rng, 9);
    KVSpec sp;
    char err[ERR_LEN];
    KVEvalConfig cfg = {.context = 24, .prefill = 12, .streams = 3, .calib = tokens + 200, .n_calib = 100};
    KVEvalResult full_rank, half_rank, full;
    cr_assert_eq(kv_spec_parse(&sp, "full+lowrank:4", err), 0, "%s", err);
    cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &cfg, &full_rank, err), 0, "%s", err);
    cr_assert_lt(full_rank.kl, 1e-9, "a complete basis rebuilds exactly (KL %g)", full_rank.kl);
    cr_assert_eq(full_rank.top1_agree, 1.0);
    cr_assert_eq(kv_spec_parse(&sp, "full+lowrank:2", err), 0, "%s", err);
    cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &cfg, &half_rank, err), 0, "%s", err);
    cr_assert_gt(half_rank.kl, 1e-6);
    cr_assert_eq(kv_spec_parse(&sp, "full", err), 0, "%s", err);
    cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &cfg, &full, err), 0, "%s", err);
    cr_assert_lt(half_rank.bytes_per_token, full.bytes_per_token);
    kv_eval_result_free(&full_rank);
    kv_eval_result_free(&half_rank);
    kv_eval_result_free(&full);
    // no calibration tokens: a clear error, not a crash
    cr_assert_eq(kv_spec_parse(&sp, "full+lowrank:2", err), 0, "%s", err);
    cfg.n_calib = 5;
    cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &cfg, &half_rank, err), -1);
    cr_assert(strstr(err, "calibration"), "%s", err);
    cr_assert_eq(kv_spec_parse(&sp, "full+lowrank:5", err), 0);
    cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &cfg, &half_rank, err), -1);
    cr_assert(strstr(err, "rank 5 exceeds"), "%s", err);
    model_free(&m);
}

Test(kv, fpkeep_holds_sinks_and_recent_in_fp32) {
    char err[ERR_LEN];
    KVSpec sp;
    cr_assert_eq(kv_spec_parse(&sp, "full+fpkeep:2,4", err), -1, "fpkeep needs an int format");
    KVCache *kv = make_cache("window:12+int2+fpkeep:2,4");
    feed(kv, 30);
    expect_budget(kv, 30);
    const KVLane *lane = kv_cache_lane(kv, 0, 1);
    int fp = 0;
    for (int s = 0; s < lane->n; s++) {
        int want = lane->pos[s] < 2 || lane->pos[s] > 29 - 4;
        cr_assert_eq(lane->fp[s], want, "position %d", lane->pos[s]);
        fp += lane->fp[s];
    }
    cr_assert_eq(fp, 4, "the sinks were evicted by the window; the 4 newest stay fp32");
    // exact where fp32, within the 2-bit bound elsewhere; more bytes than plain int2
    float e_keep = view_error("full+int2+fpkeep:20,0", 20), e_plain = view_error("full+int2", 20);
    cr_assert_eq(e_keep, 0.0f, "all 20 tokens are sinks: nothing quantized");
    cr_assert_gt(e_plain, 0.0f);
    KVCache *a = make_cache("full+int2"), *b = make_cache("full+int2+fpkeep:1,2");
    feed(a, 10);
    feed(b, 10);
    // 3 fp32 slots per lane: each holds 2 * (32 - 6) more bytes (an int2 row of 8 is 4 + 2 bytes); a flag per slot
    cr_assert_eq(kv_cache_bytes(b), kv_cache_bytes(a) + (size_t)L * NKV * (10 + 3 * 2 * (32 - 6)));
    kv_cache_free(a);
    kv_cache_free(b);
    kv_cache_free(kv);
}

Test(kv, minicache_merges_pairs) {
    char err[ERR_LEN];
    KVSpec sp;
    cr_assert_eq(kv_spec_parse(&sp, "window:8+minicache:0", err), -1, "merged slots must line up: full only");
    cr_assert_eq(kv_spec_parse(&sp, "full+int4+minicache:0", err), -1);
    cr_assert_eq(kv_spec_parse(&sp, "full+fp16+minicache:0,30", err), 0, "%s", err);
    // nothing merged (angle 0 merges only identical directions): identical to full, bit for bit
    cr_assert_eq(view_error("full+minicache:0,0", 20), 0.0f);
    // the synthetic stream feeds the same key to both layers: every token merges, the rebuild is exact up
    // to rounding, and the second layer holds no rows
    KVCache *kv = make_cache("full+minicache:0"), *ref = make_cache("full");
    feed(kv, 12);
    feed(ref, 12);
    const KVLane *a = kv_cache_lane(kv, 0, 0), *b = kv_cache_lane(kv, 1, 0);
    for (int s = 0; s < 12; s++) cr_assert(a->merged[s] && b->merged[s], "slot %d", s);
    const float *k1, *v1, *k2, *v2;
    int T1, T2, q1, q2;
    size_t s1, s2;
    kv_cache_view(ref, 1, &k1, &v1, &T1, &q1, &s1);
    kv_cache_view(kv, 1, &k2, &v2, &T2, &q2, &s2);
    for (int g = 0; g < NKV; g++)
        for (int i = 0; i < T1 * HD; i++) {
            float a = k1[g * s1 + i], b = k2[g * s2 + i], c = v1[g * s1 + i], d = v2[g * s2 + i];
            cr_assert_float_eq(a, b, 1e-4f * (1.0f + fabsf(a)));
            cr_assert_float_eq(c, d, 1e-4f * (1.0f + fabsf(c)));
        }
    size_t rows = (size_t)NKV * 12 * 2 * HD * sizeof(float);
    cr_assert_eq(kv_cache_bytes(kv), kv_cache_bytes(ref) - rows + (size_t)L * NKV * 12 * (2 * sizeof(float) + 1));
    kv_cache_free(kv);
    kv_cache_free(ref);
}

Test(kv, minicache_slerp_geometry) {
    float a[2] = {2.0f, 0.0f}, b[2] = {0.0f, 3.0f}, e[2], na, nb;
    cr_assert_eq(minicache_merge(e, &na, &nb, a, b, 2, 0.5f, 1.0f), 0, "90 degrees apart: more than 1 radian");
    cr_assert_eq(minicache_merge(e, &na, &nb, a, b, 2, 0.5f, 2.0f), 1);
    cr_assert_float_eq(e[0], sqrtf(0.5f), 1e-6f);
    cr_assert_float_eq(e[1], sqrtf(0.5f), 1e-6f);
    cr_assert(na == 2.0f && nb == 3.0f);
    cr_assert_eq(minicache_merge(e, &na, &nb, a, b, 2, 0.25f, 2.0f), 1);
    cr_assert_float_eq(atan2f(e[1], e[0]), 3.14159265f / 8, 1e-6f, "a quarter of the way along the arc");
}

Test(kv, rotating_on_entry_equals_rotating_on_view) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, "window:9", err), 0);
    KVShape a_shape = {L, NH, NKV, HD, MAXP, 10000.0f, 0}, b_shape = {L, NH, NKV, HD, MAXP, 10000.0f, 1};
    KVCache *a, *b;
    cr_assert_eq(kv_cache_init(&a, &sp, &a_shape, err), 0);
    cr_assert_eq(kv_cache_init(&b, &sp, &b_shape, err), 0);
    feed(a, 25);
    feed(b, 25);
    const float *ka, *va, *kb, *vb;
    int Ta, Tb, qa, qb;
    size_t sa, sb;
    kv_cache_view(a, 1, &ka, &va, &Ta, &qa, &sa);
    kv_cache_view(b, 1, &kb, &vb, &Tb, &qb, &sb);
    cr_assert(Ta == Tb && qa == qb && sa != sb, "the direct view strides by capacity, the rebuilt one by count");
    for (int g = 0; g < NKV; g++)
        for (int i = 0; i < Ta * HD; i++) {
            cr_assert_eq(ka[g * sa + i], kb[g * sb + i], "bit-identical rotation");
            cr_assert_eq(va[g * sa + i], vb[g * sb + i]);
        }
    kv_cache_free(a);
    kv_cache_free(b);
}
