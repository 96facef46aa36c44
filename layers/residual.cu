// Residual add, dropout mask and its application, and zero fill on the GPU (residual.c's ops). The
// arithmetic uses round-to-nearest intrinsics (no FMA contraction), so these ops are bit-identical to the
// CPU's. The dropout mask is drawn on the HOST with dropout_mask_cpu from the same Rng and uploaded: the
// CPU and CUDA backends then drop exactly the same elements and a run is reproducible across backends,
// at the price of a host loop and a synchronous upload of N floats per mask (a counter-based device RNG
// that reproduces the host stream is the later speed-up).
#include "../common/cuda_check.cuh"
#include "../common/device.h"
#include "cuda_ops.h"

extern "C" void dropout_mask_cpu(float *keep, size_t N, float p, Rng *rng); // layers/residual.c

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

extern "C" void dropout_mask_cuda(float *keep, size_t N, float p, Rng *rng) {
    if (N == 0) return;
    float *h = (float *)common_calloc(N, sizeof(float)); // host staging: the CPU's mask, same RNG draws
    dropout_mask_cpu(h, N, p, rng);
    device_upload(keep, h, N * sizeof(float)); // synchronous, so h can go
    common_free(h);
    CUDA_OP_DONE("dropout_mask");
}
