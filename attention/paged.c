// Decode attention over a paged cache (PagedAttention on the CPU): the same scores, softmax and weighted sum
// as attention_decode_cpu, but keys and values are read block by block through the sequence's block table,
// never gathered into a contiguous copy. Each block's (rows, HD) keys and values are one CBLAS sgemv.
#include <cblas.h>
#include <math.h>

#include "../common/common.h"
#include "../kv/paged.h"
#include "../layers/cpu_ops.h"

void attention_decode_paged(float *out, float *att, const float *q, const KVPool *pool, const KVSeq *seq,
                            int layer, int NH, int NKV, int HD) {
    int Tc = seq->n_tokens, B = pool->block, rep = NH / NKV;
    CHECK(Tc > 0 && NKV == pool->n_kv_head && HD == pool->head_dim && NH % NKV == 0);
    CHECK(layer >= 0 && layer < pool->n_layer);
    int n_blocks = (Tc + B - 1) / B;
    float scale = 1.0f / sqrtf((float)HD);
    for (int h = 0; h < NH; h++) {
        int g = h / rep;
        float *p = att + (size_t)h * Tc;
        // scores (Tc) = scale * K_g (Tc, HD) @ q_h, one block of rows at a time
        for (int i = 0; i < n_blocks; i++) {
            int rows = Tc - i * B < B ? Tc - i * B : B;
            const float *kb = kv_pool_k(pool, seq->table[i], layer, g);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, HD, scale, kb, HD, q + h * HD, 1, 0.0f, p + i * B, 1);
        }
        softmax_inplace_cpu(p, Tc);
        // out_h (HD) = sum over blocks of V_block^T (HD, rows) @ p_block
        for (int i = 0; i < n_blocks; i++) {
            int rows = Tc - i * B < B ? Tc - i * B : B;
            const float *vb = kv_pool_v(pool, seq->table[i], layer, g);
            cblas_sgemv(CblasRowMajor, CblasTrans, rows, HD, 1.0f, vb, HD, p + i * B, 1, i ? 1.0f : 0.0f,
                        out + h * HD, 1);
        }
    }
}
