// Causal self-attention for NH query heads over NKV key/value heads (MHA: NKV = NH, GQA: 1 < NKV < NH,
// MQA: NKV = 1); query head h reads kv head h / (NH / NKV). Per (batch, head) the two products are CBLAS
// sgemm calls on strided views (lda = row width), so no head is ever copied out. The forward parallelises
// over batch x query heads; the backward over batch x kv heads, because every query head of a group adds
// into the same dK/dV rows (a fixed order, so results are deterministic).
#include "attention.h"
#include "flash_cpu.h"

#include <cblas.h>
#include <math.h>

// The softmax over one row of P (in place), returning how many entries it read: the max and exp passes look
// at s <= t only, the whole row of T is written (zeros above the diagonal). For the IO count the row is one
// slow-memory read of what it looks at and one write: its three passes run over a row that stays in fast
// memory, as in the FlashAttention paper's accounting of its Algorithm 0.
static int softmax_causal_row(float *row, int t, int T) {
    float mx = row[0];
    for (int s = 1; s <= t; s++) mx = row[s] > mx ? row[s] : mx;
    float sum = 0.0f;
    for (int s = 0; s <= t; s++) {
        row[s] = expf(row[s] - mx);
        sum += row[s];
    }
    float inv = 1.0f / sum;
    for (int s = 0; s <= t; s++) row[s] *= inv;
    for (int s = t + 1; s < T; s++) row[s] = 0.0f;
    return t + 1;
}

void attention_forward_counted_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B,
                                   int T, int NH, int NKV, int HD, AttnIO *io) {
    int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    uint64_t th = (uint64_t)T * HD * sizeof(float), tt = (uint64_t)T * T * sizeof(float);
#pragma omp parallel
    {
        AttnIO local = {0}; // this thread's counts (io NULL: unused)
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                const float *qh = q + (size_t)b * T * C + h * HD;                 // (T, HD) stride C
                const float *kh = k + (size_t)b * T * KVC + (h / rep) * HD;       // (T, HD) stride KVC
                const float *vh = v + (size_t)b * T * KVC + (h / rep) * HD;
                float *p = att + ((size_t)b * NH + h) * T * T;                    // (T, T)
                // scores = scale * Q K^T (the upper triangle is computed and then masked): reads Q, K, writes S
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HD, scale, qh, C, kh, KVC, 0.0f, p, T);
                uint64_t s_read = 0;
                for (int t = 0; t < T; t++) s_read += (uint64_t)softmax_causal_row(p + (size_t)t * T, t, T);
                // out_h (T, HD) = P (T, T) @ V (T, HD): reads all of P and V, writes O
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HD, T, 1.0f, p, T, vh, KVC, 0.0f,
                            out + (size_t)b * T * C + h * HD, C);
                if (io) {
                    local.q_load += th, local.k_load += th, local.v_load += th, local.o_store += th;
                    local.s_store += tt, local.s_load += s_read * sizeof(float);
                    local.p_store += tt, local.p_load += tt;
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

// With P = softmax(S), S = scale * Q K^T, O = P V:
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),  dQ += scale dS K,  dK += scale dS^T Q.
void attention_backward_cpu(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                            const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int HD) {
    int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < NKV; g++) {
            const float *kg = k + (size_t)b * T * KVC + g * HD;
            const float *vg = v + (size_t)b * T * KVC + g * HD;
            float *dkg = dk + (size_t)b * T * KVC + g * HD;
            float *dvg = dv + (size_t)b * T * KVC + g * HD;
            for (int h = g * rep; h < (g + 1) * rep; h++) {
                const float *p = att + ((size_t)b * NH + h) * T * T;
                float *ds = scratch + ((size_t)b * NH + h) * T * T;
                const float *doh = dout + (size_t)b * T * C + h * HD;
                const float *qh = q + (size_t)b * T * C + h * HD;
                float *dqh = dq + (size_t)b * T * C + h * HD;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HD, T, 1.0f, p, T, doh, C, 1.0f, dvg, KVC);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HD, 1.0f, doh, C, vg, KVC, 0.0f, ds, T);
                for (int t = 0; t < T; t++) {
                    const float *pr = p + (size_t)t * T;
                    float *dr = ds + (size_t)t * T;
                    float dot = 0.0f;
                    for (int s = 0; s <= t; s++) dot += pr[s] * dr[s];
                    for (int s = 0; s <= t; s++) dr[s] = pr[s] * (dr[s] - dot);
                    for (int s = t + 1; s < T; s++) dr[s] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HD, T, scale, ds, T, kg, KVC, 1.0f, dqh, C);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HD, T, scale, ds, T, qh, C, 1.0f, dkg, KVC);
            }
        }
    }
}
