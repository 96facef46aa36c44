// The CUDA-only attention variants that have no CPU twin in the ops table: flash attention (tiled, online
// softmax, no (T, T) matrix in device memory) for training, and decode against a group-quantized cache with
// the dequantization fused into the kernel; and the naive attention_forward/backward_cuda and the fp32
// attention_decode_cuda that the ops table (layers/ops_cuda.cu) takes.
//
// Every pointer is a device pointer; every op is queued on cuda_stream() (asynchronous). Plain C: callers
// never need CUDA headers. Defined only in builds with CUDA (KVLAB_CUDA).
#ifndef KVLAB_ATTENTION_CUDA_H
#define KVLAB_ATTENTION_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

void attention_forward_cuda(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                            int NH, int NKV, int HD);
void attention_backward_cuda(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                             const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int HD);
void attention_decode_cuda(float *out, float *att, const float *q, const float *kc, const float *vc, int Tc,
                           size_t head_stride, int NH, int NKV, int HD);

// The decode kernels' shared memory (attention/decode.cu's pass 1, one block per chunk of cached rows and kv
// head): the group's R = NH/NKV queries, ATTENTION_DECODE_KROWS key rows per warp, the chunk's scores per query head, the P V
// accumulators, a tile of value rows and each head's max and sum. The chunk is halved down to
// ATTENTION_DECODE_CHUNK_FLOOR rows while this exceeds ATTENTION_DECODE_SMEM_MAX, the kernel's own limit (so
// the bits depend on the shape only): a GPU must let a block opt in to 96 KB (compute capability 7.0, 8.x,
// 9.x); a shape that does not fit even then is refused (attention_decode_fits). These two are inline, so C
// code asks them in any build.
#define ATTENTION_DECODE_WARPS 4
#define ATTENTION_DECODE_KROWS 4  // key rows a warp loads at a time
#define ATTENTION_DECODE_VTILE 16 // value rows staged at a time
#define ATTENTION_DECODE_CHUNK_FLOOR 16
#define ATTENTION_DECODE_SMEM_MAX (96 * 1024)

static inline size_t attention_decode_smem_bytes(int R, int HD, int chunk) {
    size_t floats = (size_t)R * (2 * (size_t)HD + (size_t)chunk + 2) +
                    (size_t)HD * (ATTENTION_DECODE_WARPS * ATTENTION_DECODE_KROWS + ATTENTION_DECODE_VTILE);
    return floats * sizeof(float);
}

// 1 when the decode kernels (attention_decode_cuda, _q_cuda, _kv_cuda) take R query heads per kv head of HD
// values; 0 when they would need more than ATTENTION_DECODE_SMEM_MAX bytes of shared memory (the launchers
// abort on such a shape).
static inline int attention_decode_fits(int R, int HD) {
    return attention_decode_smem_bytes(R, HD, ATTENTION_DECODE_CHUNK_FLOOR) <= ATTENTION_DECODE_SMEM_MAX;
}

// Largest head dimension the flash kernels take (any HD in 1..ATTENTION_FLASH_MAX_HD; a multiple of 4 wastes
// nothing, other sizes are zero-padded in shared memory).
#define ATTENTION_FLASH_MAX_HD 128

// Causal flash attention, same function as attention_forward_cuda: q (B,T,NH,HD), k and v (B,T,NKV,HD), query
// head h reads kv head h/(NH/NKV), scale 1/sqrt(HD). out (B,T,NH,HD) overwritten; lse (B,NH,T) receives the
// natural log of each row's softmax denominator, log sum_s exp(scale q.k_s), for the backward pass.
void attention_flash_forward_cuda(float *out, float *lse, const float *q, const float *k, const float *v, int B,
                                  int T, int NH, int NKV, int HD);

// Backward of attention_flash_forward_cuda from its saved out and lse: dq (B,T,NH,HD), dk and dv (B,T,NKV,HD)
// ACCUMULATE (+=). Deterministic (no atomics): dk/dv are owned per (batch, kv head, key tile) and sum the
// group's query heads in order; dq is a second pass owned per (batch, head, query tile). Allocates a
// (B,NH,T) float workspace with cudaMallocAsync on the op stream and frees it the same way.
void attention_flash_backward_cuda(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                   const float *lse, const float *q, const float *k, const float *v, int B, int T,
                                   int NH, int NKV, int HD);

// attention_decode_cuda against a group-quantized cache: row t of kv head g (HD values) starts at byte
// g * head_stride_bytes + t * row_bytes of kc / vc and is stored exactly as kv/quant.h's quant_encode_row
// writes it (per group of `group` values: [scale f16][min f16][codes], little-endian, no alignment), bits
// 8, 4 or 2, group dividing HD. row_bytes is the distance between positions (>= quant_row_bytes(HD, group,
// bits)), so head-major and position-major (heads interleaved) caches both fit. Values are dequantized in the
// kernel as min + scale * code (rounded like quant_decode_row: no fused multiply-add).
// Keys must be stored as the model uses them, already rotated by RoPE (post-RoPE); if keys were also
// Hadamard-rotated before quantizing, the caller rotates q the same way. q (NH,HD), out (NH,HD) and
// att (NH,Tc) are fp32 as in attention_decode_cuda; att receives the probabilities, or is NULL (not written:
// out has the same bits either way). Tc >= 1.
void attention_decode_q_cuda(float *out, float *att, const float *q, const uint8_t *kc, const uint8_t *vc, int bits,
                             int group, int Tc, size_t head_stride_bytes, size_t row_bytes, int NH, int NKV, int HD);

// The device KV cache's two kernels (decode/device_store.c reaches them through layers/ops.h's device-only ops).
//
// attention_decode_kv_cuda: attention_decode_cuda / attention_decode_q_cuda over rows at byte strides: bits 32
// for fp32 rows (HD floats, row_bytes a multiple of 4), or 8/4/2 for kv/quant.h's group rows as in
// attention_decode_q_cuda. With rope_cos == NULL the keys are used as stored (rotated on entry). Otherwise they
// are stored before RoPE and rotated as they are read, with the (positions, HD/2) tables rope_cos/rope_sin
// (kv/cache.c's: (float)cos and (float)sin of rope_angle), row t to its position in a StreamingLLM cache: rows
// [0, sink) at positions 0..sink-1; rows [sink, Tc) a ring of `window` rows whose newest is row sink + newest,
// the row of age a at position Tc - 1 - a (window 0: row t at position t). att (NH, Tc) receives the
// probabilities, or is NULL: the kernels then skip writing the scores and rewriting them, and out has the same
// bits as with att (the device KV cache passes NULL: nothing reads them). Deterministic; Tc >= 1.
void attention_decode_kv_cuda(float *out, float *att, const float *q, const uint8_t *kc, const uint8_t *vc, int bits,
                              int group, int Tc, size_t head_stride_bytes, size_t row_bytes, int NH, int NKV, int HD,
                              const float *rope_cos, const float *rope_sin, int sink, int window, int newest);

// kv_encode_rows_cuda: n rows of HD floats (row i at src + i * src_stride floats) into dst (row i at byte
// i * dst_stride): bits 32 copies the floats; bits 8, 4 or 2 writes exactly the bytes kv/quant.h's
// quant_encode_row writes (groups of `group` values dividing HD; directed fp16 rounding of min and scale,
// codes rounded half to even), byte for byte.
void kv_encode_rows_cuda(uint8_t *dst, size_t dst_stride, const float *src, size_t src_stride, int n, int HD,
                         int group, int bits);

#ifdef __cplusplus
}
#endif

#endif
