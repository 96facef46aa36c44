// Decode attention over a paged cache (PagedAttention on the CPU): the same scores, softmax and weighted sum
// as attention_decode_cpu, but keys and values are read block by block through the sequence's block table,
// never gathered into a contiguous copy. An fp32 pool is read in place, each block's (rows, HD) keys and
// values one CBLAS sgemv per head; an encoded pool (fp16, fp8, int) is attended straight from its rows
// through the codec's score and accumulate hooks (kv/packed.h: each value decoded inside the loop), a codec
// without hooks decodes one block's rows into the pool's scratch. Blocks a selection policy dropped are
// skipped.
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "../common/common.h"
#include "../layers/cpu_ops.h"
#include "step.h"

// Block b's key (value 0) or value rows for kv head g: in place for fp32, else decoded into the pool's scratch.
static const float *block_rows(const KVPool *pool, int value, int b, int layer, int g, int rows) {
    if (kv_pool_is_f32(pool)) return value ? kv_pool_v(pool, b, layer, g) : kv_pool_k(pool, b, layer, g);
    float *dst = pool->scratch + (size_t)value * pool->block * pool->head_dim;
    kv_pool_read(pool, value, b, layer, g, rows, dst);
    return dst;
}

void attention_decode_paged(float *out, float *att, const float *q, const KVPool *pool, const KVSeq *seq,
                            int layer, int NH, int NKV, int HD) {
    int Tc = kv_paged_held(pool, seq), rep = NH / NKV, n_blocks = kv_paged_blocks(seq);
    CHECK(Tc > 0 && NKV == pool->n_kv_head && HD == pool->head_dim && NH % NKV == 0);
    CHECK(layer >= 0 && layer < pool->n_layer);
    float scale = 1.0f / sqrtf((float)HD);
    const KVCodec *codec = pool->codec;
    int packed = !kv_pool_is_f32(pool) && codec->score && codec->accumulate;
    if (packed) memset(out, 0, (size_t)NH * HD * sizeof(float));
    // kv head by kv head, so a decoded block serves its whole group of query heads
    for (int g = 0; g < NKV; g++) {
        for (int pass = 0; pass < 2; pass++) { // 0: scores; 1: softmax, then the weighted sum of values
            if (pass == 1)
                for (int h = g * rep; h < (g + 1) * rep; h++) softmax_inplace_cpu(att + (size_t)h * Tc, Tc);
            int off = 0;
            for (int i = 0; i < n_blocks; i++) {
                int rows = kv_paged_rows(pool, seq, i); // 0: dropped, or past a view's n_tokens
                if (!rows) continue;
                if (packed) { // encoded rows, read in place
                    const uint8_t *enc = kv_pool_rows(pool, pass, seq->table[i], layer, g);
                    for (int h = g * rep; h < (g + 1) * rep; h++) {
                        float *p = att + (size_t)h * Tc + off;
                        if (pass == 0) {
                            codec->score(codec, p, q + h * HD, enc, pool->row_bytes, rows, HD, pool->group);
                            for (int s = 0; s < rows; s++) p[s] *= scale;
                        } else {
                            codec->accumulate(codec, out + h * HD, p, enc, pool->row_bytes, rows, HD, pool->group);
                        }
                    }
                    off += rows;
                    continue;
                }
                const float *rows_g = block_rows(pool, pass, seq->table[i], layer, g, rows); // keys, then values
                for (int h = g * rep; h < (g + 1) * rep; h++) {
                    float *p = att + (size_t)h * Tc + off;
                    if (pass == 0)
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, HD, scale, rows_g, HD, q + h * HD, 1, 0.0f, p, 1);
                    else
                        cblas_sgemv(CblasRowMajor, CblasTrans, rows, HD, 1.0f, rows_g, HD, p, 1, off ? 1.0f : 0.0f,
                                    out + h * HD, 1);
                }
                off += rows;
            }
        }
    }
}
