// Residual add, dropout mask and its application, and zero fill on the GPU (residual.c's ops). The
// arithmetic uses round-to-nearest intrinsics (no FMA contraction), so these ops are bit-identical to the
// CPU's. The dropout mask is counter-based (common/philox.h): the host takes the same two RNG draws as the
// CPU op (dropout_mask_draw) and a kernel computes every element from them, so both backends drop exactly
// the same elements with no host loop, no upload and no sync.
#include "../common/cuda_check.cuh"
#include "../common/device.h"
#include "cuda_ops.h"

#include "dropout.h"

#define RESID_THREADS 256

static unsigned resid_grid(size_t n) {
    unsigned g = cuda_blocks(n, RESID_THREADS);
    return g > (1u << 20) ? (1u << 20) : g; // grid-stride beyond
}

// out may alias a (in-place residual, as the decode step does) or b: one thread reads then writes element i
__global__ void residual_forward_kernel(float *out, const float *a, const float *b, const float *scale_b, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        out[i] = scale_b ? __fadd_rn(a[i], __fmul_rn(b[i], scale_b[i])) : __fadd_rn(a[i], b[i]);
}

__global__ void dropout_apply_kernel(float *out, const float *inp, const float *keep, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __fmul_rn(inp[i], keep[i]);
}

extern "C" void residual_forward_cuda(float *out, const float *a, const float *b, const float *scale_b, size_t N) {
    if (N == 0) return;
    residual_forward_kernel<<<resid_grid(N), RESID_THREADS, 0, cuda_stream()>>>(out, a, b, scale_b, N);
    CUDA_OP_DONE("residual_forward");
}

extern "C" void dropout_apply_cuda(float *out, const float *inp, const float *keep, size_t N) {
    if (N == 0) return;
    dropout_apply_kernel<<<resid_grid(N), RESID_THREADS, 0, cuda_stream()>>>(out, inp, keep, N);
    CUDA_OP_DONE("dropout_apply");
}

extern "C" void fill_zero_cuda(float *x, size_t N) {
    if (N == 0) return;
    CUDA_CHECK(cudaMemsetAsync(x, 0, N * sizeof(float), cuda_stream()));
    CUDA_OP_DONE("fill_zero");
}

// one thread per Philox block of DROPOUT_PER_BLOCK elements, as the CPU loop
__global__ void dropout_mask_kernel(float *keep, size_t N, DropoutDraw d) {
    size_t blocks = (N + DROPOUT_PER_BLOCK - 1) / DROPOUT_PER_BLOCK;
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < blocks; b += (size_t)gridDim.x * blockDim.x) {
        uint32_t w[4];
        philox_block(d.key, d.stream, b, w);
        for (int j = 0; j < DROPOUT_PER_BLOCK && b * DROPOUT_PER_BLOCK + j < N; j++) keep[b * DROPOUT_PER_BLOCK + j] = dropout_keep(w, j, &d);
    }
}

extern "C" void dropout_mask_cuda(float *keep, size_t N, float p, Rng *rng) {
    DropoutDraw d;
    dropout_mask_draw(&d, p, rng); // before any early return: the RNG advances as the CPU op's does
    if (N == 0) return;
    dropout_mask_kernel<<<resid_grid((N + DROPOUT_PER_BLOCK - 1) / DROPOUT_PER_BLOCK), RESID_THREADS, 0, cuda_stream()>>>(keep, N, d);
    CUDA_OP_DONE("dropout_mask");
}
