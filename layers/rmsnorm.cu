// RMSNorm on the GPU: one warp per row for the forward pass and for dinp (the row statistics are warp
// shuffles, fixed order). dweight reduces over rows; float atomics would make it non-deterministic, so it is
// a two-pass column reduction: pass 1 sums each (row chunk of RMS_ROWS rows, 32 columns) tile into a partial
// (fixed order: strided rows per thread, then a fixed tree over the 8 thread rows), pass 2 adds the partials
// of each column in row-chunk order into dweight. Same bits every run.
#include "../common/cuda_check.cuh"
#include "../common/cuda_utils.cuh"
#include "cuda_ops.h"

#define RMS_WARPS 8    // rows per block (forward, dinp)
#define RMS_ROWS 256   // rows per partial of the dweight reduction
#define RMS_TY 8       // thread rows of a dweight tile block (32 x RMS_TY threads)

// out may alias inp: each lane reads its elements before writing them
__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                                       float eps) {
    int n = blockIdx.x * RMS_WARPS + threadIdx.y, lane = threadIdx.x;
    if (n >= N) return; // uniform over the warp
    const float *x = inp + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / C + eps);
    if (lane == 0) rstd[n] = r;
    for (int c = lane; c < C; c += 32) y[c] = x[c] * r * weight[c];
}

// dinp += r * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * r; one warp per row.
__global__ void rmsnorm_backward_kernel(float *dinp, const float *dout, const float *inp, const float *weight,
                                        const float *rstd, int N, int C) {
    int n = blockIdx.x * RMS_WARPS + threadIdx.y, lane = threadIdx.x;
    if (n >= N) return;
    const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    float r = rstd[n], dot = 0.0f;
    for (int c = lane; c < C; c += 32) dot += dy[c] * weight[c] * x[c] * r;
    dot = warp_sum(dot) / C;
    for (int c = lane; c < C; c += 32) dx[c] += r * (dy[c] * weight[c] - x[c] * r * dot);
}

// Pass 1: grid (ceil(C/32), ceil(N/RMS_ROWS)), block (32, RMS_TY). partial (n_chunks, C).
__global__ void rmsnorm_backward_dweight_kernel(float *__restrict__ partial, const float *__restrict__ dout,
                                                const float *__restrict__ inp, const float *__restrict__ rstd, int N,
                                                int C) {
    __shared__ float tile[RMS_TY][32];
    int c = blockIdx.x * 32 + threadIdx.x;
    int n0 = blockIdx.y * RMS_ROWS, n1 = min(n0 + RMS_ROWS, N);
    float acc = 0.0f;
    if (c < C)
        for (int n = n0 + threadIdx.y; n < n1; n += RMS_TY)
            acc += dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
    tile[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = RMS_TY / 2; s > 0; s >>= 1) {
        if (threadIdx.y < s) tile[threadIdx.y][threadIdx.x] += tile[threadIdx.y + s][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && c < C) partial[(size_t)blockIdx.y * C + c] = tile[0][threadIdx.x];
}

// Pass 2: one thread per column, partials summed in chunk order.
__global__ void rmsnorm_backward_dweight_sum_kernel(float *__restrict__ dweight, const float *__restrict__ partial,
                                                    int n_chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int k = 0; k < n_chunks; k++) acc += partial[(size_t)k * C + c];
    dweight[c] += acc;
}

extern "C" void rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                                     float eps) {
    CHECK(N >= 0 && C > 0);
    if (N == 0) return;
    dim3 block(32, RMS_WARPS);
    rmsnorm_forward_kernel<<<cuda_blocks((size_t)N, RMS_WARPS), block, 0, cuda_stream()>>>(out, rstd, inp, weight,
                                                                                           N, C, eps);
    CUDA_OP_DONE("rmsnorm_forward");
}

extern "C" void rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                                      const float *weight, const float *rstd, int N, int C) {
    CHECK(N >= 0 && C > 0);
    if (N == 0) return;
    cudaStream_t st = cuda_stream();
    dim3 block(32, RMS_WARPS);
    rmsnorm_backward_kernel<<<cuda_blocks((size_t)N, RMS_WARPS), block, 0, st>>>(dinp, dout, inp, weight, rstd, N,
                                                                                 C);
    CUDA_OP_DONE("rmsnorm_backward");

    unsigned n_chunks = cuda_blocks((size_t)N, RMS_ROWS), c_chunks = cuda_blocks((size_t)C, 32);
    CHECK(n_chunks <= 65535u);
    float *partial = NULL; // (n_chunks, C), stream-ordered so no sync is needed
    CUDA_CHECK(cudaMallocAsync((void **)&partial, (size_t)n_chunks * C * sizeof(float), st));
    rmsnorm_backward_dweight_kernel<<<dim3(c_chunks, n_chunks), dim3(32, RMS_TY), 0, st>>>(partial, dout, inp, rstd,
                                                                                         N, C);
    CUDA_OP_DONE("rmsnorm_backward_dweight");
    rmsnorm_backward_dweight_sum_kernel<<<cuda_blocks((size_t)C, 256), 256, 0, st>>>(dweight, partial, (int)n_chunks,
                                                                                     C);
    CUDA_OP_DONE("rmsnorm_backward_dweight_sum");
    CUDA_CHECK(cudaFreeAsync(partial, st));
}
