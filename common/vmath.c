// vmath.h over common/simd.h: every function is a vector loop and one masked vector for the tail (lanes compute
// the same whatever their place, so an element's result does not depend on where it falls), or a scalar loop
// with the same operations in the same order on a build without vectors.
#include "vmath.h"

#include "simd.h"

void vmath_exp(float *y, const float *x, size_t n) {
    size_t i = 0;
#if VF_W
    for (; i + VF_W <= n; i += VF_W) vf_store(y + i, vf_exp(vf_load(x + i)));
    if (i < n) {
        vmask m = vmask_first((int)(n - i));
        vf_store_mask(y + i, vf_exp(vf_load_mask(x + i, m)), m);
    }
#else
    for (; i < n; i++) y[i] = simd_exp_scalar(x[i]);
#endif
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
    if (i < n) {
        vmask m = vmask_first((int)(n - i));
        vf e = vf_select(m, vf_exp(vf_sub(vf_load_mask(x + i, m), s)), vf_set1(0.0f));
        vf_store_mask(x + i, e, m);
        acc = vf_add(acc, e);
    }
    sum = vf_hsum(acc);
#else
    for (; i < n; i++) {
        x[i] = simd_exp_scalar(x[i] - shift);
        sum += x[i];
    }
#endif
    return (float)sum;
}

float vmath_max(const float *x, size_t n) {
#if VF_W
    size_t i = 0;
    vf acc = vf_set1(-INFINITY);
    for (; i + VF_W <= n; i += VF_W) acc = vf_max(acc, vf_load(x + i));
    if (i < n) {
        vmask m = vmask_first((int)(n - i));
        acc = vf_max(acc, vf_select(m, vf_load_mask(x + i, m), vf_set1(-INFINITY)));
    }
    return vf_hmax(acc);
#else
    float m = x[0];
    for (size_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
#endif
}

void vmath_scale(float *x, size_t n, float s) {
    size_t i = 0;
#if VF_W
    vf sv = vf_set1(s);
    for (; i + VF_W <= n; i += VF_W) vf_store(x + i, vf_mul(vf_load(x + i), sv));
    if (i < n) {
        vmask m = vmask_first((int)(n - i));
        vf_store_mask(x + i, vf_mul(vf_load_mask(x + i, m), sv), m);
    }
#else
    for (; i < n; i++) x[i] *= s;
#endif
}

void vmath_softmax(float *x, size_t n) {
    float sum = vmath_exp_shift_sum(x, n, vmath_max(x, n));
    vmath_scale(x, n, 1.0f / sum);
}

float vmath_dot(const float *a, const float *b, size_t n) {
    size_t i = 0;
#if VF_W
    vf acc = vf_set1(0.0f);
    for (; i + VF_W <= n; i += VF_W) acc = vf_fmadd(vf_load(a + i), vf_load(b + i), acc);
    if (i < n) {
        vmask m = vmask_first((int)(n - i));
        acc = vf_fmadd(vf_load_mask(a + i, m), vf_load_mask(b + i, m), acc); // masked lanes add 0 * 0
    }
    return vf_hsum(acc);
#else
    float sum = 0.0f;
    for (; i < n; i++) sum = fmaf(a[i], b[i], sum);
    return sum;
#endif
}

// sigmoid(a) = 1 / (1 + exp(-a)); exp's clamp keeps it finite: a < -88 gives 1 / (1 + exp(88)) ~ 6e-39.
#if VF_W
static inline vf silu_mul_vec(vf av, vf bv) {
    vf one = vf_set1(1.0f);
    vf s = vf_div(one, vf_add(one, vf_exp(vf_sub(vf_set1(0.0f), av))));
    return vf_mul(vf_mul(av, s), bv);
}
#else
static inline float sigmoid_scalar(float a) { return 1.0f / (1.0f + simd_exp_scalar(-a)); }
#endif

void vmath_silu_mul(float *out, const float *a, const float *b, size_t n) {
    size_t i = 0;
#if VF_W
    for (; i + VF_W <= n; i += VF_W) vf_store(out + i, silu_mul_vec(vf_load(a + i), vf_load(b + i)));
    if (i < n) {
        vmask m = vmask_first((int)(n - i));
        vf_store_mask(out + i, silu_mul_vec(vf_load_mask(a + i, m), vf_load_mask(b + i, m)), m);
    }
#else
    for (; i < n; i++) out[i] = a[i] * sigmoid_scalar(a[i]) * b[i];
#endif
}

// silu'(a) = s (1 + a (1 - s)) with s = sigmoid(a).
#if VF_W
static inline void silu_mul_backward_vec(vf *da, vf *db, vf dv, vf av, vf bv) {
    vf one = vf_set1(1.0f);
    vf s = vf_div(one, vf_add(one, vf_exp(vf_sub(vf_set1(0.0f), av))));
    vf dsilu = vf_mul(s, vf_add(one, vf_mul(av, vf_sub(one, s))));
    *da = vf_add(*da, vf_mul(vf_mul(dv, bv), dsilu));
    *db = vf_add(*db, vf_mul(dv, vf_mul(av, s)));
}
#endif

void vmath_silu_mul_backward(float *da, float *db, const float *dout, const float *a, const float *b, size_t n) {
    size_t i = 0;
#if VF_W
    for (; i + VF_W <= n; i += VF_W) {
        vf dav = vf_load(da + i), dbv = vf_load(db + i);
        silu_mul_backward_vec(&dav, &dbv, vf_load(dout + i), vf_load(a + i), vf_load(b + i));
        vf_store(da + i, dav);
        vf_store(db + i, dbv);
    }
    if (i < n) {
        vmask m = vmask_first((int)(n - i));
        vf dav = vf_load_mask(da + i, m), dbv = vf_load_mask(db + i, m);
        silu_mul_backward_vec(&dav, &dbv, vf_load_mask(dout + i, m), vf_load_mask(a + i, m), vf_load_mask(b + i, m));
        vf_store_mask(da + i, dav, m);
        vf_store_mask(db + i, dbv, m);
    }
#else
    for (; i < n; i++) {
        float s = sigmoid_scalar(a[i]);
        float dsilu = s * (1.0f + a[i] * (1.0f - s));
        da[i] += dout[i] * b[i] * dsilu;
        db[i] += dout[i] * (a[i] * s);
    }
#endif
}
