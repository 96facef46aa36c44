// The optimizer ops on the CPU (layers/adamw.c), suite `optim`: the vectorised AdamW update against the
// plain scalar update written out here (bit for bit: the same float operations in the same order, no fused
// multiply-add, on lengths that put elements in vector bodies, tails and several threads' chunks), the global
// gradient norm against a long double reference and the same bits on 1 and 4 threads, and scale; train_step's
// update (AdamW over pieces of every tensor in one parallel region) against one AdamW call per tensor.
#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>
#include <string.h>

#include "../layers/cpu_ops.h"
#include "../train/trainer.h"
#include "grad_util.h"

TestSuite(optim, .fini = gradutil_one_thread);

static void adamw_reference(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                            float beta2, float eps, float wd, int t) {
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    for (size_t i = 0; i < n; i++) {
        volatile float mi = beta1 * m[i], gi = (1.0f - beta1) * g[i]; // volatile: no contraction either way
        m[i] = mi + gi;
        volatile float vi = beta2 * v[i], g2 = (1.0f - beta2) * g[i];
        g2 = g2 * g[i];
        v[i] = vi + g2;
        float mhat = m[i] / bc1, vhat = v[i] / bc2;
        volatile float den = sqrtf(vhat) + eps, decay = wd * p[i];
        volatile float step = mhat / den + decay;
        volatile float delta = lr * step;
        p[i] = p[i] - delta;
    }
}

Test(optim, adamw_matches_scalar_bit_for_bit) {
    const size_t sizes[] = {1, 15, 17, 4096 + 33, 100003};
    const int threads[] = {1, 4};
    for (int k = 0; k < 5; k++) {
        size_t n = sizes[k];
        Rng rng;
        rng_init(&rng, 900 + k);
        float *p = gradutil_falloc(n), *m = gradutil_falloc(n), *v = gradutil_falloc(n), *g = gradutil_falloc(n);
        gradutil_fill_normal(p, n, &rng, 0.0f, 1.0f);
        gradutil_fill_normal(m, n, &rng, 0.0f, 0.01f);
        gradutil_fill_normal(v, n, &rng, 0.0f, 0.01f);
        for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
        float *rp = gradutil_dup(p, n), *rm = gradutil_dup(m, n), *rv = gradutil_dup(v, n);
        for (int t = 1; t <= 3; t++) {
            gradutil_fill_normal(g, n, &rng, 0.0f, 0.5f);
            float wd = t == 2 ? 0.0f : 0.1f;
            omp_set_num_threads(threads[t % 2]);
            adamw_update_cpu(p, g, m, v, n, 3e-3f, 0.9f, 0.95f, 1e-8f, wd, t);
            adamw_reference(rp, g, rm, rv, n, 3e-3f, 0.9f, 0.95f, 1e-8f, wd, t);
        }
        omp_set_num_threads(1);
        cr_expect(memcmp(p, rp, n * sizeof(float)) == 0, "adamw params differ from the scalar update (n %zu)", n);
        cr_expect(memcmp(m, rm, n * sizeof(float)) == 0, "adamw m differs from the scalar update (n %zu)", n);
        cr_expect(memcmp(v, rv, n * sizeof(float)) == 0, "adamw v differs from the scalar update (n %zu)", n);
        common_free(p), common_free(m), common_free(v), common_free(g);
        common_free(rp), common_free(rm), common_free(rv);
    }
}

Test(optim, grad_norm_matches_long_double_and_threads) {
    const size_t sizes[] = {1, 7, 16, 16384, 16385, 300007, 16384 * 300 + 5}; // the last: more than 256 blocks
    for (int k = 0; k < 7; k++) {
        size_t n = sizes[k];
        Rng rng;
        rng_init(&rng, 950 + k);
        float *g = gradutil_falloc(n);
        gradutil_fill_normal(g, n, &rng, 0.0f, 0.1f);
        long double sq = 0.0L;
        for (size_t i = 0; i < n; i++) sq += (long double)g[i] * g[i];
        float want = (float)sqrtl(sq);
        omp_set_num_threads(1);
        float one = grad_norm_cpu(g, n);
        omp_set_num_threads(4);
        float four = grad_norm_cpu(g, n);
        cr_expect(memcmp(&one, &four, sizeof(float)) == 0, "grad_norm n=%zu: 1 thread %.9g, 4 threads %.9g", n,
                  (double)one, (double)four);
        cr_expect(fabsf(one - want) <= 1e-7f * want, "grad_norm n=%zu: %.9g, long double %.9g", n, (double)one,
                  (double)want);
        common_free(g);
    }
    omp_set_num_threads(1);
    cr_expect(grad_norm_cpu(NULL, 0) == 0.0f);
}

Test(optim, scale) {
    enum { N = 70001 };
    float *x = gradutil_falloc(N);
    for (int i = 0; i < N; i++) x[i] = (float)i;
    omp_set_num_threads(4);
    scale_cpu(x, N, 0.5f);
    omp_set_num_threads(1);
    for (int i = 0; i < N; i++) cr_assert(x[i] == 0.5f * (float)i, "element %d", i);
    common_free(x);
}

// train_step cuts the tensors into pieces of 65536 for one parallel region; the update must be the per-tensor
// AdamW bit for bit (a model with tensors of several pieces, run on 4 threads). The gradients train_step leaves
// (after clipping) are the ones the reference update is given.
Test(optim, train_step_update_is_per_tensor_adamw) {
    ModelConfig mc = {.vocab_size = 65, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 192, .n_hidden = 512,
                      .block_size = 16, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    TrainConfig tc = {.batch_size = 4, .seq_len = 16, .max_steps = 10, .warmup_steps = 2, .lr = 1e-3f,
                      .min_lr = 1e-4f, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .adam_eps = 1e-8f,
                      .grad_clip = 1.0f, .grad_accum = 1, .eval_interval = 0, .eval_windows = 4, .seed = 3};
    enum { NTOK = 4000 };
    Rng rng;
    rng_init(&rng, 990);
    int *tokens = common_calloc(NTOK, sizeof(int));
    for (int i = 0; i < NTOK; i++) tokens[i] = (int)rng_below(&rng, 65);
    Corpus c = {tokens, NTOK, NTOK * 9 / 10, NULL};
    Model m;
    model_init(&m, &mc, &ops_cpu);
    model_init_weights(&m, 991);
    model_alloc_acts(&m, tc.batch_size, tc.seq_len);
    TrainState st;
    train_state_init(&st, m.n_params, 992);
    int in[4 * 16], tg[4 * 16];
    size_t sizes[NUM_PARAM_TENSORS], n = m.n_params;
    model_param_sizes(&mc, sizes);
    cr_assert(sizes[2] > 65536 && sizes[7] > 2 * 65536, "the test needs tensors of several pieces");
    omp_set_num_threads(4);
    for (int step = 0; step < 3; step++) {
        float *p0 = gradutil_dup(m.params_memory, n), *m0 = gradutil_dup(st.m, n), *v0 = gradutil_dup(st.v, n);
        float norm, lr = schedule_lr(&tc, st.step);
        int t = st.step + 1;
        train_step(&m, &st, &tc, &c, in, tg, &norm);
        cr_assert(isfinite(norm));
        size_t off = 0;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            float wd = model_param_is_decayed(i) ? tc.weight_decay : 0.0f;
            adamw_update_cpu(p0 + off, m.grads_memory + off, m0 + off, v0 + off, sizes[i], lr, tc.beta1, tc.beta2,
                             tc.adam_eps, wd, t);
            off += sizes[i];
        }
        cr_expect(memcmp(p0, m.params_memory, n * sizeof(float)) == 0, "step %d: params differ", step);
        cr_expect(memcmp(m0, st.m, n * sizeof(float)) == 0, "step %d: m differs", step);
        cr_expect(memcmp(v0, st.v, n * sizeof(float)) == 0, "step %d: v differs", step);
        common_free(p0), common_free(m0), common_free(v0);
    }
    omp_set_num_threads(1);
    train_state_free(&st);
    model_free(&m);
    common_free(tokens);
}
