// One decode query per head against the cached keys and values, flash-decoding style. The Tc cached rows are
// split into chunks of DEC_CHUNK_MIN..DEC_CHUNK_MAX rows (chosen from Tc and NH only, so a shape always gives
// the same bits); pass 1 runs one block per (chunk, head): the scores (written to att), the chunk's max, its sum
// of exp(score - max) and its exp-weighted sum of V rows, into a workspace. Pass 2 runs per head: the global
// max M and sum L from the chunk partials in chunk order, out = sum_c exp(m_c - M) o_c / L, and att rewritten
// as the probabilities exp(score - M) / L. Every reduction has a fixed order: deterministic, no atomics.
//
// The cache rows are read through a small accessor, so the fp32 cache and the group-quantized cache
// (kv/quant.h's row layout, dequantized in the kernel) share one kernel.
#include <cuda_fp16.h>
#include <math.h>

#include "../common/common.h"
#include "../common/cuda_check.cuh"
#include "attention_cuda.h"

#define FULL_MASK 0xffffffffu
#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_CHUNK_MIN 64
#define DEC_CHUNK_MAX 1024
#define DEC_TARGET_BLOCKS 512 // pass-1 blocks to aim for before chunks grow past DEC_CHUNK_MIN

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Block-wide reductions over DEC_THREADS threads; every thread gets the same result (the warp totals are
// combined in warp order). sw holds DEC_WARPS floats; the leading barrier lets a call reuse it.
static __device__ float dec_block_max(float x, float *sw) {
    x = warp_max(x);
    __syncthreads();
    if (threadIdx.x % 32 == 0) sw[threadIdx.x / 32] = x;
    __syncthreads();
    float r = sw[0];
    for (int w = 1; w < DEC_WARPS; w++) r = fmaxf(r, sw[w]);
    return r;
}

static __device__ float dec_block_sum(float x, float *sw) {
    x = warp_sum(x);
    __syncthreads();
    if (threadIdx.x % 32 == 0) sw[threadIdx.x / 32] = x;
    __syncthreads();
    float r = sw[0];
    for (int w = 1; w < DEC_WARPS; w++) r += sw[w];
    return r;
}

// fp32 cache: kv head g's rows (Tc, HD) at g * head_stride floats.
struct DecodeRowsF32 {
    const float *k, *v;
    size_t head_stride;
    int HD;
    __device__ float key(int g, int t, int d) const { return k[(size_t)g * head_stride + (size_t)t * HD + d]; }
    __device__ float val(int g, int t, int d) const { return v[(size_t)g * head_stride + (size_t)t * HD + d]; }
};

// Group-quantized cache (kv/quant.h): row t of kv head g at byte g * head_stride + t * row_bytes, groups of
// `group` values, each [scale f16][min f16][codes]; code i of a group at bit i*bits of its code bytes.
struct DecodeRowsQ {
    const uint8_t *k, *v;
    size_t head_stride, row_bytes;
    int group, bits, group_bytes;
    __device__ float at(const uint8_t *base, int g, int t, int d) const {
        const uint8_t *row = base + (size_t)g * head_stride + (size_t)t * row_bytes;
        int gi = d / group, i = d - gi * group, bit = i * bits;
        const uint8_t *gp = row + (size_t)gi * group_bytes;
        float scale = __half2float(__ushort_as_half((unsigned short)(gp[0] | (gp[1] << 8))));
        float mn = __half2float(__ushort_as_half((unsigned short)(gp[2] | (gp[3] << 8))));
        unsigned code = ((unsigned)gp[4 + (bit >> 3)] >> (bit & 7)) & ((1u << bits) - 1u);
        return __fadd_rn(mn, __fmul_rn(scale, (float)code)); // as quant_decode_row: no fused multiply-add
    }
    __device__ float key(int g, int t, int d) const { return at(k, g, t, d); }
    __device__ float val(int g, int t, int d) const { return at(v, g, t, d); }
};

// Pass 1. Grid (nchunks, NH), DEC_THREADS threads, dynamic shared memory dec_partial_smem(HD, chunk).
// part (NH, nchunks, HD + 2): [max, sum, o[HD]] per (head, chunk). att (NH, Tc) gets the raw scores.
template <class Rows>
__global__ void __launch_bounds__(DEC_THREADS)
    attention_decode_partial_kernel(float *part, float *att, const float *q, Rows rows, int Tc, int chunk, int NH,
                                    int NKV, int HD, float scale) {
    extern __shared__ float dec_smem[];
    __shared__ float sw[DEC_WARPS];
    const int groups = HD <= DEC_THREADS ? DEC_THREADS / HD : 1; // thread groups splitting the rows for P V
    float *sq = dec_smem;        // (HD) the query
    float *sp = sq + HD;         // (chunk) scores, then exp(score - max)
    float *sred = sp + chunk;    // (groups * HD) partial P V per thread group
    const int c = blockIdx.x, h = blockIdx.y, g = h / (NH / NKV), nchunks = gridDim.x;
    const int t0 = c * chunk, n = min(chunk, Tc - t0); // n >= 1
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    for (int d = tid; d < HD; d += DEC_THREADS) sq[d] = q[(size_t)h * HD + d];
    __syncthreads();
    // scores: one warp per row, lanes on d
    for (int j = warp; j < n; j += DEC_WARPS) {
        float s = 0.0f;
        for (int d = lane; d < HD; d += 32) s = fmaf(sq[d], rows.key(g, t0 + j, d), s);
        s = warp_sum(s) * scale;
        if (lane == 0) {
            sp[j] = s;
            att[(size_t)h * Tc + t0 + j] = s;
        }
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = tid; j < n; j += DEC_THREADS) mx = fmaxf(mx, sp[j]);
    mx = dec_block_max(mx, sw);
    float sum = 0.0f;
    for (int j = tid; j < n; j += DEC_THREADS) {
        float e = expf(sp[j] - mx);
        sp[j] = e; // read by other threads below, after dec_block_sum's barriers
        sum += e;
    }
    sum = dec_block_sum(sum, sw);
    // P V: thread group gi sums rows gi, gi + groups, ... of dimension d
    for (int e = tid; e < groups * HD; e += DEC_THREADS) {
        int gi = e / HD, d = e - gi * HD;
        float acc = 0.0f;
        for (int j = gi; j < n; j += groups) acc = fmaf(sp[j], rows.val(g, t0 + j, d), acc);
        sred[e] = acc;
    }
    __syncthreads();
    float *po = part + ((size_t)h * nchunks + c) * (HD + 2);
    for (int d = tid; d < HD; d += DEC_THREADS) {
        float acc = 0.0f;
        for (int gi = 0; gi < groups; gi++) acc += sred[gi * HD + d];
        po[2 + d] = acc;
    }
    if (tid == 0) po[0] = mx, po[1] = sum;
}

// Pass 2. Grid (NH, nblk), DEC_THREADS threads. Every block recomputes its head's M and L (cheap, fixed order);
// block y == 0 writes out, and the blocks share the rewrite of att.
__global__ void __launch_bounds__(DEC_THREADS)
    attention_decode_combine_kernel(float *out, float *att, const float *part, int Tc, int nchunks, int HD) {
    __shared__ float sw[DEC_WARPS];
    const int h = blockIdx.x, tid = threadIdx.x;
    const size_t pw = (size_t)HD + 2;
    const float *ph = part + (size_t)h * nchunks * pw;
    float M = -INFINITY;
    for (int c = tid; c < nchunks; c += DEC_THREADS) M = fmaxf(M, ph[c * pw]);
    M = dec_block_max(M, sw);
    float L = 0.0f;
    for (int c = tid; c < nchunks; c += DEC_THREADS) L += ph[c * pw + 1] * expf(ph[c * pw] - M);
    L = dec_block_sum(L, sw);
    if (blockIdx.y == 0) {
        for (int d = tid; d < HD; d += DEC_THREADS) {
            float acc = 0.0f;
            for (int c = 0; c < nchunks; c++) acc = fmaf(ph[c * pw + 2 + d], expf(ph[c * pw] - M), acc);
            out[(size_t)h * HD + d] = acc / L;
        }
    }
    float *p = att + (size_t)h * Tc;
    for (int t = blockIdx.y * DEC_THREADS + tid; t < Tc; t += gridDim.y * DEC_THREADS) p[t] = expf(p[t] - M) / L;
}

// Rows per chunk: the smallest power of two in [DEC_CHUNK_MIN, DEC_CHUNK_MAX] that keeps pass 1 at or under
// DEC_TARGET_BLOCKS blocks (a function of the shape only, never of the device).
static int dec_chunk(int Tc, int NH) {
    int chunk = DEC_CHUNK_MIN;
    while (chunk < DEC_CHUNK_MAX && (size_t)NH * (size_t)((Tc + chunk - 1) / chunk) > DEC_TARGET_BLOCKS) chunk *= 2;
    return chunk;
}

static size_t dec_partial_smem(int HD, int chunk) {
    size_t groups_hd = HD <= DEC_THREADS ? (size_t)(DEC_THREADS / HD) * HD : (size_t)HD;
    return sizeof(float) * ((size_t)HD + (size_t)chunk + groups_hd);
}

template <class Rows>
static void dec_launch(float *out, float *att, const float *q, Rows rows, int Tc, int NH, int NKV, int HD,
                       const char *name) {
    CHECK(Tc > 0 && NH > 0 && NKV > 0 && HD > 0 && NH % NKV == 0);
    CHECK(NH <= 65535);
    cudaStream_t st = cuda_stream();
    const int chunk = dec_chunk(Tc, NH), nchunks = (Tc + chunk - 1) / chunk;
    float *part = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&part, (size_t)NH * nchunks * ((size_t)HD + 2) * sizeof(float), st));
    size_t smem = dec_partial_smem(HD, chunk);
    if (smem > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(attention_decode_partial_kernel<Rows>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid1(nchunks, NH);
    attention_decode_partial_kernel<Rows><<<grid1, DEC_THREADS, smem, st>>>(part, att, q, rows, Tc, chunk, NH, NKV, HD,
                                                                            1.0f / sqrtf((float)HD));
    CUDA_OP_DONE(name);
    unsigned nblk = cuda_blocks((size_t)Tc, 4 * DEC_THREADS);
    dim3 grid2(NH, nblk < 64 ? nblk : 64);
    attention_decode_combine_kernel<<<grid2, DEC_THREADS, 0, st>>>(out, att, part, Tc, nchunks, HD);
    CUDA_OP_DONE(name);
    CUDA_CHECK(cudaFreeAsync(part, st));
}

extern "C" void attention_decode_cuda(float *out, float *att, const float *q, const float *kc, const float *vc, int Tc,
                                      size_t head_stride, int NH, int NKV, int HD) {
    DecodeRowsF32 rows = {kc, vc, head_stride, HD};
    dec_launch(out, att, q, rows, Tc, NH, NKV, HD, "attention_decode");
}

extern "C" void attention_decode_q_cuda(float *out, float *att, const float *q, const uint8_t *kc, const uint8_t *vc,
                                        int bits, int group, int Tc, size_t head_stride_bytes, size_t row_bytes,
                                        int NH, int NKV, int HD) {
    CHECK((bits == 8 || bits == 4 || bits == 2) && group >= 1 && HD % group == 0);
    int group_bytes = 4 + (group * bits + 7) / 8;
    CHECK(row_bytes >= (size_t)(HD / group) * (size_t)group_bytes); // a stride: head-major or interleaved layouts
    DecodeRowsQ rows = {kc, vc, head_stride_bytes, row_bytes, group, bits, group_bytes};
    dec_launch(out, att, q, rows, Tc, NH, NKV, HD, "attention_decode_q");
}
