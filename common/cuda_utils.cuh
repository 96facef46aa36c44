// For .cu files only: the warp-level helpers the kernels share (llm.c's cuda_utils.cuh). Each is a butterfly
// over the 32 lanes of a full warp (__shfl_xor_sync, offsets 16, 8, 4, 2, 1): every lane gets the same result,
// combined in the same fixed order on every run, so a kernel built on them stays deterministic. Every lane of
// the warp must call them (FULL_MASK).
#ifndef KVLAB_CUDA_UTILS_CUH
#define KVLAB_CUDA_UTILS_CUH

#define FULL_MASK 0xffffffffu

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

#endif
