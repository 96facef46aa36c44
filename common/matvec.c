// matvec.h: each output is the dot product of an input row with a weight row, computed for several weight
// rows at once so every weight vector loaded serves all inputs of the group (register blocking: R weight rows x
// N inputs accumulators). Rows not a multiple of the vector width end with a masked (AVX-512) or scalar (AVX2)
// tail. A leftover row is reduced by the same tree as a block's rows, so a row's bits do not depend on where
// it falls. The summation order differs from a BLAS sgemm's: results agree with it to float rounding.
#include "matvec.h"

#include "common.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))
// Loops over the N inputs and R weight rows unroll fully, so the accumulator arrays live in registers.
#define UNROLL _Pragma("GCC unroll 8")

#if defined(__AVX512F__)

// The four horizontal sums of a, b, c, d as one 4-float vector (a transposing reduction: 9 shuffles and adds
// instead of 4 full reductions).
ALWAYS_INLINE __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    // 128-bit lanes: [a0+a2, a1+a3, b0+b2, b1+b3] and the same for c, d
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    // lane k holds 4 partial sums of vector k (a, b, c, d)
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E)); // swap pairs within each lane
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1)); // swap neighbours: every element is its lane's sum
    __m512i first = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0); // element 0 of each lane
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(first, t));
}

// out[n * ldo + o + r] = dot(x[n], w[(o + r)]) for r < R (4 or 8), n < N; N and R are compile-time constants
// at every call so the accumulators stay in registers.
ALWAYS_INLINE void block_rows(float *out, size_t ldo, const float *x, const float *w, int IN, int o, const int N,
                              const int R) {
    __m512 acc[4][8];
    UNROLL
    for (int n = 0; n < N; n++)
        UNROLL
        for (int r = 0; r < R; r++) acc[n][r] = _mm512_setzero_ps();
    const float *wr = w + (size_t)o * IN;
    int i = 0;
    for (; i + 16 <= IN; i += 16) {
        __m512 wv[8];
        UNROLL
        for (int r = 0; r < R; r++) wv[r] = _mm512_loadu_ps(wr + (size_t)r * IN + i);
        UNROLL
        for (int n = 0; n < N; n++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)n * IN + i);
            UNROLL
            for (int r = 0; r < R; r++) acc[n][r] = _mm512_fmadd_ps(wv[r], xv, acc[n][r]);
        }
    }
    if (i < IN) {
        __mmask16 m = (__mmask16)((1u << (IN - i)) - 1);
        __m512 wv[8];
        UNROLL
        for (int r = 0; r < R; r++) wv[r] = _mm512_maskz_loadu_ps(m, wr + (size_t)r * IN + i);
        UNROLL
        for (int n = 0; n < N; n++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)n * IN + i);
            UNROLL
            for (int r = 0; r < R; r++) acc[n][r] = _mm512_fmadd_ps(wv[r], xv, acc[n][r]);
        }
    }
    UNROLL
    for (int n = 0; n < N; n++)
        UNROLL
        for (int r = 0; r < R; r += 4)
            _mm_storeu_ps(out + (size_t)n * ldo + o + r, sum4(acc[n][r], acc[n][r + 1], acc[n][r + 2], acc[n][r + 3]));
}

// One weight row (the rows left over after the blocks), reduced by the same tree as a block's rows, so a
// row's bits do not depend on the block it falls in (nor on how rows are split across threads).
ALWAYS_INLINE void one_row(float *out, size_t ldo, const float *x, const float *w, int N, int IN, int o) {
    const float *wr = w + (size_t)o * IN;
    const __m512 z = _mm512_setzero_ps();
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * IN;
        __m512 acc = z;
        int i = 0;
        for (; i + 16 <= IN; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(wr + i), _mm512_loadu_ps(xn + i), acc);
        if (i < IN) {
            __mmask16 m = (__mmask16)((1u << (IN - i)) - 1);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, wr + i), _mm512_maskz_loadu_ps(m, xn + i), acc);
        }
        out[(size_t)n * ldo + o] = _mm_cvtss_f32(sum4(acc, z, z, z));
    }
}

#elif defined(__AVX2__) && defined(__FMA__)

ALWAYS_INLINE __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b); // [a01 a23 b01 b23 | a45 a67 b45 b67]
    __m256 cd = _mm256_hadd_ps(c, d);
    __m256 t = _mm256_hadd_ps(ab, cd); // [a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7]
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// As the AVX-512 version; the scalar tail (IN % 8 elements) is added after the reduction.
ALWAYS_INLINE void block_rows(float *out, size_t ldo, const float *x, const float *w, int IN, int o, const int N,
                              const int R) {
    __m256 acc[4][8];
    UNROLL
    for (int n = 0; n < N; n++)
        UNROLL
        for (int r = 0; r < R; r++) acc[n][r] = _mm256_setzero_ps();
    const float *wr = w + (size_t)o * IN;
    int i = 0;
    for (; i + 8 <= IN; i += 8) {
        __m256 wv[8];
        UNROLL
        for (int r = 0; r < R; r++) wv[r] = _mm256_loadu_ps(wr + (size_t)r * IN + i);
        UNROLL
        for (int n = 0; n < N; n++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)n * IN + i);
            UNROLL
            for (int r = 0; r < R; r++) acc[n][r] = _mm256_fmadd_ps(wv[r], xv, acc[n][r]);
        }
    }
    UNROLL
    for (int n = 0; n < N; n++)
        UNROLL
        for (int r = 0; r < R; r += 4) {
            float s[4];
            _mm_storeu_ps(s, sum4(acc[n][r], acc[n][r + 1], acc[n][r + 2], acc[n][r + 3]));
            for (int j = i; j < IN; j++)
                for (int k = 0; k < 4; k++) s[k] += wr[(size_t)(r + k) * IN + j] * x[(size_t)n * IN + j];
            for (int k = 0; k < 4; k++) out[(size_t)n * ldo + o + r + k] = s[k];
        }
}

ALWAYS_INLINE void one_row(float *out, size_t ldo, const float *x, const float *w, int N, int IN, int o) {
    const float *wr = w + (size_t)o * IN;
    const __m256 z = _mm256_setzero_ps();
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * IN;
        __m256 acc = z;
        int i = 0;
        for (; i + 8 <= IN; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i), _mm256_loadu_ps(xn + i), acc);
        float s = _mm_cvtss_f32(sum4(acc, z, z, z)); // the blocks' tree and tail order: the same bits
        for (; i < IN; i++) s += wr[i] * xn[i];
        out[(size_t)n * ldo + o] = s;
    }
}

#else // scalar: one dot at a time in 8 interleaved partial sums (as 8 vector lanes: shorter sum chains, so
      // about the vector paths' rounding error rather than a serial sum's)

ALWAYS_INLINE void block_rows(float *out, size_t ldo, const float *x, const float *w, int IN, int o, const int N,
                              const int R) {
    for (int r = 0; r < R; r++) {
        const float *wr = w + (size_t)(o + r) * IN;
        for (int n = 0; n < N; n++) {
            const float *xn = x + (size_t)n * IN;
            float part[8] = {0};
            for (int i = 0; i < IN; i++) part[i & 7] += wr[i] * xn[i];
            out[(size_t)n * ldo + o + r] =
                ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
        }
    }
}

ALWAYS_INLINE void one_row(float *out, size_t ldo, const float *x, const float *w, int N, int IN, int o) {
    block_rows(out, ldo, x, w, IN, o, N, 1);
}

#endif

// Rows [o0, o1) with N a constant: blocks of R rows (8 for one input, where 4 would leave the FMA units
// waiting on 4 dependency chains; 4 otherwise), then single rows.
ALWAYS_INLINE void rows_n(float *out, size_t ldo, const float *x, const float *w, int IN, int o0, int o1,
                          const int N) {
    const int R = N == 1 ? 8 : 4;
    int o = o0;
    for (; o + R <= o1; o += R) block_rows(out, ldo, x, w, IN, o, N, R);
    if (R == 8 && o + 4 <= o1) {
        block_rows(out, ldo, x, w, IN, o, N, 4);
        o += 4;
    }
    for (; o < o1; o++) one_row(out, ldo, x, w, N, IN, o);
}

void matvec_rows(float *out, size_t ldo, const float *inp, const float *weight, int N, int IN, int o0, int o1) {
    CHECK(N >= 1 && IN >= 1 && o0 >= 0 && o0 <= o1);
    // inputs four at a time (more accumulators than registers otherwise); each group rereads the weight rows
    for (int n0 = 0; n0 < N; n0 += 4) {
        float *o = out + (size_t)n0 * ldo;
        const float *x = inp + (size_t)n0 * IN;
        switch (N - n0) {
        case 1: rows_n(o, ldo, x, weight, IN, o0, o1, 1); break;
        case 2: rows_n(o, ldo, x, weight, IN, o0, o1, 2); break;
        case 3: rows_n(o, ldo, x, weight, IN, o0, o1, 3); break;
        default: rows_n(o, ldo, x, weight, IN, o0, o1, 4); break;
        }
    }
}
