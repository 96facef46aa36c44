// GPU inference end to end (skipped without a GPU; run on the emulator of tests/cuda_emu/ by ninja test): the
// device KV cache (decode/device_store.h) against the CPU's contiguous cache for every spec it runs, on a small
// random model: greedy generation gives the same tokens with logits within a tolerance, the streaming evaluation
// the same NLL, the caches keep exactly the same positions and report the same bytes, the op table's row
// encoder writes kv/quant.h's bytes, build/bench --device cuda --quick gives its decode rows, and build/infer
// refuses a spec the device cannot run with one line (that check needs no GPU: it runs in build/tests too).
//
// Tolerances. The two sides run the same fp32 arithmetic in different summation orders (cuBLAS or its
// emulation against the CPU's matrix-vector code; the decode kernel's chunks against one pass), which moves a
// logit by a few float ulps of the values summed: about 1e-6 here, so fp32 caches are held to 1e-4. A quantized
// cache encodes keys and values that differ by those ulps, and one of them on a rounding boundary flips its
// code by one level, a change of one quantization step (about (max - min) / 255 for int8, / 15 for int4) in one
// value, damped by the softmax and the output projection: 2e-2 absolute on logits of spread ~3 bounds it with
// a wide margin while a wrong row, position or scale moves logits by ~1. Greedy tokens must be identical: the
// model's logits are spread out (embeddings scaled up) so that the top-2 gap stays above these tolerances.
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../attention/attention_cuda.h"
#include "../common/device.h"
#include "../decode/device_store.h"
#include "../decode/sample.h"
#include "../infer/evalcore.h"
#include "../infer/genstream.h"
#include "../infer/kveval.h"
#include "../kv/quant.h"
#include "backend_util.h"

#define TOL_FP32 1e-4f
#define TOL_QUANT 2e-2f

static ModelConfig config(int n_kv_head) {
    return (ModelConfig){.n_layer = 2, .n_head = 4, .n_kv_head = n_kv_head, .n_embd = 64, .n_hidden = 160,
                         .block_size = 32, .vocab_size = 65, .rope_theta = 10000.0f, .norm_eps = 1e-5f};
}

// A random model on `ops`, the same weights for the same seed; the tied embedding scaled up so that the logits
// spread over a few units (a trained model's, not the near-uniform ones of an initialisation).
static void make_model(Model *m, int n_kv_head, const Ops *ops) {
    ModelConfig mc = config(n_kv_head);
    model_init(m, &mc, &ops_cpu);
    model_init_weights(m, 11);
    for (size_t i = 0; i < (size_t)mc.vocab_size * mc.n_embd; i++) m->params.wte[i] *= 25.0f;
    model_to_backend(m, ops);
}

static const Ops *cuda_or_skip(void) {
    char why[ERR_LEN];
    const Ops *cuda = ops_for_device("cuda", why);
    if (!cuda) cr_skip_test("%s", why);
    return cuda;
}

static int *random_tokens(size_t n, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    int *t = common_calloc(n, sizeof(int));
    for (size_t i = 0; i < n; i++) t[i] = (int)rng_below(&rng, 65);
    return t;
}

static float spec_tol(const KVSpec *spec) { return strcmp(kv_spec_codec_name(spec), "fp32") == 0 ? TOL_FP32 : TOL_QUANT; }

// Greedy generation of 70 tokens after a prompt of n_prompt tokens (past the trained context of 32: the full
// caches are rebuilt there, window and sink stream on), each side fed its own choice.
static void generation_case(const Ops *cuda, const char *text, int n_kv_head, int n_prompt) {
    char err[ERR_LEN];
    KVSpec spec;
    cr_assert_eq(kv_spec_parse(&spec, text, err), 0, "%s", err);
    Model cpu, dev;
    make_model(&cpu, n_kv_head, &ops_cpu);
    make_model(&dev, n_kv_head, cuda);
    enum { NEW = 70 };
    const int PROMPT = n_prompt;
    int *prompt = random_tokens(PROMPT, 5);
    GenStream gc, gd;
    cr_assert_eq(genstream_init(&gc, &cpu, &spec, PROMPT + NEW, NULL, 0, err), 0, "%s", err);
    cr_assert_eq(genstream_init(&gd, &dev, &spec, PROMPT + NEW, NULL, 0, err), 0, "%s", err);
    cr_assert_eq(gc.streams, gd.streams, "%s: the device cache streams differently", text);
    cr_assert_eq(genstream_start(&gc, prompt, PROMPT, err), 0, "%s", err);
    cr_assert_eq(genstream_start(&gd, prompt, PROMPT, err), 0, "%s", err);
    float tol = spec_tol(&spec), worst = 0.0f;
    for (int i = 0; i < NEW; i++) {
        const float *a = genstream_logits(&gc), *b = genstream_logits(&gd);
        for (int v = 0; v < 65; v++) {
            float d = fabsf(a[v] - b[v]);
            cr_assert(d <= tol, "--kv %s NKV %d token %d: logit %d cpu %.7f cuda %.7f (tolerance %g)", text, n_kv_head, i,
                      v, a[v], b[v], tol);
            worst = d > worst ? d : worst;
        }
        int ta = sample_argmax(a, 65), tb = sample_argmax(b, 65);
        cr_assert_eq(ta, tb, "--kv %s NKV %d: greedy token %d is %d on the cpu, %d on cuda", text, n_kv_head, i, ta, tb);
        if (i + 1 < NEW) {
            cr_assert_eq(genstream_feed(&gc, ta, err), 0, "%s", err);
            cr_assert_eq(genstream_feed(&gd, tb, err), 0, "%s", err);
        }
        cr_assert_eq(evalcore_cache_bytes(&gc.cache), evalcore_cache_bytes(&gd.cache), "--kv %s: bytes differ", text);
    }
    cr_log_info("--kv %s NKV %d: largest logit difference %.3g", text, n_kv_head, (double)worst);
    genstream_free(&gc);
    genstream_free(&gd);
    common_free(prompt);
    model_free(&cpu);
    model_free(&dev);
}

static const char *const SPECS[] = {"full", "window:12", "sink:2,window:10", "int8", "int4", "int2:16",
                                    "window:12+int8", "sink:3,window:9+int4", "window:40"};
#define N_SPECS (sizeof(SPECS) / sizeof(SPECS[0]))

Test(cuda_decode, generation_matches_cpu_gqa) {
    const Ops *cuda = cuda_or_skip();
    for (size_t i = 0; i < N_SPECS; i++) generation_case(cuda, SPECS[i], 2, 10);
}

// A prompt of 25 tokens into rings of 6 to 12 rows: the prefill itself wraps the ring (several times for the
// smallest), so the first generated token already attends over overwritten rows.
Test(cuda_decode, generation_matches_cpu_when_the_prompt_wraps_the_window) {
    const Ops *cuda = cuda_or_skip();
    const char *specs[] = {"window:6", "window:12+int8", "sink:2,window:5", "sink:3,window:9+int4"};
    for (int i = 0; i < 4; i++) generation_case(cuda, specs[i], 2, 25);
}

Test(cuda_decode, generation_matches_cpu_mha_and_mqa) {
    const Ops *cuda = cuda_or_skip();
    const char *specs[] = {"full", "window:12+int4", "sink:2,window:10+int8"};
    for (int i = 0; i < 3; i++) {
        generation_case(cuda, specs[i], 4, 10);
        generation_case(cuda, specs[i], 1, 10);
    }
}

// The streaming evaluation (kv_eval_streams, the lockstep full cache on the device too): per-stream NLL within
// the logits' tolerance times the scored tokens, and the same bytes (mean and peak over the scored steps).
Test(cuda_decode, streaming_eval_matches_cpu) {
    const Ops *cuda = cuda_or_skip();
    const char *specs[] = {"full", "window:10+int8", "sink:2,window:12+int4", "window:16"};
    Model cpu, dev;
    make_model(&cpu, 2, &ops_cpu);
    make_model(&dev, 2, cuda);
    int *tokens = random_tokens(500, 9);
    for (int i = 0; i < 4; i++) {
        char err[ERR_LEN];
        KVSpec spec;
        cr_assert_eq(kv_spec_parse(&spec, specs[i], err), 0, "%s", err);
        KVEvalConfig cfg = {.context = 40, .prefill = 12, .streams = 3};
        KVEvalResult rc, rd;
        cr_assert_eq(kv_eval_streams(&cpu, &spec, tokens, 500, &cfg, &rc, err), 0, "%s", err);
        cr_assert_eq(kv_eval_streams(&dev, &spec, tokens, 500, &cfg, &rd, err), 0, "%s", err);
        // a logit moves by at most tol, so a log-probability by at most 2 tol: per token, summed over 28 scored
        double tol = 2.0 * spec_tol(&spec) * (cfg.context - cfg.prefill);
        for (int s = 0; s < cfg.streams; s++) {
            cr_expect(fabs(rc.stream_nll[s] - rd.stream_nll[s]) <= tol, "--kv %s stream %d: nll cpu %.9g cuda %.9g",
                      specs[i], s, rc.stream_nll[s], rd.stream_nll[s]);
            cr_expect(fabs(rc.stream_nll_full[s] - rd.stream_nll_full[s]) <= 2.0 * TOL_FP32 * (cfg.context - cfg.prefill),
                      "--kv %s stream %d: full-cache nll cpu %.9g cuda %.9g", specs[i], s, rc.stream_nll_full[s],
                      rd.stream_nll_full[s]);
        }
        cr_expect(rc.kv_bytes == rd.kv_bytes && rc.kv_bytes_peak == rd.kv_bytes_peak &&
                      rc.kv_bytes_mean == rd.kv_bytes_mean,
                  "--kv %s: bytes cpu %zu/%zu/%.1f cuda %zu/%zu/%.1f", specs[i], rc.kv_bytes, rc.kv_bytes_peak,
                  rc.kv_bytes_mean, rd.kv_bytes, rd.kv_bytes_peak, rd.kv_bytes_mean);
        cr_expect(rd.ppl > 1.0 && isfinite(rd.ppl), "--kv %s: ppl %g", specs[i], rd.ppl);
        kv_eval_result_free(&rc);
        kv_eval_result_free(&rd);
    }
    common_free(tokens);
    model_free(&cpu);
    model_free(&dev);
}

// Token by token through 60 positions, a prompt in chunks first: after every step each layer holds exactly the
// positions the CPU cache holds (window: the newest W; sink: the first S and the newest W) and the same bytes.
Test(cuda_decode, eviction_keeps_cpu_positions) {
    const Ops *cuda = cuda_or_skip();
    const char *specs[] = {"full", "window:7", "sink:3,window:5+int4", "window:1", "sink:1,window:1+int8", "window:100"};
    Model cpu, dev;
    make_model(&cpu, 2, &ops_cpu);
    make_model(&dev, 2, cuda);
    int *tokens = random_tokens(60, 3);
    for (int i = 0; i < 6; i++) {
        char err[ERR_LEN];
        KVSpec spec;
        cr_assert_eq(kv_spec_parse(&spec, specs[i], err), 0, "%s", err);
        EvalCache cc, dc;
        cr_assert_eq(evalcore_cache_init(&cc, &cpu, &spec, 60, NULL, 0, err), 0, "%s", err);
        cr_assert_eq(evalcore_cache_init(&dc, &dev, &spec, 60, NULL, 0, err), 0, "%s", err);
        cr_assert(dc.dev && !dc.kv, "a device model gets a device cache");
        cr_assert_eq(decode_device_clamped_budget(dc.dev), kv_cache_clamped_budget(cc.kv), "--kv %s: clamped budget",
                     specs[i]);
        cr_assert_eq(evalcore_cache_prefill(&cc, &cpu, tokens, 9, err), 0, "%s", err);
        cr_assert_eq(evalcore_cache_prefill(&dc, &dev, tokens, 9, err), 0, "%s", err);
        int got[64];
        for (int t = 9; t <= 60; t++) {
            for (int l = 0; l < 2; l++) {
                const KVLane *lane = kv_cache_lane(cc.kv, l, 0);
                int n = decode_device_positions(dc.dev, l, got);
                cr_assert_eq(n, lane->n, "--kv %s after %d tokens, layer %d: %d held on cuda, %d on the cpu", specs[i], t, l,
                             n, lane->n);
                for (int s = 0; s < n; s++)
                    cr_assert_eq(got[s], kv_lane_pos(lane, s), "--kv %s after %d tokens, layer %d, slot %d: position %d "
                                 "on cuda, %d on the cpu", specs[i], t, l, s, got[s], kv_lane_pos(lane, s));
            }
            cr_assert_eq(evalcore_cache_bytes(&cc), evalcore_cache_bytes(&dc), "--kv %s after %d tokens: bytes", specs[i], t);
            cr_assert_eq(evalcore_cache_held(&cc), evalcore_cache_held(&dc));
            if (t == 60) break;
            cr_assert_eq(evalcore_cache_step(&cc, &cpu, tokens[t], t, err), 0, "%s", err);
            cr_assert_eq(evalcore_cache_step(&dc, &dev, tokens[t], t, err), 0, "%s", err);
        }
        // a full cache past its positions refuses the token, as the CPU's does
        if (kv_spec_is_full(&spec)) {
            cr_expect_neq(evalcore_cache_step(&cc, &cpu, 1, 60, err), 0);
            cr_expect_neq(evalcore_cache_step(&dc, &dev, 1, 60, err), 0);
        }
        evalcore_cache_free(&cc);
        evalcore_cache_free(&dc);
    }
    common_free(tokens);
    model_free(&cpu);
    model_free(&dev);
}

// A budget past every stream is clamped on the device as on the CPU, and the device path says so with the CPU
// path's note (evalcore_cache_init, once per run).
Test(cuda_decode, a_budget_past_the_stream_is_noted, .init = cr_redirect_stderr) {
    const Ops *cuda = cuda_or_skip();
    char err[ERR_LEN];
    KVSpec spec;
    cr_assert_eq(kv_spec_parse(&spec, "sink:4,window:96+int8", err), 0, "%s", err);
    Model dev;
    make_model(&dev, 2, cuda);
    EvalCache dc;
    cr_assert_eq(evalcore_cache_init(&dc, &dev, &spec, 60, NULL, 0, err), 0, "%s", err);
    cr_assert(dc.dev && decode_device_clamped_budget(dc.dev) == 100 && decode_device_budget(dc.dev) == 60);
    evalcore_cache_free(&dc);
    model_free(&dev);
    fflush(stderr);
    static char text[4096];
    FILE *f = cr_get_redirected_stderr();
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    cr_expect(strstr(text, "infer: note: --kv 'sink:4,window:96+int8' keeps up to 100 tokens per layer and head; a "
                           "stream here holds at most 60, so that is its budget\n"),
              "stderr:\n%s", text);
}

// A head group whose decode needs more shared memory than the kernel takes is refused at init with one line
// (attention_decode_fits), not aborted in the kernel's launcher; the largest group that fits is taken.
Test(cuda_decode, init_refuses_groups_past_shared_memory) {
    const Ops *cuda = cuda_or_skip();
    char err[ERR_LEN];
    KVSpec spec;
    cr_assert_eq(kv_spec_parse(&spec, "window:8+int4", err), 0, "%s", err);
    int R = 1;
    while (attention_decode_fits(R + 1, 128)) R++;
    KVShape shape = {.n_layer = 1, .n_head = R + 1, .n_kv_head = 1, .head_dim = 128, .max_positions = 16,
                     .rope_theta = 10000.0f};
    DecodeDevice d;
    err[0] = 0;
    cr_assert_eq(decode_device_init(&d, cuda, &spec, &shape, err), -1);
    char want[128];
    snprintf(want, sizeof want, "%d query heads per kv head of dimension 128 do not run on cuda", R + 1);
    cr_expect(strstr(err, want) && strstr(err, "use --device cpu") && !strchr(err, '\n'), "%s", err);
    shape.n_head = R;
    cr_assert_eq(decode_device_init(&d, cuda, &spec, &shape, err), 0, "%s", err);
    decode_device_free(&d);
}

// The op table's kv_encode_rows (what the device store calls) writes quant_encode_row's bytes, strided per head.
Test(cuda_decode, op_table_encoder_byte_exact) {
    const Ops *cuda = cuda_or_skip();
    cr_assert(cuda->kv_encode_rows && cuda->attention_decode_kv && !ops_cpu.kv_encode_rows && !ops_cpu.attention_decode_kv);
    enum { N = 6, HD = 48 };
    static const int bits[] = {8, 4, 2};
    Rng rng;
    rng_init(&rng, 17);
    float src[N * HD];
    for (int i = 0; i < N * HD; i++) src[i] = 4.0f * rng_normal(&rng);
    for (int b = 0; b < 3; b++) {
        size_t rb = quant_row_bytes(HD, 16, bits[b]), stride = 3 * rb + 1;
        uint8_t ref[N * (3 * 64 + 1)], got[N * (3 * 64 + 1)];
        memset(ref, 0, sizeof ref);
        for (int i = 0; i < N; i++) quant_encode_row(ref + i * stride, src + i * HD, HD, 16, bits[b]);
        uint8_t *d = cuda->mem_alloc(N * stride);
        float *dsrc = cuda->mem_alloc(sizeof src);
        cuda->mem_upload(dsrc, src, sizeof src);
        cuda->kv_encode_rows(d, stride, dsrc, HD, N, HD, 16, bits[b]);
        cuda->mem_download(got, d, N * stride);
        cr_expect(memcmp(got, ref, N * stride) == 0, "int%d rows differ from quant_encode_row", bits[b]);
        cuda->mem_free(d);
        cuda->mem_free(dsrc);
    }
}

// A spec the device cache does not run: one line naming what it takes, non-zero exit, before anything loads (the
// checkpoint named does not even exist), so with or without a GPU.
Test(cuda_decode, cli_refuses_other_specs) {
    static char out[1 << 14];
    const char *cases[] = {"generate --ckpt /nonexistent.ckpt --prompt ab --device cuda --kv h2o:8,4",
                           "kv --ckpt /nonexistent.ckpt --eval /nonexistent.txt --device cuda --kv window:8+fp16",
                           "generate --ckpt /nonexistent.ckpt --prompt ab --device cuda --kv int4+hadamard"};
    for (int i = 0; i < 3; i++) {
        int rc = bk_run_program("infer", cases[i], out, sizeof out);
        cr_expect(rc != 0, "%s: exit 0", cases[i]);
        cr_expect(strstr(out, "does not run on cuda: the device KV cache takes full, window:W and sink:S,window:W with "
                              "fp32, int8[:G], int4[:G] or int2[:G] rows"), "%s:\n%s", cases[i], out);
        cr_expect(strchr(out, '\n') == out + strlen(out) - 1, "%s: more than one line:\n%s", cases[i], out);
    }
}

// build/bench --device cuda --quick's decode rows: fp32, int8 and int4 caches, MHA and GQA, every figure finite
// and positive.
Test(cuda_decode, bench_decode_rows) {
    cuda_or_skip();
    static char out[1 << 16];
    int rc = bk_run_program("bench", "--device cuda --quick --json", out, sizeof out);
    cr_expect_eq(rc, 0, "bench --device cuda --quick exited with %d:\n%s", rc, out);
    int rows = 0, kinds[3] = {0, 0, 0}, gqa = 0;
    char line[2048];
    for (const char *at = out; *at;) {
        const char *nl = strchr(at, '\n');
        size_t n = nl ? (size_t)(nl - at) : strlen(at);
        snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line - 1 ? n : sizeof line - 1), at);
        at += n + (nl != NULL);
        if (!strstr(line, "\"cuda_decode\"")) continue;
        const char *t = strstr(line, "\"tokens_per_s\": "), *b = strstr(line, "\"gb_per_s\": ");
        cr_assert(t && b, "%s", line);
        cr_expect(atof(t + 16) > 0 && atof(b + 12) > 0, "%s", line);
        kinds[0] += strstr(line, "\"kv\": \"fp32\"") != NULL;
        kinds[1] += strstr(line, "\"kv\": \"int8\"") != NULL;
        kinds[2] += strstr(line, "\"kv\": \"int4\"") != NULL;
        gqa += strstr(line, "\"attention\": \"gqa\"") != NULL;
        rows++;
    }
    cr_expect(rows >= 6 && kinds[0] && kinds[1] && kinds[2] && gqa && gqa < rows,
              "decode rows %d (fp32 %d, int8 %d, int4 %d, gqa %d):\n%s", rows, kinds[0], kinds[1], kinds[2], gqa, out);
}
