// One decode query per head against the cached keys and values, flash-decoding style, one block per key/value
// head group: the Tc cached rows are split into chunks (a power of two of rows chosen from the shape only, so a
// shape always gives the same bits), and pass 1 runs one block per (chunk, kv head) that serves all R = NH/NKV
// query heads of the group, so each cached key and value element is read (and dequantized) once per step, not
// R times (GQA and MQA read their fewer heads' bytes once). The block writes the raw scores (to att, when the
// caller wants the probabilities), and per query head the chunk's max, its sum of exp(score - max) and its
// exp-weighted sum of V rows, into a workspace. Pass 2 runs per query head: the global max M and sum L from the
// chunk partials in chunk order, out = sum_c exp(m_c - M) o_c / L, and att rewritten as the probabilities
// exp(score - M) / L. out never reads att, so att == NULL (the device cache: nothing reads them) skips both
// writes and gives the same bits. Every reduction has a fixed order (warp shuffles in a fixed tree, rows in
// index order): deterministic, no atomics.
//
// The cache rows are read through a small accessor, so the fp32 cache and the group-quantized cache
// (kv/quant.h's row layout, dequantized in the kernel) share one kernel; a third accessor rotates keys stored
// before RoPE to their position in the cache as it reads them (StreamingLLM's sink:S,window:W).
#include <cuda_fp16.h>
#include <math.h>

#include "../common/common.h"
#include "../common/cuda_check.cuh"
#include "../common/cuda_utils.cuh"
#include "../common/f16.h"
#include "attention_cuda.h"

#define DEC_WARPS ATTENTION_DECODE_WARPS
#define DEC_THREADS (DEC_WARPS * 32)
#define DEC_KROWS ATTENTION_DECODE_KROWS // key rows a warp loads at a time in pass 1
#define DEC_VTILE ATTENTION_DECODE_VTILE // value rows staged in shared memory at a time for P V
#define DEC_CHUNK_MIN 64
#define DEC_CHUNK_FLOOR ATTENTION_DECODE_CHUNK_FLOOR // the smallest chunk when shared memory is short
#define DEC_CHUNK_MAX 1024
#define DEC_TARGET_BLOCKS 512 // pass-1 blocks to aim for before chunks grow past DEC_CHUNK_MIN
#define DEC_SMEM_MAX ATTENTION_DECODE_SMEM_MAX

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

// fp32 cache: row t of kv head g (HD floats) at byte g * head_stride + t * row_bytes.
struct DecodeRowsF32 {
    const uint8_t *k, *v;
    size_t head_stride, row_bytes;
    __device__ float at(const uint8_t *base, int g, int t, int d) const {
        return ((const float *)(base + (size_t)g * head_stride + (size_t)t * row_bytes))[d];
    }
    __device__ float key(int g, int t, int d) const { return at(k, g, t, d); }
    __device__ float val(int g, int t, int d) const { return at(v, g, t, d); }
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
        return f16_group_value(mn, scale, (float)code); // as quant_decode_row: no fused multiply-add
    }
    __device__ float key(int g, int t, int d) const { return at(k, g, t, d); }
    __device__ float val(int g, int t, int d) const { return at(v, g, t, d); }
};

// Keys stored before RoPE, rotated as they are read to their position in the cache (kv/cache.c's view of a
// sink:S,window:W cache: slot s at position s, in age order), with kv/cache.c's rope_row arithmetic (no fused
// multiply-add) and its (cos, sin) table. Rows [0, sink) are the sinks at positions 0..sink-1; rows
// [sink, Tc) a ring of `window` rows whose newest is row sink + newest, so the row of age a (0 = newest) sits
// at position Tc - 1 - a. window 0: row t at position t.
template <class Rows>
struct DecodeRowsRope {
    Rows rows;
    const float *cs, *sn; // (positions, HD/2)
    int half, sink, window, newest, Tc;
    __device__ int pos(int t) const {
        if (window == 0 || t < sink) return t;
        int age = newest - (t - sink);
        if (age < 0) age += window;
        return Tc - 1 - age;
    }
    __device__ float key(int g, int t, int d) const {
        int i = d >> 1;
        size_t at = (size_t)pos(t) * half + i;
        float a = rows.key(g, t, 2 * i), b = rows.key(g, t, 2 * i + 1), c = cs[at], s = sn[at];
        return (d & 1) ? __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c)) : __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    }
    __device__ float val(int g, int t, int d) const { return rows.val(g, t, d); }
};

// Pass 1. Grid (nchunks, NKV), DEC_THREADS threads, dynamic shared memory attention_decode_smem_bytes(R, HD,
// chunk) (attention_cuda.h: the layout below). part (NH, nchunks, HD + 2): [max, sum, o[HD]] per (query head,
// chunk). att (NH, Tc) gets the raw scores, unless NULL.
//
// Each warp loads DEC_KROWS key rows before scoring them, so a block keeps DEC_WARPS * DEC_KROWS rows of loads
// in flight (pass 1 has few blocks per SM: at most DEC_TARGET_BLOCKS in all once chunks grow).
template <class Rows>
__global__ void __launch_bounds__(DEC_THREADS)
    attention_decode_partial_kernel(float *part, float *att, const float *q, Rows rows, int Tc, int chunk, int R,
                                    int HD, float scale) {
    extern __shared__ float dec_smem[];
    float *sq = dec_smem;                         // (R, HD) the group's queries
    float *skey = sq + R * HD;                    // (DEC_WARPS, DEC_KROWS, HD) the key rows each warp scores
    float *sp = skey + DEC_WARPS * DEC_KROWS * HD; // (R, chunk) scores, then exp(score - max)
    float *sacc = sp + R * chunk;                 // (R, HD) P V
    float *svt = sacc + R * HD;                   // (DEC_VTILE, HD) value rows
    float *smx = svt + DEC_VTILE * HD;            // (R) chunk max per head
    float *ssum = smx + R;                        // (R) chunk sum per head
    const int c = blockIdx.x, g = blockIdx.y, nchunks = gridDim.x, h0 = g * R;
    const int t0 = c * chunk, n = min(chunk, Tc - t0); // n >= 1
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    for (int e = tid; e < R * HD; e += DEC_THREADS) sq[e] = q[(size_t)h0 * HD + e];
    __syncthreads();
    // scores: DEC_KROWS consecutive key rows per warp at a time (all their loads issued before any is used),
    // lanes on d; each row is read once and scored against every query of the group. A score's arithmetic is the
    // same whichever rows share the warp: fmaf over d = lane, lane + 32, ..., then warp_sum.
    float *kw = skey + warp * DEC_KROWS * HD;
    for (int j0 = warp * DEC_KROWS; j0 < n; j0 += DEC_WARPS * DEC_KROWS) {
        const int m = min(DEC_KROWS, n - j0); // uniform over the warp
        for (int d = lane; d < HD; d += 32) // each lane reads back only its own d
#pragma unroll
            for (int u = 0; u < DEC_KROWS; u++)
                if (u < m) kw[u * HD + d] = rows.key(g, t0 + j0 + u, d);
        for (int r = 0; r < R; r++) {
            const float *qr = sq + r * HD;
            float s[DEC_KROWS];
#pragma unroll
            for (int u = 0; u < DEC_KROWS; u++) s[u] = 0.0f;
            for (int d = lane; d < HD; d += 32) {
                const float qd = qr[d];
#pragma unroll
                for (int u = 0; u < DEC_KROWS; u++)
                    if (u < m) s[u] = fmaf(qd, kw[u * HD + d], s[u]);
            }
#pragma unroll
            for (int u = 0; u < DEC_KROWS; u++) {
                if (u >= m) break;
                const float v = warp_sum(s[u]) * scale;
                if (lane == 0) {
                    sp[r * chunk + j0 + u] = v;
                    if (att) att[(size_t)(h0 + r) * Tc + t0 + j0 + u] = v;
                }
            }
        }
    }
    __syncthreads();
    // softmax pieces: one warp per query head
    for (int r = warp; r < R; r += DEC_WARPS) {
        float *pr = sp + r * chunk;
        float mx = -INFINITY;
        for (int j = lane; j < n; j += 32) mx = fmaxf(mx, pr[j]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < n; j += 32) {
            float e = expf(pr[j] - mx);
            pr[j] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            smx[r] = mx;
            ssum[r] = sum;
        }
    }
    // P V: a tile of value rows at a time into shared memory (each value read once), then every (head, d)
    // accumulates the tile's rows in order; element e of sacc belongs to thread e % DEC_THREADS throughout
    for (int j0 = 0; j0 < n; j0 += DEC_VTILE) {
        const int m = min(DEC_VTILE, n - j0);
        __syncthreads(); // the previous tile is read (and, the first time, the softmax is written)
        for (int e = tid; e < m * HD; e += DEC_THREADS) {
            int j = e / HD, d = e - j * HD;
            svt[e] = rows.val(g, t0 + j0 + j, d);
        }
        __syncthreads();
        for (int e = tid; e < R * HD; e += DEC_THREADS) {
            int r = e / HD, d = e - r * HD;
            const float *pr = sp + r * chunk + j0;
            float acc = j0 ? sacc[e] : 0.0f;
            for (int j = 0; j < m; j++) acc = fmaf(pr[j], svt[j * HD + d], acc);
            sacc[e] = acc;
        }
    }
    for (int e = tid; e < R * HD; e += DEC_THREADS) { // the same threads wrote these elements last
        int r = e / HD, d = e - r * HD;
        part[((size_t)(h0 + r) * nchunks + c) * (HD + 2) + 2 + d] = sacc[e];
    }
    for (int r = tid; r < R; r += DEC_THREADS) { // written before the tile loop's barriers
        float *po = part + ((size_t)(h0 + r) * nchunks + c) * (HD + 2);
        po[0] = smx[r];
        po[1] = ssum[r];
    }
}

// Pass 2. Grid (NH, nblk), DEC_THREADS threads. Every block recomputes its head's M and L (cheap, fixed order);
// block y == 0 writes out, and the blocks share the rewrite of att (att NULL: nblk 1, no rewrite).
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
    if (!att) return;
    float *p = att + (size_t)h * Tc;
    for (int t = blockIdx.y * DEC_THREADS + tid; t < Tc; t += gridDim.y * DEC_THREADS) p[t] = expf(p[t] - M) / L;
}

// Rows per chunk: the smallest power of two in [DEC_CHUNK_MIN, DEC_CHUNK_MAX] that keeps pass 1 at or under
// DEC_TARGET_BLOCKS blocks, then halved (down to DEC_CHUNK_FLOOR) while the block's shared memory would exceed
// DEC_SMEM_MAX. A function of the shape only, never of the device.
static int dec_chunk(int Tc, int NKV, int R, int HD) {
    int chunk = DEC_CHUNK_MIN;
    while (chunk < DEC_CHUNK_MAX && (size_t)NKV * (size_t)((Tc + chunk - 1) / chunk) > DEC_TARGET_BLOCKS) chunk *= 2;
    while (chunk > DEC_CHUNK_FLOOR && attention_decode_smem_bytes(R, HD, chunk) > DEC_SMEM_MAX) chunk /= 2;
    return chunk;
}

template <class Rows>
static void dec_launch(float *out, float *att, const float *q, Rows rows, int Tc, int NH, int NKV, int HD,
                       const char *name) {
    CHECK(Tc > 0 && NH > 0 && NKV > 0 && HD > 0 && NH % NKV == 0);
    CHECK(NKV <= 65535 && NH <= 2147483647 / 2);
    cudaStream_t st = cuda_stream();
    const int R = NH / NKV, chunk = dec_chunk(Tc, NKV, R, HD), nchunks = (Tc + chunk - 1) / chunk;
    size_t smem = attention_decode_smem_bytes(R, HD, chunk);
    if (smem > DEC_SMEM_MAX) { // callers ask attention_decode_fits first (decode_device_init does)
        fprintf(stderr, "%s: %d query heads of %d per kv head need %zu bytes of shared memory (at most %d)\n", name,
                R, HD, smem, DEC_SMEM_MAX);
        abort();
    }
    float *part = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&part, (size_t)NH * nchunks * ((size_t)HD + 2) * sizeof(float), st));
    if (smem > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(attention_decode_partial_kernel<Rows>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid1(nchunks, NKV);
    attention_decode_partial_kernel<Rows><<<grid1, DEC_THREADS, smem, st>>>(part, att, q, rows, Tc, chunk, R, HD,
                                                                            1.0f / sqrtf((float)HD));
    CUDA_OP_DONE(name);
    unsigned nblk = att ? cuda_blocks((size_t)Tc, 4 * DEC_THREADS) : 1;
    dim3 grid2(NH, nblk < 64 ? nblk : 64);
    attention_decode_combine_kernel<<<grid2, DEC_THREADS, 0, st>>>(out, att, part, Tc, nchunks, HD);
    CUDA_OP_DONE(name);
    CUDA_CHECK(cudaFreeAsync(part, st));
}

extern "C" void attention_decode_cuda(float *out, float *att, const float *q, const float *kc, const float *vc, int Tc,
                                      size_t head_stride, int NH, int NKV, int HD) {
    DecodeRowsF32 rows = {(const uint8_t *)kc, (const uint8_t *)vc, head_stride * sizeof(float),
                          (size_t)HD * sizeof(float)};
    dec_launch(out, att, q, rows, Tc, NH, NKV, HD, "attention_decode");
}

static DecodeRowsQ dec_rows_q(const uint8_t *kc, const uint8_t *vc, int bits, int group, size_t head_stride_bytes,
                              size_t row_bytes, int HD) {
    CHECK((bits == 8 || bits == 4 || bits == 2) && group >= 1 && HD % group == 0);
    int group_bytes = 4 + (group * bits + 7) / 8;
    CHECK(row_bytes >= (size_t)(HD / group) * (size_t)group_bytes); // a stride: head-major or interleaved layouts
    return DecodeRowsQ{kc, vc, head_stride_bytes, row_bytes, group, bits, group_bytes};
}

extern "C" void attention_decode_q_cuda(float *out, float *att, const float *q, const uint8_t *kc, const uint8_t *vc,
                                        int bits, int group, int Tc, size_t head_stride_bytes, size_t row_bytes,
                                        int NH, int NKV, int HD) {
    DecodeRowsQ rows = dec_rows_q(kc, vc, bits, group, head_stride_bytes, row_bytes, HD);
    dec_launch(out, att, q, rows, Tc, NH, NKV, HD, "attention_decode_q");
}

extern "C" void attention_decode_kv_cuda(float *out, float *att, const float *q, const uint8_t *kc, const uint8_t *vc,
                                         int bits, int group, int Tc, size_t head_stride_bytes, size_t row_bytes,
                                         int NH, int NKV, int HD, const float *rope_cos, const float *rope_sin,
                                         int sink, int window, int newest) {
    CHECK(bits == 32 || bits == 8 || bits == 4 || bits == 2);
    CHECK(!rope_cos || (HD % 2 == 0 && sink >= 0 && window >= 0 && (window == 0 || (newest >= 0 && newest < window))));
    const char *name = "attention_decode_kv";
    if (bits == 32) {
        CHECK(row_bytes >= (size_t)HD * sizeof(float) && row_bytes % sizeof(float) == 0);
        DecodeRowsF32 rows = {kc, vc, head_stride_bytes, row_bytes};
        if (!rope_cos) {
            dec_launch(out, att, q, rows, Tc, NH, NKV, HD, name);
            return;
        }
        DecodeRowsRope<DecodeRowsF32> rr = {rows, rope_cos, rope_sin, HD / 2, sink, window, newest, Tc};
        dec_launch(out, att, q, rr, Tc, NH, NKV, HD, name);
        return;
    }
    DecodeRowsQ rows = dec_rows_q(kc, vc, bits, group, head_stride_bytes, row_bytes, HD);
    if (!rope_cos) {
        dec_launch(out, att, q, rows, Tc, NH, NKV, HD, name);
        return;
    }
    DecodeRowsRope<DecodeRowsQ> rr = {rows, rope_cos, rope_sin, HD / 2, sink, window, newest, Tc};
    dec_launch(out, att, q, rr, Tc, NH, NKV, HD, name);
}
