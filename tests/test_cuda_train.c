// End to end on the CUDA backend (skipped without a GPU; run on the emulator of tests/cuda_emu/ by ninja test):
// 10 training steps match the CPU's losses (fp32, dropout on: the counter-based masks agree), with naive and
// with flash attention, and track them in tf32 and bf16 (precision_set); the same run twice is bitwise identical,
// weights written from one backend continue on the other, and build/bench --device cuda --quick gives finite rows
// through the same backend.
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../checkpoints/checkpoint.h"
#include "../common/device.h"
#include "../data/loader.h"
#include "../train/state_io.h"
#include "../train/trainer.h"
#include "backend_util.h"

#define STEPS 10

static const ModelConfig CFG = {.n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 64, .n_hidden = 160,
                                .block_size = 32, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.1f};

static TrainConfig train_config(void) {
    return (TrainConfig){.batch_size = 4, .seq_len = 32, .max_steps = STEPS, .warmup_steps = 2, .lr = 3e-3f,
                         .min_lr = 3e-4f, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .adam_eps = 1e-8f,
                         .grad_clip = 1.0f, .grad_accum = 2, .eval_interval = 0, .eval_windows = 4, .seed = 7};
}

// Trains STEPS steps on `ops` from the same seed with its matrix products in `precision` (ops.h precision_set,
// registered after the move to the backend, as build/train does); losses (STEPS) and the final weights (host)
// come back.
static void run_in(const Ops *ops, int precision, ModelAttention attn, const Corpus *c, int vocab, float *losses,
                   float *weights) {
    TrainConfig tc = train_config();
    ModelConfig mc = CFG;
    mc.vocab_size = vocab;
    Model m;
    model_init(&m, &mc, &ops_cpu);
    model_init_weights(&m, tc.seed);
    TrainState st;
    train_state_init(&st, m.n_params, tc.seed);
    model_to_backend(&m, ops);
    train_state_to_backend(&st, m.n_params, ops);
    char err[ERR_LEN];
    cr_assert_eq(ops->precision_set(precision, m.params_memory, m.n_params, err), 0, "%s", err);
    m.attention = attn;
    model_alloc_acts(&m, tc.batch_size, tc.seq_len);
    int *in = common_calloc((size_t)tc.batch_size * tc.seq_len, sizeof(int));
    int *tg = common_calloc((size_t)tc.batch_size * tc.seq_len, sizeof(int));
    for (int i = 0; i < STEPS; i++) losses[i] = train_step(&m, &st, &tc, c, in, tg, NULL);
    model_params_download(&m, weights);
    common_free(in);
    common_free(tg);
    train_state_free(&st);
    model_free(&m);
    cr_assert_eq(ops->precision_set(OPS_PRECISION_FP32, NULL, 0, err), 0, "%s", err);
}

static void run(const Ops *ops, ModelAttention attn, const Corpus *c, int vocab, float *losses, float *weights) {
    run_in(ops, OPS_PRECISION_FP32, attn, c, vocab, losses, weights);
}

// The corpus the training tests read; returns the parameter count of CFG on its vocabulary.
static size_t load_corpus(Corpus *c, Tokenizer *tok) {
    char err[ERR_LEN];
    cr_assert_eq(corpus_load(c, tok, "data/tinyshakespeare.txt", 1, NULL, err), 0, "%s", err);
    ModelConfig mc = CFG;
    mc.vocab_size = tok->vocab_size;
    return model_param_count(&mc);
}

Test(cuda_train, matches_cpu_and_repeats) {
    char why[ERR_LEN];
    const Ops *cuda = ops_for_device("cuda", why);
    if (!cuda) cr_skip_test("%s", why);
    Corpus c;
    Tokenizer tok;
    size_t n = load_corpus(&c, &tok);
    float cpu[STEPS], gpu[STEPS], gpu2[STEPS];
    float *w_cpu = common_calloc(n, sizeof(float)), *w_gpu = common_calloc(n, sizeof(float));
    float *w_gpu2 = common_calloc(n, sizeof(float));
    run(&ops_cpu, MODEL_ATTENTION_NAIVE, &c, tok.vocab_size, cpu, w_cpu);
    run(cuda, MODEL_ATTENTION_NAIVE, &c, tok.vocab_size, gpu, w_gpu);
    run(cuda, MODEL_ATTENTION_NAIVE, &c, tok.vocab_size, gpu2, w_gpu2);
    for (int i = 0; i < STEPS; i++) {
        cr_expect(fabsf(cpu[i] - gpu[i]) <= 1e-4f, "step %d: cpu %.7f cuda %.7f", i + 1, cpu[i], gpu[i]);
        cr_expect(memcmp(&gpu[i], &gpu2[i], sizeof(float)) == 0, "step %d: two CUDA runs differ", i + 1);
    }
    cr_expect(memcmp(w_gpu, w_gpu2, n * sizeof(float)) == 0, "two CUDA runs end with different weights");
    common_free(w_cpu);
    common_free(w_gpu);
    common_free(w_gpu2);
    corpus_free(&c);
}

// Flash attention on the device (the model's attention_flash_forward/backward entries) against the CPU's
// naive and flash training: the same losses step by step (fp32, 1e-4), and twice the same bits.
Test(cuda_train, flash_matches_cpu) {
    char why[ERR_LEN];
    const Ops *cuda = ops_for_device("cuda", why);
    if (!cuda) cr_skip_test("%s", why);
    Corpus c;
    Tokenizer tok;
    size_t n = load_corpus(&c, &tok);
    float naive[STEPS], flash_cpu[STEPS], gpu[STEPS], gpu2[STEPS];
    float *w[4];
    for (int i = 0; i < 4; i++) w[i] = common_calloc(n, sizeof(float));
    run(&ops_cpu, MODEL_ATTENTION_NAIVE, &c, tok.vocab_size, naive, w[0]);
    run(&ops_cpu, MODEL_ATTENTION_FLASH, &c, tok.vocab_size, flash_cpu, w[1]);
    run(cuda, MODEL_ATTENTION_FLASH, &c, tok.vocab_size, gpu, w[2]);
    run(cuda, MODEL_ATTENTION_FLASH, &c, tok.vocab_size, gpu2, w[3]);
    for (int i = 0; i < STEPS; i++) {
        cr_expect(fabsf(naive[i] - gpu[i]) <= 1e-4f, "step %d: cpu naive %.7f, cuda flash %.7f", i + 1, naive[i], gpu[i]);
        cr_expect(fabsf(flash_cpu[i] - gpu[i]) <= 1e-4f, "step %d: cpu flash %.7f, cuda flash %.7f", i + 1, flash_cpu[i], gpu[i]);
        cr_expect(memcmp(&gpu[i], &gpu2[i], sizeof(float)) == 0, "step %d: two CUDA flash runs differ", i + 1);
    }
    for (int i = 0; i < 4; i++) common_free(w[i]);
    corpus_free(&c);
}

// TF32 and bf16 training on the device tracks the CPU's fp32 losses step by step, and repeats bit for bit.
Test(cuda_train, precisions_track_cpu) {
    char why[ERR_LEN];
    const Ops *cuda = ops_for_device("cuda", why);
    if (!cuda) cr_skip_test("%s", why);
    Corpus c;
    Tokenizer tok;
    size_t n = load_corpus(&c, &tok);
    float cpu[STEPS], gpu[STEPS], gpu2[STEPS];
    float *w = common_calloc(n, sizeof(float)), *w2 = common_calloc(n, sizeof(float));
    run(&ops_cpu, MODEL_ATTENTION_NAIVE, &c, tok.vocab_size, cpu, w);
    for (int mode = OPS_PRECISION_TF32; mode <= OPS_PRECISION_BF16; mode++) {
        run_in(cuda, mode, MODEL_ATTENTION_FLASH, &c, tok.vocab_size, gpu, w);
        run_in(cuda, mode, MODEL_ATTENTION_FLASH, &c, tok.vocab_size, gpu2, w2);
        // The loss (about 4 nats here) is computed from logits whose relative error from the rounded inputs is of
        // the order of the unit roundoff u (tf32 u = 2^-10 allowing for truncation, bf16 2^-8), and ten AdamW steps
        // at this learning rate do not amplify it much: |loss - cpu| <= 4 u (0.0039, 0.0156). On the emulator the
        // differences are about 2e-4 in both; a shadow left stale by the optimizer misses by the training's progress
        // (tenths of a nat).
        float tol = 4.0f * (mode == OPS_PRECISION_BF16 ? 1.0f / 256 : 1.0f / 1024), worst = 0.0f;
        for (int i = 0; i < STEPS; i++) {
            float d = fabsf(cpu[i] - gpu[i]);
            worst = d > worst ? d : worst;
            cr_expect(d <= tol, "%s step %d: cpu fp32 %.7f, cuda %.7f (tolerance %g)", ops_precision_name(mode), i + 1,
                      cpu[i], gpu[i], (double)tol);
            cr_expect(memcmp(&gpu[i], &gpu2[i], sizeof(float)) == 0, "%s step %d: two runs differ",
                      ops_precision_name(mode), i + 1);
        }
        fprintf(stderr, "cuda_train %s: largest loss difference from cpu fp32 over %d steps: %.3g\n",
                ops_precision_name(mode), STEPS, (double)worst);
    }
    common_free(w);
    common_free(w2);
    corpus_free(&c);
}

// The CUDA flash kernels take head dimensions up to 128: past that, training on the device falls back to naive
// attention by default and refuses an explicit --attention flash with one line (it aborted before).
Test(cuda_train, flash_head_dim_limit) {
    char why[ERR_LEN];
    if (!ops_for_device("cuda", why)) cr_skip_test("%s", why);
    static char out[1 << 16];
    char args[512];
    snprintf(args, sizeof args, "--preset tiny --width 256 --heads 1 --steps 1 --eval-windows 4 --device cuda "
             "--attention flash --out /tmp/kvlab-test-hd-%d.ckpt", (int)getpid());
    int rc = bk_run_program("train", args, out, sizeof out);
    cr_expect(rc != 0 && strstr(out, "--attention flash: the cuda flash kernels take head dimensions up to 128, "
                                     "this model's is 256 (use --attention naive)"), "exit %d:\n%s", rc, out);
    snprintf(args, sizeof args, "--preset tiny --width 256 --heads 1 --steps 1 --eval-windows 4 --device cuda "
             "--out /tmp/kvlab-test-hd-%d.ckpt", (int)getpid());
    rc = bk_run_program("train", args, out, sizeof out);
    cr_expect(rc == 0 && strstr(out, "naive attention on cuda"), "exit %d:\n%s", rc, out);
    snprintf(args, sizeof args, "/tmp/kvlab-test-hd-%d.ckpt", (int)getpid());
    remove(args);
}

// build/train --device cuda --precision tf32|bf16 trains (a finite validation loss, the checkpoint written) and
// says so in its banner.
Test(cuda_train, precision_flag) {
    char why[ERR_LEN];
    if (!ops_for_device("cuda", why)) cr_skip_test("%s", why);
    static char out[1 << 16];
    const char *modes[] = {"tf32", "bf16"};
    for (int i = 0; i < 2; i++) {
        char args[512], want[64], path[64];
        snprintf(path, sizeof path, "/tmp/kvlab-test-prec-%d.ckpt", (int)getpid());
        snprintf(args, sizeof args, "--preset tiny --steps 2 --eval-windows 2 --device cuda --precision %s --out %s",
                 modes[i], path);
        int rc = bk_run_program("train", args, out, sizeof out);
        snprintf(want, sizeof want, "flash attention on cuda, %s products", modes[i]);
        cr_expect(rc == 0 && strstr(out, want) && strstr(out, "train: done: step 2"), "exit %d:\n%s", rc, out);
        cr_expect(access(path, F_OK) == 0, "%s: no checkpoint", modes[i]);
        remove(path);
    }
}

// build/bench --device cuda --quick through the backend this test binary loaded (the library next to it: the
// real one, or the emulator's): a device line, then training rows (fp32 with naive and flash attention; flash in
// tf32 and bf16) and attention rows, every figure finite and positive.
Test(cuda_train, bench_device_rows) {
    char why[ERR_LEN];
    if (!ops_for_device("cuda", why)) cr_skip_test("%s", why);
    static char out[1 << 16];
    int rc = bk_run_program("bench", "--device cuda --quick --json", out, sizeof out);
    char line[2048];
    int device = 0, train[2] = {0, 0}, attention[2] = {0, 0}, precision[OPS_PRECISION_COUNT] = {0};
    for (const char *at = out; *at;) {
        const char *nl = strchr(at, '\n');
        size_t n = nl ? (size_t)(nl - at) : strlen(at);
        snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line - 1 ? n : sizeof line - 1), at);
        at += n + (nl != NULL);
        if (strstr(line, "\"cuda_device\"")) device++;
        int flash = strstr(line, "\"attention\": \"flash\"") != NULL;
        const char *t = strstr(line, "\"tokens_per_s\": "), *l = strstr(line, "\"loss\": ");
        if (strstr(line, "\"cuda_train\"")) {
            cr_assert(t && l, "%s", line);
            double tps = atof(t + 16), loss = atof(l + 8);
            cr_expect(tps > 0 && isfinite(loss) && loss > 0, "%s", line);
            train[flash]++;
            for (int p = 0; p < OPS_PRECISION_COUNT; p++) {
                char want[48];
                snprintf(want, sizeof want, "\"precision\": \"%s\"", ops_precision_name(p));
                precision[p] += strstr(line, want) != NULL;
            }
        }
        const char *f = strstr(line, "\"forward_ms\": "), *b = strstr(line, "\"backward_ms\": ");
        if (strstr(line, "\"cuda_attention\"")) {
            cr_assert(f && b, "%s", line);
            cr_expect(atof(f + 14) > 0 && atof(b + 15) > 0, "%s", line);
            attention[flash]++;
        }
    }
    cr_expect_eq(rc, 0, "bench --device cuda --quick exited with %d", rc);
    cr_expect(device == 1 && train[0] == 1 && train[1] == 3 && attention[0] == 1 && attention[1] == 1,
              "rows: device %d, train naive %d flash %d, attention naive %d flash %d", device, train[0], train[1],
              attention[0], attention[1]);
    cr_expect(precision[0] == 2 && precision[1] == 1 && precision[2] == 1, "train rows: fp32 %d, tf32 %d, bf16 %d",
              precision[0], precision[1], precision[2]);
}

// A model moved to the device and back keeps its weights bit for bit, and a checkpoint saved from the
// device loads on the CPU with the same weights and optimizer state.
Test(cuda_train, checkpoint_across_devices) {
    char why[ERR_LEN];
    const Ops *cuda = ops_for_device("cuda", why);
    if (!cuda) cr_skip_test("%s", why);
    ModelConfig mc = CFG;
    mc.vocab_size = 65;
    Model m;
    model_init(&m, &mc, &ops_cpu);
    model_init_weights(&m, 3);
    float *before = common_calloc(m.n_params, sizeof(float));
    memcpy(before, m.params_memory, m.n_params * sizeof(float));
    TrainState st;
    train_state_init(&st, m.n_params, 3);
    for (size_t i = 0; i < m.n_params; i++) st.m[i] = st.v[i] = (float)i;
    model_to_backend(&m, cuda);
    train_state_to_backend(&st, m.n_params, cuda);
    Tokenizer tok;
    unsigned char bytes[65];
    for (int i = 0; i < 65; i++) bytes[i] = (unsigned char)(32 + i);
    char err[ERR_LEN];
    cr_assert_eq(tokenizer_from_bytes(&tok, bytes, 65, err), 0, "%s", err);
    TrainConfig tc = train_config();
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kvlab-test-cuda-%d.ckpt", (int)getpid());
    cr_assert_eq(train_save_checkpoint(path, &m, &tok, &tc, &st, err), 0, "%s", err);
    Model back;
    Tokenizer tok_back;
    TrainState st_back;
    int has_state = 0;
    cr_assert_eq(train_load_checkpoint(path, &back, &ops_cpu, &tok_back, &tc, &st_back, &has_state, err), 0, "%s", err);
    cr_expect(has_state);
    cr_expect(memcmp(back.params_memory, before, m.n_params * sizeof(float)) == 0);
    cr_expect(st_back.m[12345 % m.n_params] == (float)(12345 % m.n_params));
    model_to_backend(&m, &ops_cpu);
    cr_expect(memcmp(m.params_memory, before, m.n_params * sizeof(float)) == 0);
    remove(path);
    common_free(before);
    train_state_free(&st);
    train_state_free(&st_back);
    model_free(&m);
    model_free(&back);
}
