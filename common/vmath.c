// vmath.h over common/simd.h: every function is a vector body and a scalar tail doing the same operations in
// the same order, so an element's result does not depend on whether it fell in a vector or in the tail.
#include "vmath.h"

#include "simd.h"

void vmath_exp(float *y, const float *x, size_t n) {
    size_t i = 0;
#if VF_W
    for (; i + VF_W <= n; i += VF_W) vf_store(y + i, vf_exp(vf_load(x + i)));
#endif
    for (; i < n; i++) y[i] = simd_exp_scalar(x[i]);
}

float vmath_exp_shift_sum(float *x, size_t n, float shift) {
    size_t i = 0;
    double sum = 0.0;
#if VF_W
    vf acc = vf_set1(0.0f), s = vf_set1(shift);
    for (; i + VF_W <= n; i += VF_W) {
        vf e = vf_exp(vf_sub(vf_load(x + i), s));
        vf_store(x + i, e);
        acc = vf_add(acc, e);
    }
    sum = vf_hsum(acc);
#endif
    for (; i < n; i++) {
        x[i] = simd_exp_scalar(x[i] - shift);
        sum += x[i];
    }
    return (float)sum;
}

float vmath_max(const float *x, size_t n) {
    float m = x[0];
    size_t i = 0;
#if VF_W
    if (n >= VF_W) {
        vf acc = vf_load(x);
        for (i = VF_W; i + VF_W <= n; i += VF_W) acc = vf_max(acc, vf_load(x + i));
        m = vf_hmax(acc);
    }
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

void vmath_scale(float *x, size_t n, float s) {
    size_t i = 0;
#if VF_W
    vf sv = vf_set1(s);
    for (; i + VF_W <= n; i += VF_W) vf_store(x + i, vf_mul(vf_load(x + i), sv));
#endif
    for (; i < n; i++) x[i] *= s;
}

void vmath_softmax(float *x, size_t n) {
    float sum = vmath_exp_shift_sum(x, n, vmath_max(x, n));
    vmath_scale(x, n, 1.0f / sum);
}

float vmath_dot(const float *a, const float *b, size_t n) {
    size_t i = 0;
    float sum = 0.0f;
#if VF_W
    vf acc = vf_set1(0.0f);
    for (; i + VF_W <= n; i += VF_W) acc = vf_fmadd(vf_load(a + i), vf_load(b + i), acc);
    sum = vf_hsum(acc);
#endif
    for (; i < n; i++) sum = fmaf(a[i], b[i], sum);
    return sum;
}

// sigmoid(a) = 1 / (1 + exp(-a)); exp's clamp keeps it finite: a < -88 gives 1 / (1 + exp(88)) ~ 6e-39.
static inline float sigmoid_scalar(float a) { return 1.0f / (1.0f + simd_exp_scalar(-a)); }

void vmath_silu_mul(float *out, const float *a, const float *b, size_t n) {
    size_t i = 0;
#if VF_W
    vf one = vf_set1(1.0f), zero = vf_set1(0.0f);
    for (; i + VF_W <= n; i += VF_W) {
        vf av = vf_load(a + i);
        vf s = vf_div(one, vf_add(one, vf_exp(vf_sub(zero, av))));
        vf_store(out + i, vf_mul(vf_mul(av, s), vf_load(b + i)));
    }
#endif
    for (; i < n; i++) out[i] = a[i] * sigmoid_scalar(a[i]) * b[i];
}

// silu'(a) = s (1 + a (1 - s)) with s = sigmoid(a).
void vmath_silu_mul_backward(float *da, float *db, const float *dout, const float *a, const float *b, size_t n) {
    size_t i = 0;
#if VF_W
    vf one = vf_set1(1.0f), zero = vf_set1(0.0f);
    for (; i + VF_W <= n; i += VF_W) {
        vf av = vf_load(a + i), dv = vf_load(dout + i);
        vf s = vf_div(one, vf_add(one, vf_exp(vf_sub(zero, av))));
        vf dsilu = vf_mul(s, vf_add(one, vf_mul(av, vf_sub(one, s))));
        vf_store(da + i, vf_add(vf_load(da + i), vf_mul(vf_mul(dv, vf_load(b + i)), dsilu)));
        vf_store(db + i, vf_add(vf_load(db + i), vf_mul(dv, vf_mul(av, s))));
    }
#endif
    for (; i < n; i++) {
        float s = sigmoid_scalar(a[i]);
        float dsilu = s * (1.0f + a[i] * (1.0f - s));
        da[i] += dout[i] * b[i] * dsilu;
        db[i] += dout[i] * (a[i] * s);
    }
}
