// vmath.h: one algorithm written three times (AVX-512, AVX2, scalar) with the same fused multiply-adds in
// the same order, so an element's result does not depend on whether it fell in a vector or in the tail.
#include "vmath.h"

#include <math.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// exp(x) = 2^n * e^r, n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), e^r by the cephes
// expf polynomial. x is clamped to [EXP_LO, EXP_HI] so 2^n stays a normal float (n in [-126, 127]); below
// EXP_LO the result is 0.
#define EXP_LO -87.33654f
#define EXP_HI 88.0f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f

static inline float exp_scalar(float x) {
    if (!(x >= EXP_LO)) return 0.0f; // also NaN -> 0: softmax inputs are finite by contract
    if (x > EXP_HI) x = EXP_HI;
    float n = nearbyintf(x * LOG2E);
    float r = fmaf(-n, LN2_HI, x);
    r = fmaf(-n, LN2_LO, r);
    float p = P0;
    p = fmaf(p, r, P1);
    p = fmaf(p, r, P2);
    p = fmaf(p, r, P3);
    p = fmaf(p, r, P4);
    p = fmaf(p, r, P5);
    float r2 = r * r;
    p = fmaf(p, r2, r) + 1.0f;
    union {
        int i;
        float f;
    } two_n = {.i = ((int)n + 127) << 23};
    return p * two_n.f;
}

#if defined(__AVX512F__)
#define VW 16
typedef __m512 vf;
static inline vf exp_vec(vf x) {
    __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_NGE_UQ);
    x = _mm512_min_ps(x, _mm512_set1_ps(EXP_HI));
    vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    vf p = _mm512_set1_ps(P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P5));
    vf r2 = _mm512_mul_ps(r, r);
    p = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    vf y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    return _mm512_mask_mov_ps(y, zero, _mm512_setzero_ps());
}
#define V_LOAD _mm512_loadu_ps
#define V_STORE _mm512_storeu_ps
#define V_SET1 _mm512_set1_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_MAX _mm512_max_ps
static inline float v_hsum(vf v) { return _mm512_reduce_add_ps(v); }
static inline float v_hmax(vf v) { return _mm512_reduce_max_ps(v); }
#elif defined(__AVX2__)
#define VW 8
typedef __m256 vf;
static inline vf exp_vec(vf x) {
    vf zero = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_NGE_UQ);
    x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
    vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    vf p = _mm256_set1_ps(P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    vf r2 = _mm256_mul_ps(r, r);
    p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    vf y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(zero, y);
}
#define V_LOAD _mm256_loadu_ps
#define V_STORE _mm256_storeu_ps
#define V_SET1 _mm256_set1_ps
#define V_ADD _mm256_add_ps
#define V_SUB _mm256_sub_ps
#define V_MUL _mm256_mul_ps
#define V_MAX _mm256_max_ps
static inline float v_hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float v_hmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
#define VW 0
#endif

void vmath_exp(float *y, const float *x, size_t n) {
    size_t i = 0;
#if VW
    for (; i + VW <= n; i += VW) V_STORE(y + i, exp_vec(V_LOAD(x + i)));
#endif
    for (; i < n; i++) y[i] = exp_scalar(x[i]);
}

float vmath_exp_shift_sum(float *x, size_t n, float shift) {
    size_t i = 0;
    double sum = 0.0;
#if VW
    vf acc = V_SET1(0.0f), s = V_SET1(shift);
    for (; i + VW <= n; i += VW) {
        vf e = exp_vec(V_SUB(V_LOAD(x + i), s));
        V_STORE(x + i, e);
        acc = V_ADD(acc, e);
    }
    sum = v_hsum(acc);
#endif
    for (; i < n; i++) {
        x[i] = exp_scalar(x[i] - shift);
        sum += x[i];
    }
    return (float)sum;
}

float vmath_max(const float *x, size_t n) {
    float m = x[0];
    size_t i = 0;
#if VW
    if (n >= VW) {
        vf acc = V_LOAD(x);
        for (i = VW; i + VW <= n; i += VW) acc = V_MAX(acc, V_LOAD(x + i));
        m = v_hmax(acc);
    }
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

void vmath_scale(float *x, size_t n, float s) {
    size_t i = 0;
#if VW
    vf sv = V_SET1(s);
    for (; i + VW <= n; i += VW) V_STORE(x + i, V_MUL(V_LOAD(x + i), sv));
#endif
    for (; i < n; i++) x[i] *= s;
}

void vmath_softmax(float *x, size_t n) {
    float sum = vmath_exp_shift_sum(x, n, vmath_max(x, n));
    vmath_scale(x, n, 1.0f / sum);
}
