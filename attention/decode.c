// One new query per head against the cached keys and values (the decode step). Per head: the scores are a
// matrix-vector product over the head's cached keys (common/matvec.h), the softmax uses the vectorised exp
// of common/vmath.h, and the output is a weighted sum of the cached values kept in registers. Heads are shared
// across threads (common/pool.h) when the cache is long enough for that to pay.
#include "attention.h"

#include <math.h>

#include "../common/matvec.h"
#include "../common/pool.h"
#include "../common/vmath.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

void softmax_inplace_cpu(float *p, int n) { vmath_softmax(p, (size_t)n); }

#if defined(__AVX512F__)
#define VW 16
typedef __m512 vf;
#define VZERO() _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, x) _mm512_storeu_ps(p, x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#elif defined(__AVX2__) && defined(__FMA__)
#define VW 8
typedef __m256 vf;
#define VZERO() _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, x) _mm256_storeu_ps(p, x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#endif

#ifdef VW
#define UNROLL _Pragma("GCC unroll 4")

// Columns [c, c + VW * NB) of out = sum_t p[t] * v[t], two positions per step into separate accumulators
// (twice the independent FMA chains), in vector registers. NB is a constant at every call.
static inline __attribute__((always_inline)) void wsum_cols(float *out, const float *p, const float *v, int Tc,
                                                           int HD, int c, const int NB) {
    vf a0[4], a1[4];
    UNROLL
    for (int b = 0; b < NB; b++) a0[b] = a1[b] = VZERO();
    int t = 0;
    for (; t + 2 <= Tc; t += 2) {
        vf p0 = VSET1(p[t]), p1 = VSET1(p[t + 1]);
        const float *v0 = v + (size_t)t * HD + c, *v1 = v0 + HD;
        UNROLL
        for (int b = 0; b < NB; b++) {
            a0[b] = VFMA(p0, VLOAD(v0 + b * VW), a0[b]);
            a1[b] = VFMA(p1, VLOAD(v1 + b * VW), a1[b]);
        }
    }
    if (t < Tc) {
        vf p0 = VSET1(p[t]);
        const float *v0 = v + (size_t)t * HD + c;
        UNROLL
        for (int b = 0; b < NB; b++) a0[b] = VFMA(p0, VLOAD(v0 + b * VW), a0[b]);
    }
    UNROLL
    for (int b = 0; b < NB; b++) VSTORE(out + c + b * VW, VADD(a0[b], a1[b]));
}
#endif

// out (HD) = sum over t < Tc of p[t] * v[t * HD .. t * HD + HD)
static void weighted_sum(float *out, const float *p, const float *v, int Tc, int HD) {
    int c = 0;
#ifdef VW
    for (; c + 4 * VW <= HD; c += 4 * VW) wsum_cols(out, p, v, Tc, HD, c, 4);
    for (; c + 2 * VW <= HD; c += 2 * VW) wsum_cols(out, p, v, Tc, HD, c, 2);
    for (; c + VW <= HD; c += VW) wsum_cols(out, p, v, Tc, HD, c, 1);
#endif
    for (; c < HD; c++) { // columns past the last whole vector
        float s = 0.0f;
        for (int t = 0; t < Tc; t++) s += p[t] * v[(size_t)t * HD + c];
        out[c] = s;
    }
}

typedef struct {
    float *out, *att;
    const float *q, *kc, *vc;
    size_t head_stride;
    int Tc, NH, NKV, HD;
} DecodeJob;

// Query head h: scores (Tc) = scale * K_g (Tc, HD) @ q_h, softmax, out_h (HD) = V_g^T (HD, Tc) @ p.
static void decode_head(void *ctx, int h) {
    const DecodeJob *j = ctx;
    int g = h / (j->NH / j->NKV);
    const float *kg = j->kc + g * j->head_stride, *vg = j->vc + g * j->head_stride;
    float *p = j->att + (size_t)h * j->Tc;
    matvec_rows(p, (size_t)j->Tc, j->q + (size_t)h * j->HD, kg, 1, j->HD, 0, j->Tc);
    vmath_scale(p, (size_t)j->Tc, 1.0f / sqrtf((float)j->HD));
    vmath_softmax(p, (size_t)j->Tc);
    weighted_sum(j->out + (size_t)h * j->HD, p, vg, j->Tc, j->HD);
}

void attention_decode_cpu(float *out, float *att, const float *q, const float *kc, const float *vc, int Tc,
                          size_t head_stride, int NH, int NKV, int HD) {
    DecodeJob job = {out, att, q, kc, vc, head_stride, Tc, NH, NKV, HD};
    pool_for(NH, (size_t)NH * Tc * HD, decode_head, &job);
}
