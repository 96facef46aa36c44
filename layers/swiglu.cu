// SwiGLU gate on the GPU: out = silu(a) * b, elementwise, one thread per element (grid-stride). The same
// float expressions as swiglu_cpu; expf differs from glibc's by at most an ulp or two.
#include "../common/cuda_check.cuh"
#include "cuda_ops.h"

#define SWIGLU_THREADS 256

// out may alias a or b (each element is read before it is written, by the same thread)
__global__ void swiglu_forward_kernel(float *out, const float *a, const float *b, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        float x = a[i];
        float s = 1.0f / (1.0f + expf(-x));
        out[i] = x * s * b[i];
    }
}

// da += dout * b * s * (1 + a (1 - s)), db += dout * silu(a)
__global__ void swiglu_backward_kernel(float *da, float *db, const float *dout, const float *a, const float *b,
                                       size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        float x = a[i], y = b[i], g = dout[i];
        float s = 1.0f / (1.0f + expf(-x));
        float silu = x * s;
        da[i] += g * y * s * (1.0f + x * (1.0f - s));
        db[i] += g * silu;
    }
}

static unsigned swiglu_grid(size_t n) {
    unsigned g = cuda_blocks(n, SWIGLU_THREADS);
    return g > (1u << 20) ? (1u << 20) : g; // grid-stride beyond
}

extern "C" void swiglu_forward_cuda(float *out, const float *a, const float *b, size_t N) {
    if (N == 0) return;
    swiglu_forward_kernel<<<swiglu_grid(N), SWIGLU_THREADS, 0, cuda_stream()>>>(out, a, b, N);
    CUDA_OP_DONE("swiglu_forward");
}

extern "C" void swiglu_backward_cuda(float *da, float *db, const float *dout, const float *a, const float *b,
                                     size_t N) {
    if (N == 0) return;
    swiglu_backward_kernel<<<swiglu_grid(N), SWIGLU_THREADS, 0, cuda_stream()>>>(da, db, dout, a, b, N);
    CUDA_OP_DONE("swiglu_backward");
}
