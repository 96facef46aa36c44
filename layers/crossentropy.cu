// Softmax + cross-entropy over the vocabulary on the GPU. One block per row: each thread keeps an online
// (max, sum of exp) over its strided elements, the block combines them (warp shuffles, then the warps in
// order: deterministic), and a second pass over the row writes probabilities or gradients. The fused
// forward-backward writes dlogits = (softmax - onehot) * dloss straight from the logits (in place allowed)
// and never materialises probs. A target outside [0, V) makes that row's loss and gradients NaN (loud)
// instead of reading out of bounds. The block size depends only on V, so the bits do not change between runs.
#include "../common/cuda_check.cuh"
#include "cuda_ops.h"

#include <math.h>

#define CE_MAX_THREADS 512

struct MaxSum {
    float m, s; // running max, sum of exp(z - m)
};

static __device__ __forceinline__ MaxSum maxsum_combine(MaxSum a, MaxSum b) {
    // an empty part (keeps -inf - -inf out of expf); its sum is 0, or NaN when it saw a NaN (kept)
    if (a.m == -INFINITY) {
        b.s += a.s;
        return b;
    }
    if (b.m == -INFINITY) {
        a.s += b.s;
        return a;
    }
    float m = fmaxf(a.m, b.m);
    MaxSum r = {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
    return r;
}

// The row's max and sum of exp(z - max), returned to every thread of the block. When t_out is not NULL,
// thread 0 also reads row[t] (t in range) into *t_out BEFORE the final barrier, so callers may overwrite
// the row after this returns.
static __device__ MaxSum row_maxsum(const float *row, int V, int t, float *t_out) {
    __shared__ MaxSum warp_part[CE_MAX_THREADS / 32];
    __shared__ MaxSum total;
    MaxSum acc = {-INFINITY, 0.0f};
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float z = row[i];
        if (z > acc.m) {
            acc.s = acc.s * expf(acc.m - z) + 1.0f; // expf(-inf) = 0 on the first element
            acc.m = z;
        } else if (z != z) {
            acc.s = NAN; // a NaN logit poisons the row, as on the CPU
        } else if (acc.m != -INFINITY) {
            acc.s += expf(z - acc.m);
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other = {__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o)};
        acc = maxsum_combine(acc, other);
    }
    int warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    if (threadIdx.x % 32 == 0) warp_part[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        MaxSum r = warp_part[0];
        for (int w = 1; w < nwarps; w++) r = maxsum_combine(r, warp_part[w]);
        total = r;
        if (t_out) *t_out = (t >= 0 && t < V) ? row[t] : NAN;
    }
    __syncthreads();
    return total;
}

// probs (N,V) = softmax(logits); losses (N) = -log softmax[target] when both losses and targets are given.
__global__ void crossentropy_forward_kernel(float *losses, float *probs, const float *logits, const int *targets,
                                            int V) {
    size_t n = blockIdx.x;
    const float *z = logits + n * V;
    float *p = probs + n * V;
    int want_loss = losses && targets;
    int t = want_loss ? targets[n] : 0;
    float zt = 0.0f;
    MaxSum ms = row_maxsum(z, V, t, want_loss ? &zt : NULL);
    for (int i = threadIdx.x; i < V; i += blockDim.x) p[i] = expf(z[i] - ms.m) / ms.s;
    if (want_loss && threadIdx.x == 0) losses[n] = -(zt - ms.m - logf(ms.s)); // NaN for a bad target
}

// dlogits (N,V) = (probs - onehot(target)) * dloss, one thread per element; overwrites.
// One block per row. dlogits may be logits: every read of the row happens before row_maxsum's last barrier
// or, in the write pass, by the thread that then writes the same element.
__global__ void crossentropy_fused_forward_backward_kernel(float *losses, float *dlogits, const float *logits,
                                                           const int *targets, float dloss, int V) {
    size_t n = blockIdx.x;
    const float *z = logits + n * V;
    float *d = dlogits + n * V;
    int t = targets[n];
    float zt = 0.0f;
    MaxSum ms = row_maxsum(z, V, t, &zt);
    int bad = !(t >= 0 && t < V);
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = expf(z[i] - ms.m) / ms.s * dloss;
        if (i == t) g -= dloss;
        d[i] = bad ? NAN : g;
    }
    if (losses && threadIdx.x == 0) losses[n] = -(zt - ms.m - logf(ms.s));
}

static unsigned ce_threads(int V) {
    unsigned t = (unsigned)((V + 31) / 32) * 32;
    return t > CE_MAX_THREADS ? CE_MAX_THREADS : t;
}

extern "C" void crossentropy_forward_cuda(float *losses, float *probs, const float *logits, const int *targets, int N,
                                          int V) {
    CHECK(N >= 0 && V > 0);
    if (N == 0) return;
    crossentropy_forward_kernel<<<(unsigned)N, ce_threads(V), 0, cuda_stream()>>>(losses, probs, logits, targets, V);
    CUDA_OP_DONE("crossentropy_forward");
}

extern "C" void crossentropy_fused_forward_backward_cuda(float *losses, float *dlogits, const float *logits,
                                                         const int *targets, float dloss, int N, int V) {
    CHECK(N >= 0 && V > 0 && targets);
    if (N == 0) return;
    crossentropy_fused_forward_backward_kernel<<<(unsigned)N, ce_threads(V), 0, cuda_stream()>>>(
        losses, dlogits, logits, targets, dloss, V);
    CUDA_OP_DONE("crossentropy_fused_forward_backward");
}
