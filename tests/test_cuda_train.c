// End to end on the CUDA backend (skipped without a GPU): 10 training steps match the CPU's losses (fp32),
// the same run twice is bitwise identical, and weights written from one backend continue on the other.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "../checkpoints/checkpoint.h"
#include "../common/device.h"
#include "../data/loader.h"
#include "../train/state_io.h"
#include "../train/trainer.h"

#define STEPS 10

static const ModelConfig CFG = {.n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 64, .n_hidden = 160,
                                .block_size = 32, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.1f};

static TrainConfig train_config(void) {
    return (TrainConfig){.batch_size = 4, .seq_len = 32, .max_steps = STEPS, .warmup_steps = 2, .lr = 3e-3f,
                         .min_lr = 3e-4f, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .adam_eps = 1e-8f,
                         .grad_clip = 1.0f, .grad_accum = 2, .eval_interval = 0, .eval_windows = 4, .seed = 7};
}

// Trains STEPS steps on `ops` from the same seed; losses (STEPS) and the final weights (host) come back.
static void run(const Ops *ops, const Corpus *c, int vocab, float *losses, float *weights) {
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
    model_alloc_acts(&m, tc.batch_size, tc.seq_len);
    int *in = common_calloc((size_t)tc.batch_size * tc.seq_len, sizeof(int));
    int *tg = common_calloc((size_t)tc.batch_size * tc.seq_len, sizeof(int));
    for (int i = 0; i < STEPS; i++) losses[i] = train_step(&m, &st, &tc, c, in, tg, NULL);
    model_params_download(&m, weights);
    common_free(in);
    common_free(tg);
    train_state_free(&st);
    model_free(&m);
}

Test(cuda_train, matches_cpu_and_repeats) {
    char why[ERR_LEN];
    const Ops *cuda = ops_for_device("cuda", why);
    if (!cuda) cr_skip_test("%s", why);
    Corpus c;
    Tokenizer tok;
    char err[ERR_LEN];
    cr_assert_eq(corpus_load(&c, &tok, "data/tinyshakespeare.txt", 1, NULL, err), 0, "%s", err);
    ModelConfig mc = CFG;
    mc.vocab_size = tok.vocab_size;
    size_t n = model_param_count(&mc);
    float cpu[STEPS], gpu[STEPS], gpu2[STEPS];
    float *w_cpu = common_calloc(n, sizeof(float)), *w_gpu = common_calloc(n, sizeof(float));
    float *w_gpu2 = common_calloc(n, sizeof(float));
    run(&ops_cpu, &c, tok.vocab_size, cpu, w_cpu);
    run(cuda, &c, tok.vocab_size, gpu, w_gpu);
    run(cuda, &c, tok.vocab_size, gpu2, w_gpu2);
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
