// The optimizer ops on the CPU (layers/adamw.c), suite `optim`: the vectorised AdamW update against the
// plain scalar update written out here (bit for bit: the same float operations in the same order, no fused
// multiply-add, on lengths that put elements in vector bodies, tails and several threads' chunks), the global
// gradient norm against a long double reference and the same bits on 1 and 4 threads, and scale.
#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>
#include <string.h>

#include "../layers/cpu_ops.h"
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
