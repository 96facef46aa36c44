// Causal self-attention for NH query heads over NKV key/value heads (MHA: NKV = NH, GQA: 1 < NKV < NH,
// MQA: NKV = 1); query head h reads kv head h / (NH / NKV). The products are CBLAS sgemm calls on strided
// views (lda = row width), so no head is ever copied out.
//
// Causal blocks: the T query rows are cut into blocks of ATT_ROWS, and a block multiplies only against the keys
// it can see (rows [r0, r1) against keys [0, r1)), so of the (T, T) score matrix only the lower block triangle
// is ever computed: about half of it for long T (T = 64 in blocks of 32: 75%; T = 1024: 52%). The masked entries inside
// a diagonal block are zeros in P and dS, so the results are exact (the skipped products would only add zeros).
// The backward does the same: dP and dQ by query blocks, dV and dK by key blocks (key block [c0, c1) is seen
// by the query rows [c0, T) only).
//
// The forward parallelises over batch x query heads; the backward over batch x kv heads, because every query
// head of a group adds into the same dK/dV rows (a fixed order, so results do not depend on the thread count).
// The row softmax and its backward run through common/vmath.h.
#include "attention.h"
#include "flash_cpu.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "../common/par.h"
#include "../common/vmath.h"

#define ATT_ROWS 32 // query rows per causal block (measured at T 64 and 128: 16 and 64 no better)

// The softmax over one row of P (in place), returning how many entries it read: the max and exp passes look
// at s <= t only, the whole row of T is written (zeros above the diagonal). For the IO count the row is one
// slow-memory read of what it looks at and one write: its three passes run over a row that stays in fast
// memory, as in the FlashAttention paper's accounting of its Algorithm 0.
static int softmax_causal_row(float *row, int t, int T) {
    int n = t + 1;
    float sum = vmath_exp_shift_sum(row, n, vmath_max(row, n));
    vmath_scale(row, n, 1.0f / sum);
    memset(row + n, 0, (size_t)(T - n) * sizeof(float));
    return n;
}

// Multiply-adds of one (batch, head)'s forward: what decides whether the parallel region pays.
static size_t head_work(int T, int HD) { return (size_t)T * (T + 1) * HD; }

void attention_forward_counted_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B,
                                   int T, int NH, int NKV, int HD, AttnIO *io) {
    int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    uint64_t f = sizeof(float), th = (uint64_t)T * HD * f, tt = (uint64_t)T * T * f;
#pragma omp parallel if (par_worth((size_t)B * NH * head_work(T, HD)))
    {
        AttnIO local = {0}; // this thread's counts (io NULL: unused)
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                const float *qh = q + (size_t)b * T * C + h * HD;                 // (T, HD) stride C
                const float *kh = k + (size_t)b * T * KVC + (h / rep) * HD;       // (T, HD) stride KVC
                const float *vh = v + (size_t)b * T * KVC + (h / rep) * HD;
                float *oh = out + (size_t)b * T * C + h * HD;
                float *p = att + ((size_t)b * NH + h) * T * T;                    // (T, T)
                uint64_t s_read = 0, kv_rows = 0, s_done = 0;
                for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
                    int nr = T - r0 < ATT_ROWS ? T - r0 : ATT_ROWS, r1 = r0 + nr;
                    float *pb = p + (size_t)r0 * T;
                    // S[r0:r1, 0:r1] = scale * Q[r0:r1] K[0:r1]^T: reads the block's Q rows and r1 K rows
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, r1, HD, scale, qh + (size_t)r0 * C, C,
                                kh, KVC, 0.0f, pb, T);
                    for (int t = r0; t < r1; t++) s_read += (uint64_t)softmax_causal_row(p + (size_t)t * T, t, T);
                    // O[r0:r1] = P[r0:r1, 0:r1] V[0:r1]: reads that block of P and r1 V rows, writes the O rows
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, HD, r1, 1.0f, pb, T, vh, KVC, 0.0f,
                                oh + (size_t)r0 * C, C);
                    kv_rows += (uint64_t)r1;
                    s_done += (uint64_t)nr * r1;
                }
                if (io) {
                    local.q_load += th, local.o_store += th;
                    local.k_load += kv_rows * HD * f, local.v_load += kv_rows * HD * f;
                    local.s_store += s_done * f, local.s_load += s_read * f;
                    local.p_store += tt, local.p_load += s_done * f;
                }
            }
        }
        if (io) {
#pragma omp critical(attn_io_merge)
            attn_io_add(io, &local);
        }
    }
    if (io) io->intermediate_bytes += (uint64_t)B * NH * tt; // the (B, NH, T, T) buffer this call fills
}

void attention_forward_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                           int NH, int NKV, int HD) {
    attention_forward_counted_cpu(out, att, q, k, v, B, T, NH, NKV, HD, NULL);
}

// One query head's backward into its group's dK/dV rows. With P = softmax(S), S = scale * Q K^T, O = P V:
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),  dQ += scale dS K,  dK += scale dS^T Q.
// ds is this head's (T, T) scratch; only the lower block triangle of it is written and read.
static void head_backward(float *dqh, float *dkg, float *dvg, float *ds, const float *doh, const float *p,
                          const float *qh, const float *kg, const float *vg, int T, int C, int KVC, int HD,
                          float scale) {
    for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
        int nr = T - r0 < ATT_ROWS ? T - r0 : ATT_ROWS, r1 = r0 + nr;
        float *db = ds + (size_t)r0 * T;
        // dP[r0:r1, 0:r1] = dO[r0:r1] V[0:r1]^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, r1, HD, 1.0f, doh + (size_t)r0 * C, C, vg, KVC,
                    0.0f, db, T);
        for (int t = r0; t < r1; t++) {
            const float *pr = p + (size_t)t * T;
            float *dr = ds + (size_t)t * T;
            int n = t + 1;
            float dot = vmath_dot(pr, dr, n);
            for (int s = 0; s < n; s++) dr[s] = pr[s] * (dr[s] - dot);
            memset(dr + n, 0, (size_t)(r1 - n) * sizeof(float)); // the masked part of the diagonal block
        }
        // dQ[r0:r1] += scale dS[r0:r1, 0:r1] K[0:r1]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, HD, r1, scale, db, T, kg, KVC, 1.0f,
                    dqh + (size_t)r0 * C, C);
    }
    for (int c0 = 0; c0 < T; c0 += ATT_ROWS) {
        int nc = T - c0 < ATT_ROWS ? T - c0 : ATT_ROWS, m = T - c0;
        const float *pb = p + (size_t)c0 * T + c0, *dsb = ds + (size_t)c0 * T + c0; // rows [c0, T), keys [c0, c1)
        // dV[c0:c1] += P[c0:T, c0:c1]^T dO[c0:T];  dK[c0:c1] += scale dS[c0:T, c0:c1]^T Q[c0:T]
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, HD, m, 1.0f, pb, T, doh + (size_t)c0 * C, C, 1.0f,
                    dvg + (size_t)c0 * KVC, KVC);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, HD, m, scale, dsb, T, qh + (size_t)c0 * C, C, 1.0f,
                    dkg + (size_t)c0 * KVC, KVC);
    }
}

void attention_backward_cpu(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                            const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int HD) {
    int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for collapse(2) schedule(static) if (par_worth((size_t)B * NH * 2 * head_work(T, HD)))
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < NKV; g++) {
            const float *kg = k + (size_t)b * T * KVC + g * HD;
            const float *vg = v + (size_t)b * T * KVC + g * HD;
            float *dkg = dk + (size_t)b * T * KVC + g * HD;
            float *dvg = dv + (size_t)b * T * KVC + g * HD;
            for (int h = g * rep; h < (g + 1) * rep; h++) {
                size_t bh = (size_t)b * NH + h;
                head_backward(dq + (size_t)b * T * C + h * HD, dkg, dvg, scratch + bh * T * T,
                              dout + (size_t)b * T * C + h * HD, att + bh * T * T, q + (size_t)b * T * C + h * HD, kg,
                              vg, T, C, KVC, HD, scale);
            }
        }
    }
}
