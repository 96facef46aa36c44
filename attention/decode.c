// One new query per head against the cached keys and values (the decode step). Per head: the scores are a
// matrix-vector product over the head's cached keys (common/matvec.h), the softmax uses the vectorised exp
// of common/vmath.h, and the output is a weighted sum of the cached values kept in registers. Heads are shared
// across threads (common/pool.h) when the cache is long enough for that to pay.
#include "attention.h"

#include <math.h>

#include "../common/matvec.h"
#include "../common/pool.h"
#include "../common/simd.h"
#include "../common/vmath.h"

void softmax_inplace_cpu(float *p, int n) { vmath_softmax(p, (size_t)n); }

#if VF_W
#define UNROLL _Pragma("GCC unroll 4")

// Columns [c, c + VF_W * NB) of out = sum_t p[t] * v[t], two positions per step into separate accumulators
// (twice the independent FMA chains), in vector registers. NB is a constant at every call; with `masked`, one
// block whose lanes past the row's end are masked off.
static inline __attribute__((always_inline)) void wsum_cols(float *out, const float *p, const float *v, int Tc,
                                                           int HD, int c, const int NB, const int masked) {
    vmask m = vmask_first(HD - c);
    vf a0[4], a1[4];
    UNROLL
    for (int b = 0; b < NB; b++) a0[b] = a1[b] = vf_set1(0.0f);
    int t = 0;
    for (; t + 2 <= Tc; t += 2) {
        vf p0 = vf_set1(p[t]), p1 = vf_set1(p[t + 1]);
        const float *v0 = v + (size_t)t * HD + c, *v1 = v0 + HD;
        UNROLL
        for (int b = 0; b < NB; b++) {
            a0[b] = vf_fmadd(p0, masked ? vf_load_mask(v0, m) : vf_load(v0 + b * VF_W), a0[b]);
            a1[b] = vf_fmadd(p1, masked ? vf_load_mask(v1, m) : vf_load(v1 + b * VF_W), a1[b]);
        }
    }
    if (t < Tc) {
        vf p0 = vf_set1(p[t]);
        const float *v0 = v + (size_t)t * HD + c;
        UNROLL
        for (int b = 0; b < NB; b++) a0[b] = vf_fmadd(p0, masked ? vf_load_mask(v0, m) : vf_load(v0 + b * VF_W), a0[b]);
    }
    UNROLL
    for (int b = 0; b < NB; b++) {
        if (masked)
            vf_store_mask(out + c, vf_add(a0[b], a1[b]), m);
        else
            vf_store(out + c + b * VF_W, vf_add(a0[b], a1[b]));
    }
}
#endif

// out (HD) = sum over t < Tc of p[t] * v[t * HD .. t * HD + HD)
static void weighted_sum(float *out, const float *p, const float *v, int Tc, int HD) {
    int c = 0;
#if VF_W
    for (; c + 4 * VF_W <= HD; c += 4 * VF_W) wsum_cols(out, p, v, Tc, HD, c, 4, 0);
    for (; c + 2 * VF_W <= HD; c += 2 * VF_W) wsum_cols(out, p, v, Tc, HD, c, 2, 0);
    for (; c + VF_W <= HD; c += VF_W) wsum_cols(out, p, v, Tc, HD, c, 1, 0);
    if (c < HD) wsum_cols(out, p, v, Tc, HD, c, 1, 1);
#else
    for (; c < HD; c++) {
        float s = 0.0f;
        for (int t = 0; t < Tc; t++) s += p[t] * v[(size_t)t * HD + c];
        out[c] = s;
    }
#endif
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
