// AdamW, the global gradient norm and gradient scaling on the GPU (declared in cuda_ops.h; the CPU reference
// is adamw.c). The update uses round-to-nearest intrinsics in the CPU's evaluation order, so nvcc cannot fuse
// multiply-adds the CPU does not, and the result is bit-identical to adamw_update_cpu. The norm reduces in
// double: each block sums its grid-strided elements and then its threads in a fixed tree, one block sums the
// per-block partials the same way; the grid depends only on n, so the same n gives the same bits every run.
#include <cuda_bf16.h>
#include <math.h>

#include "../common/common.h"
#include "../common/cuda_check.cuh"
#include "../common/device.h"
#include "cuda_ops.h"

#define OPT_THREADS 256       // power of two (tree reductions)
#define NORM_MAX_BLOCKS 1024

static unsigned opt_grid(size_t n, unsigned cap) {
    unsigned g = cuda_blocks(n, OPT_THREADS);
    return g > cap ? cap : g; // grid-stride beyond
}

// One launch over every segment of the parameter block (ops.h's AdamwSegments, passed by value): each element
// finds its segment's weight decay by a scan of at most ADAMW_MAX_SEGMENTS ends. shadow: NULL, or the bf16 copy of
// params (precision_shadow_cuda, bf16 mode) written with the new values.
__global__ void adamw_update_kernel(float *params, const float *grads, float *m, float *v, AdamwSegments seg,
                                    float lr, float beta1, float beta2, float eps, float bc1, float bc2,
                                    __nv_bfloat16 *shadow) {
    size_t n = seg.n > 0 ? seg.end[seg.n - 1] : 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int s = 0;
        while (i >= seg.end[s]) s++;
        float weight_decay = seg.decay[s];
        float g = grads[i];
        // m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(__fsub_rn(1.0f, beta1), g));
        float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, beta2), g), g));
        m[i] = mi;
        v[i] = vi;
        float mhat = __fdiv_rn(mi, bc1), vhat = __fdiv_rn(vi, bc2);
        // p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)
        float p = params[i];
        float step = __fadd_rn(__fdiv_rn(mhat, __fadd_rn(__fsqrt_rn(vhat), eps)), __fmul_rn(weight_decay, p));
        float p_new = __fsub_rn(p, __fmul_rn(lr, step));
        params[i] = p_new;
        // --- precision (layers/matmul.cu): the bf16 shadow follows the master weight in the same kernel ---
        if (shadow) shadow[i] = __float2bfloat16_rn(p_new);
    }
}

// In-block tree sum of OPT_THREADS doubles; the result is valid in thread 0.
static __device__ double block_sum(double v) {
    __shared__ double buf[OPT_THREADS];
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int s = OPT_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    return buf[0];
}

// Pass 1: partial[block] = sum of grads[i]^2 over the block's grid-strided elements.
__global__ void grad_norm_kernel(double *partial, const float *grads, size_t n) {
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double g = grads[i];
        acc += g * g;
    }
    double s = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2 (one block): *out = sum of the nblocks partials.
__global__ void grad_norm_sum_kernel(double *out, const double *partial, int nblocks) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += OPT_THREADS) acc += partial[i];
    double s = block_sum(acc);
    if (threadIdx.x == 0) *out = s;
}

__global__ void scale_kernel(float *x, size_t n, float s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], s);
}

extern "C" void adamw_update_segments_cuda(float *params, const float *grads, float *m, float *v,
                                           const AdamwSegments *seg, float lr, float beta1, float beta2, float eps,
                                           int t) {
    CHECK(seg->n >= 0 && seg->n <= ADAMW_MAX_SEGMENTS);
    for (int i = 1; i < seg->n; i++) CHECK(seg->end[i] >= seg->end[i - 1]);
    size_t n = seg->n > 0 ? seg->end[seg->n - 1] : 0;
    if (n == 0) return;
    // on the host, exactly as adamw_update_cpu computes them
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    __nv_bfloat16 *shadow = (__nv_bfloat16 *)precision_shadow_cuda(params, n); // NULL unless bf16 (matmul.cu)
    adamw_update_kernel<<<opt_grid(n, 1u << 20), OPT_THREADS, 0, cuda_stream()>>>(params, grads, m, v, *seg, lr, beta1,
                                                                                  beta2, eps, bc1, bc2, shadow);
    CUDA_OP_DONE("adamw_update");
}

extern "C" void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n, float lr,
                                  float beta1, float beta2, float eps, float weight_decay, int t) {
    AdamwSegments seg = {.n = 1, .end = {n}, .decay = {weight_decay}};
    adamw_update_segments_cuda(params, grads, m, v, &seg, lr, beta1, beta2, eps, t);
}

extern "C" float grad_norm_cuda(const float *grads, size_t n) {
    if (n == 0) return 0.0f;
    cudaStream_t st = cuda_stream();
    unsigned nblocks = opt_grid(n, NORM_MAX_BLOCKS);
    double *buf = NULL; // nblocks partials, then the total
    CUDA_CHECK(cudaMallocAsync((void **)&buf, (nblocks + 1) * sizeof(double), st));
    grad_norm_kernel<<<nblocks, OPT_THREADS, 0, st>>>(buf, grads, n);
    CUDA_OP_DONE("grad_norm");
    grad_norm_sum_kernel<<<1, OPT_THREADS, 0, st>>>(buf + nblocks, buf, (int)nblocks);
    CUDA_OP_DONE("grad_norm_sum");
    double sq = 0.0;
    device_download(&sq, buf + nblocks, sizeof(double)); // synchronises the stream
    CUDA_CHECK(cudaFreeAsync(buf, st));
    return (float)sqrt(sq);
}

extern "C" void scale_cuda(float *x, size_t n, float s) {
    if (n == 0) return;
    scale_kernel<<<opt_grid(n, 1u << 20), OPT_THREADS, 0, cuda_stream()>>>(x, n, s);
    CUDA_OP_DONE("scale");
}
