// build/bench --device cuda: what a GPU run measures, through the op table and model code that training uses
// (layers/ops_cuda.cu, loaded on demand by common/device.c). Training rows: tokens/s, achieved TFLOP/s and MFU
// at the shakespeare preset and a GPT-2-small-like shape, with naive and with flash attention in fp32, and with
// flash attention in tf32 and bf16 (--precision; MFU against that precision's dense peak); attention rows:
// forward + backward alone, naive against flash, as T grows. --quick swaps in shapes small enough for the
// CUDA emulator of the tests (tests/cuda_emu/), which checks the plumbing, not the speed (bench.h).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../common/device.h"
#include "../data/loader.h"
#include "../layers/model.h"
#include "../layers/ops.h"
#include "../train/presets.h"
#include "bench.h"

// Dense peak rates from the vendors' datasheets, for MFU, one per precision of the training rows: fp32 (non-tensor-
// core FMA), TF32 and BF16 tensor cores, dense (the datasheets' headline tensor figures are with 2:4 sparsity,
// twice these). The first name part found in the device's name wins (the PCIe and NVL H100s before the SXM
// one). A GPU not listed gets no MFU (--peak-tflops gives the fp32 one).
static const struct {
    const char *name_part;
    double tflops[OPS_PRECISION_COUNT]; // fp32, tf32, bf16
} PEAKS[] = {{"H100 PCIe", {51.2, 378.0, 756.0}},
             {"H100 NVL", {60.0, 417.5, 835.0}},
             {"H100", {66.9, 494.7, 989.4}},
             {"H200", {66.9, 494.7, 989.4}},
             {"A100", {19.5, 156.0, 312.0}}};

// PaLM's convention (Chowdhury et al. 2022, appendix B): a training step costs 6 N flops per token for the N
// weights its matrix products use (the tied embedding counted once, as the output projection), plus 12 L C T
// for attention's two products at context T (every position counted, not only the causal half).
static double train_flops_per_token(const ModelConfig *c, int T) {
    double C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, L = c->n_layer, V = c->vocab_size;
    double n = L * (2 * C * C + 2 * C * KVC + 3 * C * H) + V * C;
    return 6.0 * n + 12.0 * L * C * T;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const char *label;
    ModelConfig mc;
    TrainConfig tc;
} CudaShape;

// One training row with the matrix products in `precision`: the median step time of `runs` steps after two
// warm-up steps (train_step waits for the loss, so a step's time includes the GPU's work); MFU against `peak`,
// that precision's.
static int train_row(const Ops *ops, const CudaShape *s, ModelAttention attn, int precision, const Corpus *corpus,
                     int runs, double peak, int json) {
    Model m = {0};
    model_init(&m, &s->mc, &ops_cpu);
    model_init_weights(&m, 1);
    model_to_backend(&m, ops);
    m.attention = attn;
    TrainState st;
    train_state_init(&st, m.n_params, 1);
    train_state_to_backend(&st, m.n_params, ops);
    char err[ERR_LEN];
    if (ops->precision_set(precision, m.params_memory, m.n_params, err) != 0) {
        fprintf(stderr, "bench: %s\n", err);
        train_state_free(&st);
        model_free(&m);
        return -1;
    }
    TrainConfig tc = s->tc;
    model_alloc_acts(&m, tc.batch_size, tc.seq_len);
    size_t BT = (size_t)tc.batch_size * tc.seq_len;
    int *in = common_calloc(BT, sizeof(int)), *tg = common_calloc(BT, sizeof(int));
    double times[16];
    float norm, loss = 0.0f;
    for (int i = 0; i < 2; i++) train_step(&m, &st, &tc, corpus, in, tg, &norm);
    for (int i = 0; i < runs; i++) {
        double t0 = common_now();
        loss = train_step(&m, &st, &tc, corpus, in, tg, &norm);
        times[i] = common_now() - t0;
    }
    qsort(times, runs, sizeof(double), cmp_d);
    double med = times[runs / 2], tps = BT / med, tflops = tps * train_flops_per_token(&m.cfg, tc.seq_len) / 1e12;
    const char *an = attn == MODEL_ATTENTION_FLASH ? "flash" : "naive";
    if (json) {
        printf("{\"bench\": \"cuda_train\", \"shape\": \"%s\", \"attention\": \"%s\", \"precision\": \"%s\", "
               "\"params\": %zu, \"B\": %d, \"T\": %d, \"ms_per_step\": %.3f, \"tokens_per_s\": %.1f, \"tflops\": %.3f, ",
               s->label, an, ops_precision_name(precision), m.n_params, tc.batch_size, tc.seq_len, med * 1e3, tps,
               tflops);
        if (peak > 0) printf("\"mfu\": %.4f, ", tflops / peak);
        else printf("\"mfu\": null, ");
        printf("\"loss\": %.4f, \"runs\": %d}\n", loss, runs);
    } else {
        printf("cuda train  %-12s %-5s %s %7.2fM params  B=%-3d T=%-5d %9.2f ms/step %10.0f tokens/s %7.2f TFLOP/s",
               s->label, an, ops_precision_name(precision), m.n_params / 1e6, tc.batch_size, tc.seq_len, med * 1e3,
               tps, tflops);
        if (peak > 0) printf("  MFU %.1f%%", 100.0 * tflops / peak);
        printf("  (median of %d)\n", runs);
    }
    fflush(stdout);
    int ok = loss == loss; // a NaN loss: the row's numbers mean nothing
    common_free(in), common_free(tg);
    train_state_free(&st);
    model_free(&m);
    if (ops->precision_set(OPS_PRECISION_FP32, NULL, 0, err) != 0) ok = 0;
    return ok ? 0 : -1;
}

// One attention row: forward + backward of B x NH heads of HD at length T (MHA), naive then flash, the median of
// `runs` after one warm-up, timed to device_synchronize.
static void attention_row(const Ops *ops, int B, int T, int NH, int HD, int runs, int json) {
    size_t nq = (size_t)B * T * NH * HD, natt = (size_t)B * NH * T * T, nl = (size_t)B * NH * T;
    float *h = common_calloc(nq, sizeof(float));
    Rng rng;
    rng_init(&rng, 7 + (uint64_t)T);
    float *d[7]; // q, k, v, dout, out, dq, dk (dv reuses dout's size: MHA)
    for (int i = 0; i < 7; i++) {
        d[i] = ops->mem_alloc(nq * sizeof(float));
        for (size_t j = 0; j < nq; j++) h[j] = rng_normal(&rng);
        ops->mem_upload(d[i], h, nq * sizeof(float));
    }
    float *dv = ops->mem_alloc(nq * sizeof(float)), *lse = ops->mem_alloc(nl * sizeof(float));
    for (int flash = 0; flash < 2; flash++) {
        float *att = NULL, *scratch = NULL;
        if (!flash) att = ops->mem_alloc(natt * sizeof(float)), scratch = ops->mem_alloc(natt * sizeof(float));
        double fw[16], bw[16];
        for (int r = 0; r <= runs; r++) {
            double t0 = common_now();
            if (flash) ops->attention_flash_forward(d[4], lse, d[0], d[1], d[2], B, T, NH, NH, HD);
            else ops->attention_forward(d[4], att, d[0], d[1], d[2], B, T, NH, NH, HD);
            device_synchronize();
            double t1 = common_now();
            if (flash) ops->attention_flash_backward(d[5], d[6], dv, d[3], d[4], lse, d[0], d[1], d[2], B, T, NH, NH, HD);
            else ops->attention_backward(d[5], d[6], dv, scratch, d[3], att, d[0], d[1], d[2], B, T, NH, NH, HD);
            device_synchronize();
            if (r > 0) fw[r - 1] = t1 - t0, bw[r - 1] = common_now() - t1;
        }
        qsort(fw, runs, sizeof(double), cmp_d);
        qsort(bw, runs, sizeof(double), cmp_d);
        // causal: half of the 4 B NH T^2 HD flops of the two forward products; backward 2.5x the forward's
        double f_flops = 2.0 * B * NH * (double)T * T * HD, tf = f_flops / fw[runs / 2] / 1e12;
        double tb = 2.5 * f_flops / bw[runs / 2] / 1e12;
        const char *an = flash ? "flash" : "naive";
        if (json)
            printf("{\"bench\": \"cuda_attention\", \"attention\": \"%s\", \"B\": %d, \"T\": %d, \"NH\": %d, \"HD\": %d, "
                   "\"forward_ms\": %.4f, \"backward_ms\": %.4f, \"forward_tflops\": %.3f, \"backward_tflops\": %.3f, "
                   "\"intermediate_bytes\": %zu, \"runs\": %d}\n", an, B, T, NH, HD, fw[runs / 2] * 1e3, bw[runs / 2] * 1e3,
                   tf, tb, (flash ? 2 * nl : 2 * natt) * sizeof(float), runs);
        else
            printf("cuda attention %-5s B=%d T=%-6d NH=%d HD=%d  forward %9.3f ms (%6.2f TFLOP/s)  backward %9.3f ms "
                   "(%6.2f TFLOP/s)  intermediates %.1f MB\n", an, B, T, NH, HD, fw[runs / 2] * 1e3, tf, bw[runs / 2] * 1e3,
                   tb, (flash ? 2 * nl : 2 * natt) * sizeof(float) / 1e6);
        fflush(stdout);
        if (att) ops->mem_free(att), ops->mem_free(scratch);
    }
    for (int i = 0; i < 7; i++) ops->mem_free(d[i]);
    ops->mem_free(dv), ops->mem_free(lse);
    common_free(h);
}

int bench_cuda(const BenchOpts *o) {
    char err[ERR_LEN];
    const Ops *ops = ops_for_device("cuda", err);
    if (!ops) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    Corpus c;
    Tokenizer tok;
    if (corpus_load(&c, &tok, "data/tinyshakespeare.txt", 1, NULL, err) != 0) {
        fprintf(stderr, "bench: %s (run from the repository root)\n", err);
        return 1;
    }
    const char *name = device_cuda_name();
    double peak[OPS_PRECISION_COUNT] = {0}; // 0: unknown
    for (size_t i = 0; i < sizeof PEAKS / sizeof PEAKS[0]; i++)
        if (strstr(name, PEAKS[i].name_part)) {
            memcpy(peak, PEAKS[i].tflops, sizeof peak);
            break;
        }
    if (o->peak_tflops > 0) peak[OPS_PRECISION_FP32] = o->peak_tflops;
    if (o->json) {
        printf("{\"bench\": \"cuda_device\", \"name\": ");
        bench_json_string(name);
        for (int p = 0; p < OPS_PRECISION_COUNT; p++) {
            printf(", \"peak_%s_tflops\": ", ops_precision_name(p));
            if (peak[p] > 0) printf("%.1f", peak[p]);
            else printf("null");
        }
        printf("}\n");
    } else {
        printf("device: %s; MFU against %s\n", name,
               peak[0] > 0 ? "its dense peak in each row's precision" : "nothing (unknown GPU: --peak-tflops X)");
        if (peak[0] > 0)
            printf("peak: %.1f TFLOP/s fp32, %.1f tf32, %.1f bf16 (dense)\n", peak[0], peak[1], peak[2]);
    }
    // the shakespeare preset; GPT-2 small's shape (12 layers, 12 heads of 64, context 1024) on this vocabulary
    CudaShape shapes[2] = {{"shakespeare", preset_find("shakespeare")->model, preset_find("shakespeare")->train},
                           {"gpt2-small", preset_find("shakespeare")->model, preset_find("shakespeare")->train}};
    ModelConfig *g = &shapes[1].mc;
    g->n_layer = 12, g->n_head = g->n_kv_head = 12, g->n_embd = 768, g->block_size = 1024;
    shapes[1].tc.batch_size = 8, shapes[1].tc.seq_len = 1024;
    int n_shapes = 2, runs = 5, ts[] = {1024, 2048, 4096, 8192}, n_ts = 4, aB = 4, aNH = 12, aHD = 64;
    if (o->quick) { // the plumbing on the emulator: the tiny preset and one short attention row
        shapes[0] = (CudaShape){"tiny", preset_find("tiny")->model, preset_find("tiny")->train};
        n_shapes = 1, runs = 1, ts[0] = 64, n_ts = 1, aB = 1, aNH = 2, aHD = 16;
    }
    int rc = 0;
    for (int i = 0; i < n_shapes; i++) {
        shapes[i].mc.vocab_size = tok.vocab_size;
        shapes[i].mc.n_hidden = model_default_hidden(shapes[i].mc.n_embd);
        shapes[i].mc.dropout = 0.0f; // dropout's mask is a separate kernel: timed without it, as llm.c's figures are
        // fp32 with naive and flash attention, then flash in tf32 and bf16
        for (int r = 0; r < 1 + OPS_PRECISION_COUNT; r++) {
            ModelAttention a = r == 0 ? MODEL_ATTENTION_NAIVE : MODEL_ATTENTION_FLASH;
            int p = r == 0 ? OPS_PRECISION_FP32 : r - 1;
            if (train_row(ops, &shapes[i], a, p, &c, runs, peak[p], o->json) != 0) {
                fprintf(stderr, "bench: %s %s: the training loss is not finite\n", shapes[i].label, ops_precision_name(p));
                rc = 1;
            }
        }
    }
    for (int i = 0; i < n_ts; i++) attention_row(ops, aB, ts[i], aNH, aHD, runs, o->json);
    if (bench_cuda_decode(ops, tok.vocab_size, o) != 0) rc = 1;
    corpus_free(&c);
    return rc;
}
