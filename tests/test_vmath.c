// Tests of common/vmath.h against libm, suite `vmath`: exp within 2 ulp of expf over the whole range it
// promises, the documented clamps at both ends, the same bits for an element in a vector as in the tail, and
// the softmax pieces, the dot product and SwiGLU's silu(a) * b (forward and backward) against a double-precision
// reference.
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/common.h"
#include "../common/simd.h"
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

Test(vmath, dot_matches_double_reference) {
    for (int n = 1; n <= 200; n += 13) {
        float a[200], b[200];
        Rng rng;
        rng_init(&rng, 100 + (uint64_t)n);
        double want = 0.0, mag = 0.0;
        for (int i = 0; i < n; i++) {
            a[i] = rng_normal(&rng), b[i] = rng_normal(&rng);
            want += (double)a[i] * b[i];
            mag += fabs((double)a[i] * b[i]);
        }
        float got = vmath_dot(a, b, n);
        cr_expect(fabs(got - want) <= 1e-6 * mag, "n %d: %.9g vs %.9g", n, got, want);
    }
}

// silu(a) * b and its backward against double precision, over the whole range a softmax-free gate sees
// (including |a| past exp's clamps, where sigmoid saturates to 0 or 1).
Test(vmath, silu_mul_matches_double_reference) {
    enum { N = 1000 };
    static float a[N], b[N], out[N], dout[N], da[N], db[N];
    Rng rng;
    rng_init(&rng, 11);
    for (int i = 0; i < N; i++) {
        a[i] = 8.0f * rng_normal(&rng), b[i] = rng_normal(&rng), dout[i] = rng_normal(&rng);
        da[i] = 0.5f, db[i] = -0.25f; // the backward accumulates onto these
    }
    a[0] = 0.0f, a[1] = -100.0f, a[2] = 100.0f, a[3] = -88.5f, a[4] = 88.5f;
    vmath_silu_mul(out, a, b, N);
    vmath_silu_mul_backward(da, db, dout, a, b, N);
    for (int i = 0; i < N; i++) {
        double s = 1.0 / (1.0 + exp(-(double)a[i])), silu = a[i] * s, dsilu = s * (1.0 + a[i] * (1.0 - s));
        double want = silu * b[i], wda = 0.5 + dout[i] * b[i] * dsilu, wdb = -0.25 + dout[i] * silu;
        // relative 1e-6, plus exp's clamp below a = -88: sigmoid(a) there is 1 / (1 + exp(88)) ~ 6e-39, not e^a
        cr_assert(fabs(out[i] - want) <= 1e-6 * fabs(want) + 1e-38 * fabs((double)a[i] * b[i]), "a %g b %g: out %.9g, want %.9g",
                  a[i], b[i], out[i], want);
        cr_assert(fabs(da[i] - wda) <= 1e-6 * (1.0 + fabs(wda)), "a %g: da %.9g, want %.9g", a[i], da[i], wda);
        cr_assert(fabs(db[i] - wdb) <= 1e-6 * (1.0 + fabs(wdb)), "a %g: db %.9g, want %.9g", a[i], db[i], wdb);
    }
}

Test(vmath, silu_mul_same_bits_in_vector_and_tail) {
    enum { N = 53 };
    float a[N], b[N], d[N], ref[N], y[N], rda[N], rdb[N], yda[N], ydb[N];
    Rng rng;
    rng_init(&rng, 12);
    for (int i = 0; i < N; i++) a[i] = 6.0f * rng_normal(&rng), b[i] = rng_normal(&rng), d[i] = rng_normal(&rng);
    for (int i = 0; i < N; i++) { // every element alone: the scalar tail
        vmath_silu_mul(&ref[i], &a[i], &b[i], 1);
        rda[i] = rdb[i] = 0.0f;
        vmath_silu_mul_backward(&rda[i], &rdb[i], &d[i], &a[i], &b[i], 1);
    }
    for (int off = 0; off < 17; off++) {
        size_t n = N - off;
        memset(yda, 0, sizeof yda), memset(ydb, 0, sizeof ydb);
        vmath_silu_mul(y + off, a + off, b + off, n);
        vmath_silu_mul_backward(yda + off, ydb + off, d + off, a + off, b + off, n);
        cr_assert(memcmp(y + off, ref + off, n * sizeof(float)) == 0, "silu_mul, offset %d", off);
        cr_assert(memcmp(yda + off, rda + off, n * sizeof(float)) == 0, "silu_mul_backward da, offset %d", off);
        cr_assert(memcmp(ydb + off, rdb + off, n * sizeof(float)) == 0, "silu_mul_backward db, offset %d", off);
    }
}

// The scalar exp (what a build without AVX2 runs) gives the vector exp's bits.
Test(vmath, scalar_exp_is_vector_exp) {
    enum { N = 1 << 14 };
    static float x[N], y[N];
    Rng rng;
    rng_init(&rng, 13);
    for (int i = 0; i < N; i++) x[i] = -90.0f + 180.0f * rng_uniform(&rng);
    vmath_exp(y, x, N);
    for (int i = 0; i < N; i++) {
        float s = simd_exp_scalar(x[i]);
        cr_assert(memcmp(&s, &y[i], sizeof(float)) == 0, "exp(%.9g): scalar %.9g, vector %.9g", x[i], s, y[i]);
    }
}
