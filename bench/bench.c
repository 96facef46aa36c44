// build/bench: training speed (ms per optimizer step, tokens/s) of each preset, and decode speed, on this
// machine. Median of several timed steps after warm-up. Speed lives here and in BENCHMARKS.md, never in
// timed tests.
//
// build/bench --attention: naive against flash causal attention as T grows (attention.c). --json prints one JSON
// object per line instead of the tables.
//
// build/bench --busy: every training/decode row again beside a process spinning on one core (busy.c), with the
// ratio. build/bench --large: prefill and decode at the shape of a 135M-parameter model (large.c).
// build/bench --decode-batch: decode throughput of B sequences stepped at once for MHA, GQA and MQA, and the
// largest batch a KV budget holds (batch.c).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../attention/flash_cpu.h"
#include "../common/args.h"
#include "../common/runtime.h"
#include "../layers/cpu_ops.h"
#include "../decode/step.h"
#include "../train/presets.h"
#include "batch.h"
#include "bench.h"
#include "fragment.h"

static const int DEFAULT_TS[] = {128, 256, 512, 1024, 2048, 4096};
static const int DEFAULT_BATCHES[] = {1, 8, 32}, DEFAULT_CONTEXTS[] = {256, 1024, 4096},
                 DEFAULT_KV_HEADS[] = {8, 4, 2, 1};

static void usage(FILE *f) {
    fprintf(f,
            "usage: build/bench [--quick] [--json] [--busy]\n"
            "       build/bench --large [--large-contexts LIST] [--json] [--busy]\n"
            "       build/bench --decode-batch [--json] [--decode-batches LIST] [--decode-contexts LIST]\n"
            "                   [--decode-kv-heads LIST] [--decode-runs R] [--decode-budget-mb M]\n"
            "       build/bench --fragmentation [--json] [--frag-*]   (paged vs contiguous KV under one budget;\n"
            "                   its flags: build/bench --fragmentation --help)\n"
            "       build/bench --blas     (the BLAS kernels, CPU features and OpenMP wait policy in use)\n"
            "       build/bench --device cuda [--json] [--quick] [--peak-tflops X]\n"
            "       build/bench --attention [--json] [--attention-t LIST] [--attention-m M] [--attention-d D]\n"
            "                   [--attention-batch B] [--attention-heads NH] [--attention-kv-heads NKV]\n"
            "                   [--attention-runs R]\n"
            "  --quick               skip the shakespeare preset (training and decode benchmarks)\n"
            "  --json                one JSON object per line instead of the human tables\n"
            "  --busy                each row again beside a process spinning on the last CPU, with busy/quiet\n"
            "  --large               prefill and decode at the 135M shape (width 576, 30 layers, 9/3 heads, hidden\n"
            "                        1536, vocabulary 49152, random weights): minutes, and ~1 GiB per 8k context\n"
            "  --large-contexts LIST context lengths for --large, 33..8192 (32 tokens are decoded after a prompt of\n"
            "                        the rest; default 2048)\n"
            "  --decode-batch        decode throughput as the batch grows, MHA against GQA and MQA: the baby preset with\n"
            "                        8 query heads of 16 (4 layers, width 128, vocabulary 65, random weights) and 8, 4,\n"
            "                        2 or 1 kv heads; B sequences, each with its own full fp32 cache filled to T-16\n"
            "                        tokens of one prompt (not timed), then 16 decode steps of all B at once (one\n"
            "                        forward of B rows a step), timed: tokens/s (min, median, max of R runs after a\n"
            "                        warm-up), ms per step, KV bytes per sequence and in all; then the largest batch\n"
            "                        a KV budget holds (at most %d sequences) and its tokens/s\n"
            "  --decode-batches LIST batch sizes, 1..1024 (default 1,8,32)\n"
            "  --decode-contexts LIST context lengths T, %d..16384 (default 256,1024,4096)\n"
            "  --decode-kv-heads LIST kv heads, each dividing 8 (default 8,4,2,1: MHA, GQA, GQA, MQA)\n"
            "  --decode-runs R       timed runs per point after one warm-up (default 3)\n"
            "  --decode-budget-mb M  the KV budget in MiB for the largest batch, 1..4096 (default 64)\n"
            "                        (a batch x context whose caches would hold over 4 GiB is refused)\n"
            "  --attention           naive vs flash causal attention as T grows (instead of training/decode)\n"
            "  --attention-t LIST    comma-separated sequence lengths (default 128,256,512,1024,2048,4096)\n"
            "  --attention-m M       flash's on-chip budget in floats (default %d = 64 KiB: tiles Bc = ceil(M/4d),\n"
            "                        Br = min(Bc, d), as in FlashAttention's Algorithm 1)\n"
            "  --attention-d D       head dimension (default 64)\n"
            "  --attention-batch B, --attention-heads NH, --attention-kv-heads NKV   (default 1, 1, NH)\n"
            "  --attention-runs R    timed runs per point after one warm-up; the best is reported (default 3)\n"
            "  --device cuda         on the GPU, through the training op table: train steps (median of 5 after 2\n"
            "                        warm-ups) at the shakespeare preset and GPT-2 small's shape (12 layers, 12 heads\n"
            "                        of 64, context 1024, batch 8), in fp32 with naive and flash attention and with\n"
            "                        flash in tf32 and bf16: tokens/s, TFLOP/s (PaLM's 6N + 12LCT per token) and MFU\n"
            "                        against the dense peak of the row's precision; then attention forward and\n"
            "                        backward alone, naive vs flash, B=4 NH=12 HD=64, T 1k-8k; then decode through the\n"
            "                        device KV cache at GPT-2 small's shape, MHA and GQA, fp32/int8/int4 rows,\n"
            "                        contexts 1k-32k: ms per token, tokens/s and the bandwidth achieved.\n"
            "                        With --quick: the tiny preset, T=64, decode at contexts 64 and 130 (checks the\n"
            "                        plumbing, e.g. under the CUDA emulator)\n"
            "  --peak-tflops X       the GPU's fp32 peak for MFU (default from the device's name: H100/H200 SXM fp32\n"
            "                        66.9, tf32 494.7, bf16 989.4; A100 19.5, 156, 312; else none)\n",
            BATCH_MAX_CAP, BATCH_DECODE_STEPS + 1, FLASH_DEFAULT_M);
}

// Writes s as a JSON string literal (quotes, backslashes and control characters escaped).
void bench_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void describe_machine(int json) {
    char model[256] = "unknown CPU", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "model name", 10) == 0) {
            char *colon = strchr(line, ':');
            if (colon) snprintf(model, sizeof(model), "%s", colon + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
    if (json) {
        printf("{\"bench\": \"machine\", \"cpu\": ");
        bench_json_string(model);
        printf(", \"omp_threads\": %d, \"blas\": ", omp_get_max_threads());
        bench_json_string(common_blas_kernels());
        printf(", \"omp_wait_policy\": ");
        bench_json_string(common_runtime_wait_policy());
        printf("}\n");
    } else {
        printf("machine: %s, %d OpenMP threads (wait policy %s), %s\n", model, omp_get_max_threads(),
               common_runtime_wait_policy(), common_blas_kernels());
    }
}

// bench --blas: what the runtime start-up chose (common/runtime.h), for people and for tests/test_runtime.c.
static void describe_runtime(void) {
    __builtin_cpu_init();
    printf("blas: %s\n", common_blas_kernels());
    printf("cpu: avx512f %d, avx2 %d, fma %d\n", __builtin_cpu_supports("avx512f") != 0,
           __builtin_cpu_supports("avx2") != 0, __builtin_cpu_supports("fma") != 0);
    printf("omp_wait_policy: %s\n", common_runtime_wait_policy());
    printf("reexecuted: %d\n", common_runtime_reexecuted());
}

// --- training and decode -----------------------------------------------------------------------------------

// A preset's model with the given attention, randomly initialised (speed does not depend on the values).
static void bench_model_init(Model *m, const char *preset_name, const char *attn, int vocab) {
    ModelConfig mc = preset_find(preset_name)->model;
    char err[ERR_LEN];
    int kv_spec;
    CHECK(attn_parse(attn, &kv_spec, err) == 0 && attn_resolve(kv_spec, mc.n_head, &mc.n_kv_head, err) == 0);
    mc.vocab_size = vocab;
    mc.n_hidden = model_default_hidden(mc.n_embd);
    model_init(m, &mc, &ops_cpu);
    model_init_weights(m, 1);
}

typedef struct {
    const char *preset, *attn;
    const Corpus *corpus;
    int vocab, runs, json;
} RowSpec;

// One training row: the median step time of r->runs steps after two warm-up steps; returns tokens/s.
static double bench_train(void *ctx, const char *load) {
    const RowSpec *r = ctx;
    const char *preset_name = r->preset, *attn = r->attn;
    const Corpus *c = r->corpus;
    int vocab = r->vocab, steps = r->runs, json = r->json;
    TrainConfig tc = preset_find(preset_name)->train;
    Model m;
    bench_model_init(&m, preset_name, attn, vocab);
    model_alloc_acts(&m, tc.batch_size, tc.seq_len);
    TrainState st;
    train_state_init(&st, m.n_params, 1);
    int *in = common_calloc((size_t)tc.batch_size * tc.seq_len, sizeof(int));
    int *tg = common_calloc((size_t)tc.batch_size * tc.seq_len, sizeof(int));
    double times[32];
    float norm;
    for (int i = 0; i < 2; i++) train_step(&m, &st, &tc, c, in, tg, &norm); // warm-up
    for (int i = 0; i < steps; i++) {
        double t0 = common_now();
        train_step(&m, &st, &tc, c, in, tg, &norm);
        times[i] = common_now() - t0;
    }
    qsort(times, steps, sizeof(double), bench_cmp_double);
    double med = times[steps / 2];
    if (json)
        printf("{\"bench\": \"train\", \"preset\": \"%s\", \"attn\": \"%s\", \"params\": %zu, \"B\": %d, \"T\": %d, "
               "\"ms_per_step\": %.3f, \"tokens_per_s\": %.1f, \"runs\": %d, \"load\": \"%s\"}\n",
               preset_name, attn, m.n_params, tc.batch_size, tc.seq_len, med * 1e3,
               tc.batch_size * tc.seq_len / med, steps, load ? load : "quiet");
    else
        printf("train  %-12s %-6s %6.2fM params  B=%-3d T=%-4d  %8.1f ms/step  %9.0f tokens/s  (median of %d)%s%s\n",
               preset_name, attn, m.n_params / 1e6, tc.batch_size, tc.seq_len, med * 1e3,
               tc.batch_size * tc.seq_len / med, steps, load ? "  " : "", load ? load : "");
    fflush(stdout);
    common_free(in);
    common_free(tg);
    train_state_free(&st);
    model_free(&m);
    return tc.batch_size * tc.seq_len / med;
}

// One decode row: 1 token at a time from an empty full cache to the context, median of r->runs; tokens/s.
static double bench_decode(void *ctx, const char *load) {
    const RowSpec *r = ctx;
    const char *preset_name = r->preset, *attn = r->attn;
    int vocab = r->vocab, runs = r->runs, json = r->json;
    Model m;
    bench_model_init(&m, preset_name, attn, vocab);
    const ModelConfig mc = m.cfg;
    KVCache *kv;
    char err[ERR_LEN];
    KVShape shape = decode_kv_shape(&mc, mc.block_size);
    CHECK(kv_full_init(&kv, &shape, err) == 0);
    DecodeState ds;
    decode_state_init(&ds, &mc, 1, mc.block_size);
    double times[32];
    for (int r = 0; r < runs + 1; r++) { // the first run warms up
        kv_cache_reset(kv);
        double t0 = common_now();
        for (int t = 0; t < mc.block_size; t++) model_decode_step(&m, &ds, kv, t % vocab, t);
        if (r > 0) times[r - 1] = common_now() - t0;
    }
    qsort(times, runs, sizeof(double), bench_cmp_double);
    double med = times[runs / 2];
    if (json)
        printf("{\"bench\": \"decode\", \"preset\": \"%s\", \"attn\": \"%s\", \"params\": %zu, \"tokens\": %d, "
               "\"tokens_per_s\": %.1f, \"kv_bytes\": %zu, \"runs\": %d, \"load\": \"%s\"}\n",
               preset_name, attn, m.n_params, mc.block_size, mc.block_size / med, kv_cache_bytes(kv), runs,
               load ? load : "quiet");
    else
        printf("decode %-12s %-6s %6.2fM params  %d tokens from empty cache  %9.0f tokens/s  KV %zu bytes  (median of %d)%s%s\n",
               preset_name, attn, m.n_params / 1e6, mc.block_size, mc.block_size / med, kv_cache_bytes(kv), runs,
               load ? "  " : "", load ? load : "");
    fflush(stdout);
    decode_state_free(&ds);
    kv_cache_free(kv);
    model_free(&m);
    return mc.block_size / med;
}

static int bench_train_decode(const BenchOpts *o) {
    char err[ERR_LEN];
    Corpus c;
    Tokenizer tok;
    if (corpus_load(&c, &tok, "data/tinyshakespeare.txt", 1, NULL, err) != 0) {
        fprintf(stderr, "bench: %s (run from the repository root)\n", err);
        return 1;
    }
    const RowSpec train_rows[] = {{"baby", "mha", &c, tok.vocab_size, 15, o->json},
                                  {"small", "mha", &c, tok.vocab_size, 9, o->json},
                                  {"small", "gqa:8", &c, tok.vocab_size, 9, o->json},
                                  {"small", "mqa", &c, tok.vocab_size, 9, o->json},
                                  {"shakespeare", "mha", &c, tok.vocab_size, 3, o->json}};
    const RowSpec decode_rows[] = {{"baby", "mha", NULL, tok.vocab_size, 9, o->json},
                                   {"small", "mha", NULL, tok.vocab_size, 9, o->json},
                                   {"small", "mqa", NULL, tok.vocab_size, 9, o->json},
                                   {"shakespeare", "mha", NULL, tok.vocab_size, 5, o->json}};
    double busy;
    for (size_t i = 0; i < sizeof train_rows / sizeof train_rows[0]; i++)
        if (!o->quick || strcmp(train_rows[i].preset, "shakespeare") != 0)
            bench_quiet_busy(o, bench_train, (void *)&train_rows[i], &busy);
    for (size_t i = 0; i < sizeof decode_rows / sizeof decode_rows[0]; i++)
        if (!o->quick || strcmp(decode_rows[i].preset, "shakespeare") != 0)
            bench_quiet_busy(o, bench_decode, (void *)&decode_rows[i], &busy);
    corpus_free(&c);
    return 0;
}

void bench_fmt_bytes(char *buf, size_t n, double bytes) {
    if (bytes >= 1024.0 * 1024 * 1024) snprintf(buf, n, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
    else if (bytes >= 1024.0 * 1024) snprintf(buf, n, "%.2f MiB", bytes / (1024.0 * 1024));
    else if (bytes >= 1024.0) snprintf(buf, n, "%.1f KiB", bytes / 1024.0);
    else snprintf(buf, n, "%.0f B", bytes);
}

static int parse_int_list(const char *flag, const char *what, const char *s, int lo, int hi, int *dst, int *n,
                          int max, char *err) {
    *n = 0;
    const char *p = s;
    while (1) {
        char *end;
        long t = strtol(p, &end, 10);
        if (end == p || (*end != ',' && *end != 0) || t < lo || t > hi) {
            err_set(err, "%s expects comma-separated %s in %d..%d, got '%s'", flag, what, lo, hi, s);
            return -1;
        }
        if (*n == max) {
            err_set(err, "%s takes at most %d %s", flag, max, what);
            return -1;
        }
        dst[(*n)++] = (int)t;
        if (*end == 0) return 0;
        p = end + 1;
    }
}

static int parse_t_list(const char *flag, const char *s, int min_t, int max_t, BenchOpts *o, char *err) {
    return parse_int_list(flag, "lengths", s, min_t, max_t, o->ts, &o->n_ts, MAX_TS, err);
}

// Reads the current --decode-* flag (not --decode-batch itself) into o; returns 0, -1 (message in err), or 1
// when it is no such flag.
static int parse_decode_flag(Args *a, BenchOpts *o, char *err) {
    struct {
        const char *name, *what;
        int lo, hi, *dst, *n;
    } lists[] = {{"--decode-batches", "batch sizes", 1, 1024, o->batches, &o->n_batches},
                 {"--decode-contexts", "lengths", BATCH_DECODE_STEPS + 1, 16384, o->contexts, &o->n_contexts},
                 {"--decode-kv-heads", "kv-head counts", 1, BATCH_HEADS, o->kv_heads, &o->n_kv_heads}};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        if (args_is(a, lists[i].name)) {
            const char *v;
            if (args_string(a, &v) != 0) return err_set(err, "%s", a->err), -1;
            return parse_int_list(lists[i].name, lists[i].what, v, lists[i].lo, lists[i].hi, lists[i].dst,
                                  lists[i].n, MAX_LIST, err);
        }
    if (args_is(a, "--decode-runs"))
        return args_int(a, 1, 100, &o->decode_runs) != 0 ? (err_set(err, "%s", a->err), -1) : 0;
    if (args_is(a, "--decode-budget-mb"))
        return args_int(a, 1, 4096, &o->budget_mb) != 0 ? (err_set(err, "%s", a->err), -1) : 0;
    return 1;
}

// --decode-batch's lists against the model and the memory cap; 0, or -1 with one line in err.
static int check_decode_batch(const BenchOpts *o, char *err) {
    int max_B = 0, max_T = 0;
    for (int i = 0; i < o->n_kv_heads; i++)
        if (BATCH_HEADS % o->kv_heads[i] != 0)
            return err_set(err, "--decode-kv-heads %d must divide the model's %d query heads (1, 2, 4 or 8)",
                           o->kv_heads[i], BATCH_HEADS), -1;
    for (int i = 0; i < o->n_batches; i++) max_B = o->batches[i] > max_B ? o->batches[i] : max_B;
    for (int i = 0; i < o->n_contexts; i++) max_T = o->contexts[i] > max_T ? o->contexts[i] : max_T;
    for (int i = 0; i < o->n_kv_heads; i++) { // refuse before any cache is allocated
        ModelConfig mc = batch_model_config(o->kv_heads[i], max_T);
        double bytes = (double)max_B * batch_kv_bytes_per_seq(&mc, max_T);
        if (bytes > BENCH_DECODE_MAX_BYTES)
            return err_set(err, "batch %d at context %d with %d kv heads holds %.1f GiB of fp32 KV cache (limit "
                                "%.0f GiB): shorten --decode-batches or --decode-contexts",
                           max_B, max_T, o->kv_heads[i], bytes / (1024.0 * 1024 * 1024),
                           BENCH_DECODE_MAX_BYTES / (1024.0 * 1024 * 1024)), -1;
    }
    return 0;
}

// Reads the current --attention-* flag into o; returns 0, -1 (message in err), or 1 when it is no such flag.
static int parse_attention_flag(Args *a, BenchOpts *o, char *err) {
    struct {
        const char *name;
        int *dst, lo, hi;
    } ints[] = {{"--attention-m", &o->M, 1, 1 << 26},        {"--attention-d", &o->d, 1, 4096},
                {"--attention-batch", &o->B, 1, 1024},       {"--attention-heads", &o->NH, 1, 1024},
                {"--attention-kv-heads", &o->NKV, 1, 1024}, {"--attention-runs", &o->runs, 1, 100}};
    if (args_is(a, "--attention-t")) {
        const char *v;
        if (args_string(a, &v) != 0) return err_set(err, "%s", a->err), -1;
        return parse_t_list("--attention-t", v, 1, 65536, o, err);
    }
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (args_is(a, ints[i].name)) {
            if (args_int(a, ints[i].lo, ints[i].hi, ints[i].dst) != 0) return err_set(err, "%s", a->err), -1;
            return 0;
        }
    return 1;
}

// The whole command line into o; returns 0, 2 for --help, or -1 with one line in err.
static int parse_flags(int argc, char **argv, BenchOpts *o, char *err) {
    static char first_attention_flag[128];
    static char first_decode_flag[128];
    *o = (BenchOpts){.M = FLASH_DEFAULT_M, .d = 64, .B = 1, .NH = 1, .NKV = 0, .runs = 3, .decode_runs = 3,
                     .budget_mb = 64};
    memcpy(o->ts, DEFAULT_TS, sizeof(DEFAULT_TS));
    o->n_ts = (int)(sizeof(DEFAULT_TS) / sizeof(DEFAULT_TS[0]));
    memcpy(o->batches, DEFAULT_BATCHES, sizeof(DEFAULT_BATCHES));
    o->n_batches = (int)(sizeof(DEFAULT_BATCHES) / sizeof(DEFAULT_BATCHES[0]));
    memcpy(o->contexts, DEFAULT_CONTEXTS, sizeof(DEFAULT_CONTEXTS));
    o->n_contexts = (int)(sizeof(DEFAULT_CONTEXTS) / sizeof(DEFAULT_CONTEXTS[0]));
    memcpy(o->kv_heads, DEFAULT_KV_HEADS, sizeof(DEFAULT_KV_HEADS));
    o->n_kv_heads = (int)(sizeof(DEFAULT_KV_HEADS) / sizeof(DEFAULT_KV_HEADS[0]));
    const char *decode_flag = NULL; // the first --decode-* option given (an error without --decode-batch)
    Args a;
    args_init(&a, argc, argv);
    int r, large_contexts = 0;
    while ((r = args_next(&a)) != 0) {
        if (r < 0) return err_set(err, "%s", a.err), -1;
        if (args_is(&a, "--help") || args_is(&a, "-h")) return 2;
        if (args_is(&a, "--blas")) return 3;
        struct {
            const char *name;
            int *dst;
        } bools[] = {{"--quick", &o->quick}, {"--json", &o->json}, {"--attention", &o->attention},
                     {"--busy", &o->busy}, {"--large", &o->large}, {"--decode-batch", &o->decode_batch}};
        int matched = 0;
        for (size_t i = 0; i < sizeof bools / sizeof bools[0] && !matched; i++)
            if (args_is(&a, bools[i].name)) {
                if (a.value) return err_set(err, "%s takes no value", a.flag), -1;
                *bools[i].dst = matched = 1;
            }
        if (matched) continue;
        if (args_is(&a, "--device")) {
            if (args_string(&a, &o->device) != 0) return err_set(err, "%s", a.err), -1;
            if (strcmp(o->device, "cuda") != 0 && strcmp(o->device, "cpu") != 0)
                return err_set(err, "bad --device '%s': valid values are cpu, cuda", o->device), -1;
            continue;
        }
        if (args_is(&a, "--peak-tflops")) {
            float v;
            if (args_float(&a, 1e-3f, 1e6f, &v) != 0) return err_set(err, "%s", a.err), -1;
            o->peak_tflops = v;
            continue;
        }
        if (args_is(&a, "--large-contexts")) {
            const char *v;
            if (args_string(&a, &v) != 0) return err_set(err, "%s", a.err), -1;
            if (parse_t_list("--large-contexts", v, BENCH_LARGE_DECODE_TOKENS + 1, 8192, o, err) != 0) return -1;
            large_contexts = 1;
            continue;
        }
        int k = parse_decode_flag(&a, o, err);
        if (k < 0) return -1;
        if (k == 0) {
            if (!decode_flag) { // a.flag is overwritten by the next flag: keep a copy of the name
                snprintf(first_decode_flag, sizeof(first_decode_flag), "%s", a.flag);
                decode_flag = first_decode_flag;
            }
            continue;
        }
        k = parse_attention_flag(&a, o, err);
        if (k < 0) return -1;
        if (k > 0) return err_set(err, "unknown flag '%s' (see --help)", a.flag), -1;
        if (!o->attention_flag) { // a.flag is overwritten by the next flag: keep a copy of the name
            snprintf(first_attention_flag, sizeof(first_attention_flag), "%s", a.flag);
            o->attention_flag = first_attention_flag;
        }
    }
    if (o->attention_flag && !o->attention) return err_set(err, "%s needs --attention", o->attention_flag), -1;
    if (o->device && strcmp(o->device, "cpu") == 0) o->device = NULL; // the CPU rows, as without the flag
    if (o->peak_tflops > 0 && !o->device) return err_set(err, "--peak-tflops needs --device cuda"), -1;
    if (o->device) {
        if (o->large || o->attention || o->decode_batch || o->busy || large_contexts || decode_flag)
            return err_set(err, "--device cuda runs on its own (with --json, --quick, --peak-tflops)"), -1;
        return 0;
    }
    if (large_contexts && !o->large) return err_set(err, "--large-contexts needs --large"), -1;
    if (decode_flag && !o->decode_batch) return err_set(err, "%s needs --decode-batch", decode_flag), -1;
    if (o->decode_batch) {
        if (o->large || o->attention || o->quick || o->busy)
            return err_set(err, "--decode-batch runs on its own (not with --large, --attention, --quick or --busy)"),
                   -1;
        return check_decode_batch(o, err);
    }
    if (o->large && (o->attention || o->quick))
        return err_set(err, "--large runs on its own (not with --attention or --quick)"), -1;
    if (o->busy && o->attention) return err_set(err, "--busy applies to the training/decode rows and --large"), -1;
    if (o->large) {
        if (!large_contexts) o->ts[0] = 2048, o->n_ts = 1;
        return 0;
    }
    if (o->quick && o->attention)
        return err_set(err, "--quick applies to the training/decode benchmarks, not --attention "
                            "(shorten the run with --attention-t)"), -1;
    if (o->NKV == 0) o->NKV = o->NH;
    if (o->NH % o->NKV != 0)
        return err_set(err, "--attention-kv-heads %d must divide --attention-heads %d", o->NKV, o->NH), -1;
    for (int i = 0; i < o->n_ts; i++) { // naive needs (B, NH, T, T) floats: refuse before allocating them
        double bytes = 4.0 * o->B * o->NH * (double)o->ts[i] * o->ts[i];
        if (bytes > 4.0 * 1024 * 1024 * 1024)
            return err_set(err, "T=%d needs a %.1f GiB (B, NH, T, T) buffer for the naive attention (limit 4 GiB)",
                           o->ts[i], bytes / (1024.0 * 1024 * 1024)), -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    common_runtime_init(argc, argv);
    for (int i = 1; i < argc; i++) // --fragmentation parses its own flags (fragment.c)
        if (strcmp(argv[i], "--fragmentation") == 0) return bench_fragmentation_main(argc, argv);
    BenchOpts o;
    char err[ERR_LEN];
    int r = parse_flags(argc, argv, &o, err);
    if (r == 2) {
        usage(stdout);
        return 0;
    }
    if (r == 3) {
        describe_runtime();
        return 0;
    }
    if (r != 0) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    if (o.device) { // a device that cannot run is one line, before any header
        if (!ops_for_device(o.device, err)) {
            fprintf(stderr, "bench: %s\n", err);
            return 1;
        }
        describe_machine(o.json);
        return bench_cuda(&o);
    }
    describe_machine(o.json);
    if (o.large) return bench_large(&o);
    if (o.decode_batch) return bench_decode_batch(&o);
    return o.attention ? bench_attention(&o) : bench_train_decode(&o);
}
