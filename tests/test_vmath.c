// Tests of common/vmath.h against libm, suite `vmath`: exp within 2 ulp of expf over the whole range it
// promises, the documented clamps at both ends, the same bits for an element in a vector as in the tail, and
// the softmax pieces against a double-precision reference.
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/common.h"
#include "../common/vmath.h"

// Distance in units in the last place between two positive finite floats.
static int64_t ulp_dist(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

Test(vmath, exp_within_2ulp_of_libm) {
    enum { N = 1 << 16 };
    static float x[N], y[N];
    Rng rng;
    rng_init(&rng, 7);
    for (int i = 0; i < N; i++) x[i] = -87.0f + 175.0f * rng_uniform(&rng); // [-87, 88]
    x[0] = 0.0f, x[1] = 1.0f, x[2] = -1.0f, x[3] = 0.34657359f, x[4] = -0.34657359f; // r at the reduction's ends
    vmath_exp(y, x, N);
    int64_t worst = 0;
    for (int i = 0; i < N; i++) {
        float ref = expf(x[i]);
        cr_assert(isfinite(y[i]) && y[i] > 0.0f, "exp(%g) = %g", x[i], y[i]);
        int64_t d = ulp_dist(y[i], ref);
        if (d > worst) worst = d;
    }
    cr_expect_leq(worst, 2, "worst error %lld ulp", (long long)worst);
    cr_expect_eq(y[0], 1.0f);
}

Test(vmath, exp_clamps_documented_ends) {
    float x[] = {-1000.0f, -87.5f, -INFINITY, 88.5f, 1000.0f, INFINITY, -87.3f, 87.9f};
    float y[8];
    vmath_exp(y, x, 8);
    for (int i = 0; i < 3; i++) cr_expect_eq(y[i], 0.0f, "exp(%g) = %g, want 0", x[i], y[i]);
    for (int i = 3; i < 6; i++) {
        cr_expect(isfinite(y[i]), "exp(%g) = %g, want finite", x[i], y[i]);
        cr_expect_float_eq(y[i], expf(88.0f), expf(88.0f) * 1e-6f);
    }
    cr_expect_float_eq(y[6], expf(-87.3f), expf(-87.3f) * 1e-5f);
    cr_expect_float_eq(y[7], expf(87.9f), expf(87.9f) * 1e-6f);
}

// An element must not change with its place (vector body or scalar tail): results are compared across
// offsets and lengths that move every element through both.
Test(vmath, same_bits_in_vector_and_tail) {
    enum { N = 67 };
    float x[N], ref[N], y[N];
    Rng rng;
    rng_init(&rng, 3);
    for (int i = 0; i < N; i++) x[i] = 20.0f * rng_normal(&rng);
    for (int i = 0; i < N; i++) vmath_exp(&ref[i], &x[i], 1); // every element through the scalar tail
    for (int off = 0; off < 17; off++) {
        vmath_exp(y + off, x + off, N - off);
        cr_assert(memcmp(y + off, ref + off, (N - off) * sizeof(float)) == 0, "offset %d", off);
    }
}

Test(vmath, softmax_matches_double_reference) {
    for (int n = 1; n <= 100; n += 11) {
        float x[100];
        double ref[100], mx = -1e30, sum = 0.0;
        Rng rng;
        rng_init(&rng, (uint64_t)n);
        for (int i = 0; i < n; i++) x[i] = 8.0f * rng_normal(&rng), mx = x[i] > mx ? x[i] : mx;
        for (int i = 0; i < n; i++) sum += (ref[i] = exp((double)x[i] - mx));
        cr_assert_eq(vmath_max(x, n), (float)mx);
        vmath_softmax(x, n);
        double total = 0.0;
        for (int i = 0; i < n; i++) {
            cr_assert_float_eq(x[i], ref[i] / sum, 1e-6, "n %d, i %d: %g vs %g", n, i, x[i], ref[i] / sum);
            total += x[i];
        }
        cr_assert_float_eq(total, 1.0, 1e-5);
    }
}

Test(vmath, exp_shift_sum_returns_the_sum) {
    float x[37];
    for (int i = 0; i < 37; i++) x[i] = -0.25f * i;
    float s = vmath_exp_shift_sum(x, 37, 1.0f);
    double want = 0.0;
    for (int i = 0; i < 37; i++) want += exp(-0.25 * i - 1.0);
    cr_expect_float_eq(s, want, 1e-5 * want);
    cr_expect_float_eq(x[36], exp(-9.0 - 1.0), 1e-9);
}
