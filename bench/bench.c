// build/bench: training speed (ms per optimizer step, tokens/s) of each preset, and decode speed, on this
// machine. Median of several timed steps after warm-up. Speed lives here and in BENCHMARKS.md, never in
// timed tests.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../layers/decode.h"
#include "../train/presets.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void describe_machine(void) {
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
    printf("machine: %s, %d OpenMP threads\n", model, omp_get_max_threads());
}

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

static void bench_train(const char *preset_name, const char *attn, const Corpus *c, int vocab, int steps) {
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
    qsort(times, steps, sizeof(double), cmp_double);
    double med = times[steps / 2];
    printf("train  %-12s %-6s %6.2fM params  B=%-3d T=%-4d  %8.1f ms/step  %9.0f tokens/s  (median of %d)\n",
           preset_name, attn, m.n_params / 1e6, tc.batch_size, tc.seq_len, med * 1e3,
           tc.batch_size * tc.seq_len / med, steps);
    fflush(stdout);
    common_free(in);
    common_free(tg);
    train_state_free(&st);
    model_free(&m);
}

static void bench_decode(const char *preset_name, const char *attn, int vocab, int runs) {
    Model m;
    bench_model_init(&m, preset_name, attn, vocab);
    const ModelConfig mc = m.cfg;
    KVCache *kv;
    char err[ERR_LEN];
    KVShape shape = {mc.n_layer, mc.n_head, mc.n_kv_head, model_head_dim(&mc), mc.block_size, mc.rope_theta, 0};
    CHECK(kv_full_init(&kv, &shape, err) == 0);
    DecodeState ds;
    decode_state_init(&ds, &mc, mc.block_size);
    double times[32];
    for (int r = 0; r < runs + 1; r++) { // the first run warms up
        kv_cache_reset(kv);
        double t0 = common_now();
        for (int t = 0; t < mc.block_size; t++) model_decode_step(&m, &ds, kv, t % vocab, t);
        if (r > 0) times[r - 1] = common_now() - t0;
    }
    qsort(times, runs, sizeof(double), cmp_double);
    double med = times[runs / 2];
    printf("decode %-12s %-6s %6.2fM params  %d tokens from empty cache  %9.0f tokens/s  KV %zu bytes  (median of %d)\n",
           preset_name, attn, m.n_params / 1e6, mc.block_size, mc.block_size / med, kv_cache_bytes(kv), runs);
    fflush(stdout);
    decode_state_free(&ds);
    kv_cache_free(kv);
    model_free(&m);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (argc > 1 && !quick) {
        fprintf(stderr, "usage: build/bench [--quick]   (--quick skips the shakespeare preset)\n");
        return 1;
    }
    describe_machine();
    char err[ERR_LEN];
    Corpus c;
    Tokenizer tok;
    if (corpus_load(&c, &tok, "data/tinyshakespeare.txt", 1, NULL, err) != 0) {
        fprintf(stderr, "bench: %s (run from the repository root)\n", err);
        return 1;
    }
    bench_train("baby", "mha", &c, tok.vocab_size, 15);
    bench_train("small", "mha", &c, tok.vocab_size, 9);
    bench_train("small", "gqa:8", &c, tok.vocab_size, 9);
    bench_train("small", "mqa", &c, tok.vocab_size, 9);
    if (!quick) bench_train("shakespeare", "mha", &c, tok.vocab_size, 3);
    bench_decode("baby", "mha", tok.vocab_size, 9);
    bench_decode("small", "mha", tok.vocab_size, 9);
    bench_decode("small", "mqa", tok.vocab_size, 9);
    if (!quick) bench_decode("shakespeare", "mha", tok.vocab_size, 5);
    corpus_free(&c);
    return 0;
}
