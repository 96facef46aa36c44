// Causal attention on the GPU, two ways.
//
// Naive (attention_forward/backward_cuda, the ops-table pair): the (B,NH,T,T) softmax is materialised, as on
// the CPU, and kept for comparison. The products are cuBLAS fp32 strided-batched GEMMs (one call per query
// head, batched over the batch dimension: the kv head h/(NH/NKV) is not an affine function of h for GQA); the
// causal softmax and its backward are one warp per row. Query heads are issued in order, so the heads of a
// group accumulate into dK/dV in a fixed order on one stream: deterministic, no atomics.
//
// Flash (attention_flash_forward/backward_cuda, FlashAttention-2 style, fp32): tiles of FA_BR = 32 queries and
// FA_BC = 32 keys in shared memory, 4 warps per block. Within a warp the 32 lanes take the 32 keys (or
// queries) of a tile for the dot products, then the lanes take head dimensions d = lane + 32 i for the
// products with V / dO / Q / K (probabilities passed between the two layouts by warp shuffles). Rows read one
// per lane as float4 use an odd number of float4s as their stride (conflict-free); rows read as a broadcast are
// packed. HD up to 128 (NI = ceil(HD/32) accumulators per lane per row); HD not a multiple of 4 is
// zero-padded in shared memory.
//   forward:  block = (batch, query head, query tile); warp w owns 8 query rows; online softmax in registers;
//             writes out and lse (natural log of the softmax denominator).
//   backward: D = rowsum(dO * O) first (a workspace); then dK/dV with block = (batch, kv head, key tile),
//             warp w owns 8 keys, looping over the group's query heads and the query tiles at or after the
//             key tile; then dQ with block = (batch, query head, query tile), warp w owns 8 queries, looping
//             over key tiles. Each output element has exactly one owner block: deterministic, no atomics.
#include <math.h>

#include "../common/common.h"
#include "../common/cuda_check.cuh"
#include "../common/cuda_utils.cuh"
#include "attention_cuda.h"

static void attention_check_shape(int B, int T, int NH, int NKV, int HD) {
    CHECK(B > 0 && T > 0 && NH > 0 && NKV > 0 && HD > 0);
    CHECK(NH % NKV == 0);
    CHECK(B <= 65535 && NH <= 65535); // grid y/z limits (flash) and batch counts
}

// --- naive: materialised softmax ----------------------------------------------------------------------

#define SOFTMAX_WARPS 4 // rows per block

// att (rows, T), rows = B*NH*T, row r is query t = r % T: in place, scores -> causal softmax (s > t set to 0),
// computed as on the CPU: e = exp(x - max), p = e * (1 / sum e).
__global__ void attention_softmax_forward_kernel(float *att, int T, size_t rows) {
    size_t row = (size_t)blockIdx.x * SOFTMAX_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return; // uniform over the warp
    int t = (int)(row % (size_t)T);
    float *p = att + row * (size_t)T;
    float mx = -INFINITY;
    for (int s = lane; s <= t; s += 32) mx = fmaxf(mx, p[s]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int s = lane; s <= t; s += 32) {
        float e = expf(p[s] - mx);
        p[s] = e; // read back below by this same lane
        sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
    for (int s = lane; s < T; s += 32) p[s] = s <= t ? p[s] * inv : 0.0f;
}

// ds (rows, T) holds dP on entry and gets dS = P * (dP - rowsum(P * dP)) on the causal part, 0 above it.
__global__ void attention_softmax_backward_kernel(float *ds, const float *att, int T, size_t rows) {
    size_t row = (size_t)blockIdx.x * SOFTMAX_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return; // uniform over the warp
    int t = (int)(row % (size_t)T);
    const float *p = att + row * (size_t)T;
    float *d = ds + row * (size_t)T;
    float dot = 0.0f;
    for (int s = lane; s <= t; s += 32) dot += p[s] * d[s];
    dot = warp_sum(dot);
    for (int s = lane; s < T; s += 32) d[s] = s <= t ? p[s] * (d[s] - dot) : 0.0f;
}

static void attention_softmax_launch(float *buf, const float *att, int B, int NH, int T, int backward) {
    size_t rows = (size_t)B * NH * T;
    unsigned blocks = cuda_blocks(rows, SOFTMAX_WARPS);
    if (backward) {
        attention_softmax_backward_kernel<<<blocks, SOFTMAX_WARPS * 32, 0, cuda_stream()>>>(buf, att, T, rows);
        CUDA_OP_DONE("attention_backward (softmax backward)");
    } else {
        attention_softmax_forward_kernel<<<blocks, SOFTMAX_WARPS * 32, 0, cuda_stream()>>>(buf, T, rows);
        CUDA_OP_DONE("attention_forward (softmax)");
    }
}

// cuBLAS is column-major: a row-major (rows, cols) view with row stride ld is, as is, the column-major
// (cols, rows) matrix with leading dimension ld. Every GEMM below is batched over b with the per-batch strides.
extern "C" void attention_forward_cuda(float *out, float *att, const float *q, const float *k, const float *v, int B,
                                       int T, int NH, int NKV, int HD) {
    attention_check_shape(B, T, NH, NKV, HD);
    const int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HD), one = 1.0f, zero = 0.0f;
    const long long sq = (long long)T * C, skv = (long long)T * KVC, sa = (long long)NH * T * T;
    cublasHandle_t hb = cuda_cublas();
    for (int h = 0; h < NH; h++) {
        // att_h (T,T) row-major = scale Q_h K_g^T  <=>  column-major att_h^T = scale K_g Q_h^T
        CUBLAS_CHECK(cublasSgemmStridedBatched(hb, CUBLAS_OP_T, CUBLAS_OP_N, T, T, HD, &scale, k + (h / rep) * HD,
                                               KVC, skv, q + h * HD, C, sq, &zero, att + (size_t)h * T * T, T, sa,
                                               B));
    }
    CUDA_OP_DONE("attention_forward (scores)");
    attention_softmax_launch(att, att, B, NH, T, 0);
    for (int h = 0; h < NH; h++) {
        // out_h (T,HD) = P V_g  <=>  out_h^T = V_g^T P^T
        CUBLAS_CHECK(cublasSgemmStridedBatched(hb, CUBLAS_OP_N, CUBLAS_OP_N, HD, T, T, &one, v + (h / rep) * HD, KVC,
                                               skv, att + (size_t)h * T * T, T, sa, &zero, out + h * HD, C, sq, B));
    }
    CUDA_OP_DONE("attention_forward (P V)");
}

// dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ += scale dS K, dK += scale dS^T Q.
extern "C" void attention_backward_cuda(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                        const float *att, const float *q, const float *k, const float *v, int B, int T,
                                        int NH, int NKV, int HD) {
    attention_check_shape(B, T, NH, NKV, HD);
    const int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HD), one = 1.0f, zero = 0.0f;
    const long long sq = (long long)T * C, skv = (long long)T * KVC, sa = (long long)NH * T * T;
    cublasHandle_t hb = cuda_cublas();
    for (int h = 0; h < NH; h++) {
        size_t g = (size_t)(h / rep) * HD, hh = (size_t)h * HD, ha = (size_t)h * T * T;
        // dP_h (T,T) = dO_h V_g^T  <=>  dP_h^T = V_g dO_h^T
        CUBLAS_CHECK(cublasSgemmStridedBatched(hb, CUBLAS_OP_T, CUBLAS_OP_N, T, T, HD, &one, v + g, KVC, skv,
                                               dout + hh, C, sq, &zero, scratch + ha, T, sa, B));
    }
    CUDA_OP_DONE("attention_backward (dP)");
    attention_softmax_launch(scratch, att, B, NH, T, 1);
    // heads in order: the rep query heads of a group add into the same dK/dV rows one after the other
    for (int h = 0; h < NH; h++) {
        size_t g = (size_t)(h / rep) * HD, hh = (size_t)h * HD, ha = (size_t)h * T * T;
        // dV_g += P_h^T dO_h  <=>  dV_g^T += dO_h^T P_h
        CUBLAS_CHECK(cublasSgemmStridedBatched(hb, CUBLAS_OP_N, CUBLAS_OP_T, HD, T, T, &one, dout + hh, C, sq,
                                               att + ha, T, sa, &one, dv + g, KVC, skv, B));
        // dQ_h += scale dS_h K_g  <=>  dQ_h^T += scale K_g^T dS_h^T
        CUBLAS_CHECK(cublasSgemmStridedBatched(hb, CUBLAS_OP_N, CUBLAS_OP_N, HD, T, T, &scale, k + g, KVC, skv,
                                               scratch + ha, T, sa, &one, dq + hh, C, sq, B));
        // dK_g += scale dS_h^T Q_h  <=>  dK_g^T += scale Q_h^T dS_h
        CUBLAS_CHECK(cublasSgemmStridedBatched(hb, CUBLAS_OP_N, CUBLAS_OP_T, HD, T, T, &scale, q + hh, C, sq,
                                               scratch + ha, T, sa, &one, dk + g, KVC, skv, B));
    }
    CUDA_OP_DONE("attention_backward (dQ dK dV)");
}

// --- flash ----------------------------------------------------------------------------------------------

#define FA_BR 32                    // queries per tile
#define FA_BC 32                    // keys per tile
#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * 32)
#define FA_ROWS (FA_BR / FA_WARPS)  // rows (queries or keys) a warp owns: 8
static_assert(FA_BR == 32 && FA_BC == 32, "lanes index the keys (or queries) of a tile");
static_assert(FA_ROWS * FA_WARPS == FA_BR && FA_ROWS * FA_WARPS == FA_BC, "warps split a tile evenly");

// Head dimension rounded up to a float4, and the stride of rows read one per lane as float4: an odd number of
// float4s, so 8 consecutive lanes (one 128-byte phase) hit 8 distinct groups of 4 banks.
static __host__ __device__ __forceinline__ int fa_hd4(int HD) { return (HD + 3) & ~3; }
static __host__ __device__ __forceinline__ int fa_ldp(int HD) {
    int quads = fa_hd4(HD) / 4;
    return (quads % 2 ? quads : quads + 1) * 4;
}

static __device__ __forceinline__ float fa_dot4(float4 a, float4 b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

// dst (nrows, ld) in shared memory <- rows t0 .. t0+nrows-1 of head `head` of src (B,T,heads,HD) for batch b;
// columns HD .. HD4-1 and rows past T are zero. The whole block calls it; the caller synchronises after.
static __device__ void fa_load_rows(float *dst, int ld, const float *src, int b, int t0, int nrows, int T, int heads,
                                    int head, int HD) {
    const int HD4 = fa_hd4(HD);
    for (int e = threadIdx.x; e < nrows * HD4; e += blockDim.x) {
        int r = e / HD4, d = e - r * HD4, t = t0 + r;
        float x = 0.0f;
        if (t < T && d < HD) x = src[(((size_t)b * T + t) * heads + head) * HD + d];
        dst[r * ld + d] = x;
    }
}

// Grid (ceil(T/FA_BR), NH, B), FA_THREADS threads, dynamic shared memory fa_forward_smem(HD).
template <int NI>
__global__ void __launch_bounds__(FA_THREADS)
    attention_flash_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v, int T,
                                   int NH, int NKV, int HD, float scale) {
    extern __shared__ float4 fa_smem4[];
    const int HD4 = fa_hd4(HD), ldp = fa_ldp(HD);
    float *sQ = reinterpret_cast<float *>(fa_smem4); // (FA_BR, HD4)  rows read as a broadcast
    float *sK = sQ + FA_BR * HD4;                    // (FA_BC, ldp)  row j read by lane j
    float *sV = sK + FA_BC * ldp;                    // (FA_BC, HD4)  rows read as a broadcast, lanes on d
    const int qt = gridDim.x - 1 - blockIdx.x;       // the longest (last) query tiles start first
    const int h = blockIdx.y, b = blockIdx.z, g = h / (NH / NKV);
    const int q0 = qt * FA_BR, warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * FA_ROWS;

    fa_load_rows(sQ, HD4, q, b, q0, FA_BR, T, NH, h, HD);
    float m[FA_ROWS], l[FA_ROWS], o[FA_ROWS][NI];
#pragma unroll
    for (int r = 0; r < FA_ROWS; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < NI; i++) o[r][i] = 0.0f;
    }
    const int kend = min(T, q0 + FA_BR); // keys [0, kend) are visible to some query of the tile
    for (int k0 = 0; k0 < kend; k0 += FA_BC) {
        __syncthreads(); // the previous tile is consumed (and, the first time, sQ is not yet needed)
        fa_load_rows(sK, ldp, k, b, k0, FA_BC, T, NKV, g, HD);
        fa_load_rows(sV, HD4, v, b, k0, FA_BC, T, NKV, g, HD);
        __syncthreads();
        // s[r] = q_{r0+r} . k_{k0+lane}
        float s[FA_ROWS];
#pragma unroll
        for (int r = 0; r < FA_ROWS; r++) s[r] = 0.0f;
        const float4 *kr = reinterpret_cast<const float4 *>(sK + lane * ldp);
        for (int d4 = 0; d4 < HD4 / 4; d4++) {
            float4 kk = kr[d4];
#pragma unroll
            for (int r = 0; r < FA_ROWS; r++)
                s[r] = fa_dot4(reinterpret_cast<const float4 *>(sQ + (r0 + r) * HD4)[d4], kk, s[r]);
        }
        // online softmax: s[r] becomes p = exp(score - running max), o and l rescaled to the new max
        const int key = k0 + lane;
#pragma unroll
        for (int r = 0; r < FA_ROWS; r++) {
            const int qpos = q0 + r0 + r;
            const bool ok = qpos < T && key <= qpos;
            const float sc = ok ? s[r] * scale : -INFINITY;
            const float mnew = fmaxf(m[r], warp_max(sc));
            const float mref = mnew == -INFINITY ? 0.0f : mnew; // a row with nothing visible yet stays 0
            const float p = ok ? expf(sc - mref) : 0.0f;
            const float alpha = expf(m[r] - mref); // 0 while m[r] is -inf
            l[r] = l[r] * alpha + warp_sum(p);
            m[r] = mnew;
#pragma unroll
            for (int i = 0; i < NI; i++) o[r][i] *= alpha;
            s[r] = p;
        }
        // o[r][i] += sum_j p_j v_j[d], d = lane + 32 i
        for (int j = 0; j < FA_BC; j++) {
            float vv[NI];
#pragma unroll
            for (int i = 0; i < NI; i++) {
                int d = lane + 32 * i;
                vv[i] = d < HD4 ? sV[j * HD4 + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < FA_ROWS; r++) {
                float pj = __shfl_sync(FULL_MASK, s[r], j);
#pragma unroll
                for (int i = 0; i < NI; i++) o[r][i] = fmaf(pj, vv[i], o[r][i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < FA_ROWS; r++) {
        const int qpos = q0 + r0 + r;
        if (qpos >= T) continue; // key 0 is visible to every real row, so l[r] > 0 here
        const float inv = 1.0f / l[r];
        float *orow = out + (((size_t)b * T + qpos) * NH + h) * HD;
#pragma unroll
        for (int i = 0; i < NI; i++) {
            int d = lane + 32 * i;
            if (d < HD) orow[d] = o[r][i] * inv;
        }
        if (lane == 0) lse[((size_t)b * NH + h) * T + qpos] = m[r] + logf(l[r]);
    }
}

// D (B,NH,T) = rowsum(dout * out) per (b, t, h): one warp per row.
__global__ void attention_flash_backward_dot_kernel(float *D, const float *dout, const float *out, int B, int T,
                                                    int NH, int HD) {
    size_t row = (size_t)blockIdx.x * FA_WARPS + threadIdx.x / 32; // row = (b*T + t)*NH + h
    int lane = threadIdx.x % 32;
    if (row >= (size_t)B * T * NH) return; // uniform over the warp
    const float *a = dout + row * HD, *c = out + row * HD;
    float s = 0.0f;
    for (int d = lane; d < HD; d += 32) s = fmaf(a[d], c[d], s);
    s = warp_sum(s);
    if (lane == 0) {
        int h = (int)(row % (size_t)NH);
        size_t bt = row / (size_t)NH;
        int t = (int)(bt % (size_t)T), b = (int)(bt / (size_t)T);
        D[((size_t)b * NH + h) * T + t] = s;
    }
}

// dK, dV for keys [k0, k0+FA_BC) of kv head g: grid (ceil(T/FA_BC), NKV, B), FA_THREADS threads, dynamic shared
// memory fa_backward_smem(HD). Warp w owns keys k0 + 8w .. k0 + 8w + 7; lanes take the 32 queries of a tile
// for the dot products, then head dimensions for the accumulation.
template <int NI>
__global__ void __launch_bounds__(FA_THREADS)
    attention_flash_backward_kv_kernel(float *dk, float *dv, const float *dout, const float *lse, const float *D,
                                       const float *q, const float *k, const float *v, int T, int NH, int NKV, int HD,
                                       float scale) {
    extern __shared__ float4 fa_smem4[];
    const int HD4 = fa_hd4(HD), ldp = fa_ldp(HD);
    float *sK = reinterpret_cast<float *>(fa_smem4); // (FA_BC, HD4) broadcast rows
    float *sV = sK + FA_BC * HD4;                    // (FA_BC, HD4) broadcast rows
    float *sQ = sV + FA_BC * HD4;                    // (FA_BR, ldp) row i read by lane i, and as broadcast rows
    float *sdO = sQ + FA_BR * ldp;                   // (FA_BR, ldp) likewise
    float *sL = sdO + FA_BR * ldp;                   // (FA_BR) lse of the tile's queries
    float *sD = sL + FA_BR;                          // (FA_BR) D of the tile's queries
    const int kt = gridDim.x - 1 - blockIdx.x;       // early keys see the most queries: start them first
    const int g = blockIdx.y, b = blockIdx.z, rep = NH / NKV;
    const int k0 = kt * FA_BC, warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * FA_ROWS;

    fa_load_rows(sK, HD4, k, b, k0, FA_BC, T, NKV, g, HD);
    fa_load_rows(sV, HD4, v, b, k0, FA_BC, T, NKV, g, HD);
    float dka[FA_ROWS][NI], dva[FA_ROWS][NI];
#pragma unroll
    for (int r = 0; r < FA_ROWS; r++)
#pragma unroll
        for (int i = 0; i < NI; i++) dka[r][i] = 0.0f, dva[r][i] = 0.0f;
    const int qstart = (k0 / FA_BR) * FA_BR; // the first query tile that can see key k0
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int q0 = qstart; q0 < T; q0 += FA_BR) {
            __syncthreads(); // the previous query tile is consumed
            fa_load_rows(sQ, ldp, q, b, q0, FA_BR, T, NH, h, HD);
            fa_load_rows(sdO, ldp, dout, b, q0, FA_BR, T, NH, h, HD);
            for (int i = threadIdx.x; i < FA_BR; i += blockDim.x) {
                int t = q0 + i;
                size_t at = ((size_t)b * NH + h) * T + t;
                sL[i] = t < T ? lse[at] : 0.0f;
                sD[i] = t < T ? D[at] : 0.0f;
            }
            __syncthreads();
            // s[r] = q_{q0+lane} . k_{r0+r},  dp[r] = dO_{q0+lane} . v_{r0+r}
            float s[FA_ROWS], dp[FA_ROWS];
#pragma unroll
            for (int r = 0; r < FA_ROWS; r++) s[r] = 0.0f, dp[r] = 0.0f;
            const float4 *qr = reinterpret_cast<const float4 *>(sQ + lane * ldp);
            const float4 *dr = reinterpret_cast<const float4 *>(sdO + lane * ldp);
            for (int d4 = 0; d4 < HD4 / 4; d4++) {
                float4 qq = qr[d4], dd = dr[d4];
#pragma unroll
                for (int r = 0; r < FA_ROWS; r++) {
                    s[r] = fa_dot4(qq, reinterpret_cast<const float4 *>(sK + (r0 + r) * HD4)[d4], s[r]);
                    dp[r] = fa_dot4(dd, reinterpret_cast<const float4 *>(sV + (r0 + r) * HD4)[d4], dp[r]);
                }
            }
            // s[r] <- P, dp[r] <- scale * dS = scale * P * (dP - D)
            const int qpos = q0 + lane;
            const float li = sL[lane], Di = sD[lane];
#pragma unroll
            for (int r = 0; r < FA_ROWS; r++) {
                const int key = k0 + r0 + r;
                const bool ok = qpos < T && key <= qpos;
                const float p = ok ? expf(s[r] * scale - li) : 0.0f;
                s[r] = p;
                dp[r] = ok ? p * (dp[r] - Di) * scale : 0.0f;
            }
            // dV[r][d] += sum_i P_i dO_i[d],  dK[r][d] += sum_i dS_i Q_i[d],  d = lane + 32 ii
            for (int i = 0; i < FA_BR; i++) {
                float qv[NI], dov[NI];
#pragma unroll
                for (int ii = 0; ii < NI; ii++) {
                    int d = lane + 32 * ii;
                    qv[ii] = d < HD4 ? sQ[i * ldp + d] : 0.0f;
                    dov[ii] = d < HD4 ? sdO[i * ldp + d] : 0.0f;
                }
#pragma unroll
                for (int r = 0; r < FA_ROWS; r++) {
                    float pi = __shfl_sync(FULL_MASK, s[r], i), dsi = __shfl_sync(FULL_MASK, dp[r], i);
#pragma unroll
                    for (int ii = 0; ii < NI; ii++) {
                        dva[r][ii] = fmaf(pi, dov[ii], dva[r][ii]);
                        dka[r][ii] = fmaf(dsi, qv[ii], dka[r][ii]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < FA_ROWS; r++) {
        const int key = k0 + r0 + r;
        if (key >= T) continue;
        size_t base = (((size_t)b * T + key) * NKV + g) * HD;
#pragma unroll
        for (int ii = 0; ii < NI; ii++) {
            int d = lane + 32 * ii;
            if (d < HD) {
                dk[base + d] += dka[r][ii];
                dv[base + d] += dva[r][ii];
            }
        }
    }
}

// dQ for queries [q0, q0+FA_BR) of head h: grid (ceil(T/FA_BR), NH, B), FA_THREADS threads, dynamic shared
// memory fa_backward_smem(HD). Warp w owns 8 queries; lanes take the 32 keys of a tile, then dimensions.
template <int NI>
__global__ void __launch_bounds__(FA_THREADS)
    attention_flash_backward_q_kernel(float *dq, const float *dout, const float *lse, const float *D, const float *q,
                                      const float *k, const float *v, int T, int NH, int NKV, int HD, float scale) {
    extern __shared__ float4 fa_smem4[];
    const int HD4 = fa_hd4(HD), ldp = fa_ldp(HD);
    float *sQ = reinterpret_cast<float *>(fa_smem4); // (FA_BR, HD4) broadcast rows
    float *sdO = sQ + FA_BR * HD4;                   // (FA_BR, HD4) broadcast rows
    float *sK = sdO + FA_BR * HD4;                   // (FA_BC, ldp) row j read by lane j, and as broadcast rows
    float *sV = sK + FA_BC * ldp;                    // (FA_BC, ldp) row j read by lane j
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, g = h / (NH / NKV);
    const int q0 = qt * FA_BR, warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * FA_ROWS;

    fa_load_rows(sQ, HD4, q, b, q0, FA_BR, T, NH, h, HD);
    fa_load_rows(sdO, HD4, dout, b, q0, FA_BR, T, NH, h, HD);
    float li[FA_ROWS], Di[FA_ROWS], dqa[FA_ROWS][NI];
#pragma unroll
    for (int r = 0; r < FA_ROWS; r++) {
        const int qpos = q0 + r0 + r;
        size_t at = ((size_t)b * NH + h) * T + qpos;
        li[r] = qpos < T ? lse[at] : 0.0f;
        Di[r] = qpos < T ? D[at] : 0.0f;
#pragma unroll
        for (int i = 0; i < NI; i++) dqa[r][i] = 0.0f;
    }
    const int kend = min(T, q0 + FA_BR);
    for (int k0 = 0; k0 < kend; k0 += FA_BC) {
        __syncthreads(); // the previous key tile is consumed
        fa_load_rows(sK, ldp, k, b, k0, FA_BC, T, NKV, g, HD);
        fa_load_rows(sV, ldp, v, b, k0, FA_BC, T, NKV, g, HD);
        __syncthreads();
        // s[r] = q_{r0+r} . k_{k0+lane},  dp[r] = dO_{r0+r} . v_{k0+lane}
        float s[FA_ROWS], dp[FA_ROWS];
#pragma unroll
        for (int r = 0; r < FA_ROWS; r++) s[r] = 0.0f, dp[r] = 0.0f;
        const float4 *kr = reinterpret_cast<const float4 *>(sK + lane * ldp);
        const float4 *vr = reinterpret_cast<const float4 *>(sV + lane * ldp);
        for (int d4 = 0; d4 < HD4 / 4; d4++) {
            float4 kk = kr[d4], vv = vr[d4];
#pragma unroll
            for (int r = 0; r < FA_ROWS; r++) {
                s[r] = fa_dot4(reinterpret_cast<const float4 *>(sQ + (r0 + r) * HD4)[d4], kk, s[r]);
                dp[r] = fa_dot4(reinterpret_cast<const float4 *>(sdO + (r0 + r) * HD4)[d4], vv, dp[r]);
            }
        }
        // s[r] <- scale * dS = scale * P * (dP - D)
        const int key = k0 + lane;
#pragma unroll
        for (int r = 0; r < FA_ROWS; r++) {
            const int qpos = q0 + r0 + r;
            const bool ok = qpos < T && key <= qpos;
            const float p = ok ? expf(s[r] * scale - li[r]) : 0.0f;
            s[r] = ok ? p * (dp[r] - Di[r]) * scale : 0.0f;
        }
        // dq[r][d] += sum_j dS_j K_j[d], d = lane + 32 i
        for (int j = 0; j < FA_BC; j++) {
            float kv[NI];
#pragma unroll
            for (int i = 0; i < NI; i++) {
                int d = lane + 32 * i;
                kv[i] = d < HD4 ? sK[j * ldp + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < FA_ROWS; r++) {
                float dsj = __shfl_sync(FULL_MASK, s[r], j);
#pragma unroll
                for (int i = 0; i < NI; i++) dqa[r][i] = fmaf(dsj, kv[i], dqa[r][i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < FA_ROWS; r++) {
        const int qpos = q0 + r0 + r;
        if (qpos >= T) continue;
        float *row = dq + (((size_t)b * T + qpos) * NH + h) * HD;
#pragma unroll
        for (int i = 0; i < NI; i++) {
            int d = lane + 32 * i;
            if (d < HD) row[d] += dqa[r][i];
        }
    }
}

// Dynamic shared memory in bytes; above the 48 KB default a kernel must opt in.
static size_t fa_forward_smem(int HD) {
    return sizeof(float) * ((size_t)FA_BR * fa_hd4(HD) + (size_t)FA_BC * fa_ldp(HD) + (size_t)FA_BC * fa_hd4(HD));
}
static size_t fa_backward_smem(int HD) { // both backward kernels: two packed and two padded tiles (+ lse, D)
    return sizeof(float) * (2 * (size_t)FA_BR * fa_hd4(HD) + 2 * (size_t)FA_BC * fa_ldp(HD) + 2 * (size_t)FA_BR);
}

template <typename Kernel>
static void fa_allow_smem(Kernel kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

static void fa_check_shape(int B, int T, int NH, int NKV, int HD) {
    attention_check_shape(B, T, NH, NKV, HD);
    CHECK(HD <= ATTENTION_FLASH_MAX_HD && "attention_flash: head_dim must be at most 128");
}

template <int NI>
static void fa_forward_launch(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                              int NH, int NKV, int HD) {
    size_t smem = fa_forward_smem(HD);
    fa_allow_smem(attention_flash_forward_kernel<NI>, smem);
    dim3 grid(cuda_blocks((size_t)T, FA_BR), NH, B);
    attention_flash_forward_kernel<NI><<<grid, FA_THREADS, smem, cuda_stream()>>>(out, lse, q, k, v, T, NH, NKV, HD,
                                                                                  1.0f / sqrtf((float)HD));
    CUDA_OP_DONE("attention_flash_forward");
}

template <int NI>
static void fa_backward_launch(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                               const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int HD) {
    const float scale = 1.0f / sqrtf((float)HD);
    size_t smem = fa_backward_smem(HD);
    fa_allow_smem(attention_flash_backward_kv_kernel<NI>, smem);
    fa_allow_smem(attention_flash_backward_q_kernel<NI>, smem);
    dim3 grid_kv(cuda_blocks((size_t)T, FA_BC), NKV, B);
    attention_flash_backward_kv_kernel<NI><<<grid_kv, FA_THREADS, smem, cuda_stream()>>>(dk, dv, dout, lse, D, q, k, v,
                                                                                         T, NH, NKV, HD, scale);
    CUDA_OP_DONE("attention_flash_backward (dK dV)");
    dim3 grid_q(cuda_blocks((size_t)T, FA_BR), NH, B);
    attention_flash_backward_q_kernel<NI><<<grid_q, FA_THREADS, smem, cuda_stream()>>>(dq, dout, lse, D, q, k, v, T,
                                                                                       NH, NKV, HD, scale);
    CUDA_OP_DONE("attention_flash_backward (dQ)");
}

extern "C" void attention_flash_forward_cuda(float *out, float *lse, const float *q, const float *k, const float *v,
                                             int B, int T, int NH, int NKV, int HD) {
    fa_check_shape(B, T, NH, NKV, HD);
    switch ((HD + 31) / 32) {
    case 1: fa_forward_launch<1>(out, lse, q, k, v, B, T, NH, NKV, HD); break;
    case 2: fa_forward_launch<2>(out, lse, q, k, v, B, T, NH, NKV, HD); break;
    case 3: fa_forward_launch<3>(out, lse, q, k, v, B, T, NH, NKV, HD); break;
    default: fa_forward_launch<4>(out, lse, q, k, v, B, T, NH, NKV, HD); break;
    }
}

extern "C" void attention_flash_backward_cuda(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                              const float *lse, const float *q, const float *k, const float *v, int B,
                                              int T, int NH, int NKV, int HD) {
    fa_check_shape(B, T, NH, NKV, HD);
    cudaStream_t st = cuda_stream();
    size_t rows = (size_t)B * NH * T;
    float *D = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&D, rows * sizeof(float), st));
    attention_flash_backward_dot_kernel<<<cuda_blocks(rows, FA_WARPS), FA_THREADS, 0, st>>>(D, dout, out, B, T, NH,
                                                                                            HD);
    CUDA_OP_DONE("attention_flash_backward (D)");
    switch ((HD + 31) / 32) {
    case 1: fa_backward_launch<1>(dq, dk, dv, dout, lse, D, q, k, v, B, T, NH, NKV, HD); break;
    case 2: fa_backward_launch<2>(dq, dk, dv, dout, lse, D, q, k, v, B, T, NH, NKV, HD); break;
    case 3: fa_backward_launch<3>(dq, dk, dv, dout, lse, D, q, k, v, B, T, NH, NKV, HD); break;
    default: fa_backward_launch<4>(dq, dk, dv, dout, lse, D, q, k, v, B, T, NH, NKV, HD); break;
    }
    CUDA_CHECK(cudaFreeAsync(D, st));
}
