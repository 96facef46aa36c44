// The float vector layer under common/vmath.c and the hot element-wise loops (AdamW, SwiGLU): one vector type
// `vf` of VF_W lanes (AVX-512: 16, AVX2: 8, whichever the build targets; configure.py compiles with
// -march=native), its arithmetic as static inline functions, lane masks for the partial vector at the end of an
// array (so a tail costs one vector, not up to VF_W - 1 scalar steps), and exp. VF_W is 0 on a build with
// neither, and callers then run their scalar loop over the whole array.
//
// exp is a Cody-Waite range reduction and a degree-6 polynomial, written twice with the same fused
// multiply-adds in the same order (simd_exp_scalar for scalar builds, vf_exp once over each ISA's primitives),
// so both give the same bits: within 2 ulp of expf over [-87, 88]; below -87.33 it returns 0, above 88 it
// returns exp(88) (never inf or NaN for a finite input). tests/test_vmath.c checks both.
#ifndef KVLAB_SIMD_H
#define KVLAB_SIMD_H

#include <math.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define SIMD_EXP_LO -87.33654f
#define SIMD_EXP_HI 88.0f
#define SIMD_LOG2E 1.44269504088896341f
#define SIMD_LN2_HI 0.693359375f
#define SIMD_LN2_LO -2.12194440e-4f
#define SIMD_P0 1.9875691500e-4f
#define SIMD_P1 1.3981999507e-3f
#define SIMD_P2 8.3334519073e-3f
#define SIMD_P3 4.1665795894e-2f
#define SIMD_P4 1.6666665459e-1f
#define SIMD_P5 5.0000001201e-1f

// exp(x) = 2^n * e^r, n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), e^r by the cephes expf
// polynomial. x is clamped to [EXP_LO, EXP_HI] so 2^n stays a normal float; below EXP_LO the result is 0.
static inline float simd_exp_scalar(float x) {
    if (!(x >= SIMD_EXP_LO)) return 0.0f; // also NaN -> 0: softmax inputs are finite by contract
    if (x > SIMD_EXP_HI) x = SIMD_EXP_HI;
    float n = nearbyintf(x * SIMD_LOG2E);
    float r = fmaf(-n, SIMD_LN2_HI, x);
    r = fmaf(-n, SIMD_LN2_LO, r);
    float p = SIMD_P0;
    p = fmaf(p, r, SIMD_P1);
    p = fmaf(p, r, SIMD_P2);
    p = fmaf(p, r, SIMD_P3);
    p = fmaf(p, r, SIMD_P4);
    p = fmaf(p, r, SIMD_P5);
    float r2 = r * r;
    p = fmaf(p, r2, r) + 1.0f;
    union {
        int i;
        float f;
    } two_n = {.i = ((int)n + 127) << 23};
    return p * two_n.f;
}

#if defined(__AVX512F__)
#define VF_W 16
typedef __m512 vf;
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_sqrt(vf a) { return _mm512_sqrt_ps(a); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline float vf_hsum(vf v) { return _mm512_reduce_add_ps(v); }
static inline float vf_hmax(vf v) { return _mm512_reduce_max_ps(v); }
// vf_exp's pieces: fnmadd = c - a b; round to nearest; p * 2^n for integral n in [-126, 127]; 0 where x < lo
static inline vf vf_fnmadd(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }
static inline vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vf_times_pow2(vf p, vf n) {
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
static inline vf vf_zero_where_below(vf y, vf x, float lo) {
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_NGE_UQ), _mm512_setzero_ps());
}
// Lane masks for partial vectors: lanes [0, n) of a vector (n clamped to [0, VF_W]); masked-off lanes of a load
// read no memory and are zero, masked-off lanes of a store write none.
typedef __mmask16 vmask;
static inline vmask vmask_first(int n) { return n <= 0 ? 0 : n >= 16 ? 0xFFFF : (vmask)((1u << n) - 1); }
static inline vf vf_load_mask(const float *p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void vf_store_mask(float *p, vf v, vmask m) { _mm512_mask_storeu_ps(p, m, v); }
static inline vf vf_select(vmask m, vf a, vf b) { return _mm512_mask_blend_ps(m, b, a); } // m ? a : b
#elif defined(__AVX2__)
#define VF_W 8
typedef __m256 vf;
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_sqrt(vf a) { return _mm256_sqrt_ps(a); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline float vf_hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float vf_hmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vf vf_fnmadd(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
static inline vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf vf_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vf_times_pow2(vf p, vf n) {
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline vf vf_zero_where_below(vf y, vf x, float lo) {
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_NGE_UQ), y);
}
typedef __m256i vmask;
static inline vmask vmask_first(int n) {
    n = n < 0 ? 0 : n > 8 ? 8 : n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf vf_load_mask(const float *p, vmask m) { return _mm256_maskload_ps(p, m); }
static inline void vf_store_mask(float *p, vf v, vmask m) { _mm256_maskstore_ps(p, m, v); }
static inline vf vf_select(vmask m, vf a, vf b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)); }
#else
#define VF_W 0
#endif

#if VF_W
// simd_exp_scalar's steps on VF_W lanes (the same operations in the same order, so the same bits).
static inline vf vf_exp(vf x) {
    vf xc = vf_min(x, vf_set1(SIMD_EXP_HI));
    vf n = vf_round(vf_mul(xc, vf_set1(SIMD_LOG2E)));
    vf r = vf_fnmadd(n, vf_set1(SIMD_LN2_HI), xc);
    r = vf_fnmadd(n, vf_set1(SIMD_LN2_LO), r);
    vf p = vf_set1(SIMD_P0);
    p = vf_fmadd(p, r, vf_set1(SIMD_P1));
    p = vf_fmadd(p, r, vf_set1(SIMD_P2));
    p = vf_fmadd(p, r, vf_set1(SIMD_P3));
    p = vf_fmadd(p, r, vf_set1(SIMD_P4));
    p = vf_fmadd(p, r, vf_set1(SIMD_P5));
    p = vf_add(vf_fmadd(p, vf_mul(r, r), r), vf_set1(1.0f));
    return vf_zero_where_below(vf_times_pow2(p, n), x, SIMD_EXP_LO);
}
#endif

#endif
