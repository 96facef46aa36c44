// The rows of the device KV cache, encoded on the device: fp32 copies, or kv/quant.h's group quantization
// written byte for byte as quant_encode_row writes it (the decode kernels of decode.cu read that layout). One
// thread per group: it finds the group's range, takes min and scale from common/f16.h's f16_group_params and
// its codes from f16_group_code (kv/quant.c's own functions: integer fp16 conversions, no device half
// intrinsics), and writes its own bytes, so there are no shared writes and every result is the CPU's.
#include <math.h>

#include "../common/common.h"
#include "../common/cuda_check.cuh"
#include "../common/f16.h"
#include "attention_cuda.h"

#define KVR_THREADS 128

// One thread per (row, group): quant_encode_row's encode_group.
__global__ void kv_encode_q_kernel(uint8_t *dst, size_t dst_stride, const float *src, size_t src_stride, int n,
                                   int HD, int group, int bits) {
    const int groups = HD / group, code_bytes = (group * bits + 7) / 8, levels = (1 << bits) - 1;
    const size_t total = (size_t)n * groups;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        int row = (int)(idx / groups), gi = (int)(idx % groups);
        const float *x = src + (size_t)row * src_stride + (size_t)gi * group;
        uint8_t *out = dst + (size_t)row * dst_stride + (size_t)gi * (4 + code_bytes);
        float lo = x[0], hi = x[0];
        for (int i = 1; i < group; i++) {
            float v = x[i];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        uint16_t hmin, hscale;
        f16_group_params(lo, hi, levels, &hmin, &hscale);
        const float mn = f16_to_f32(hmin), scale = f16_to_f32(hscale);
        out[0] = (uint8_t)(hscale & 0xFFu);
        out[1] = (uint8_t)(hscale >> 8);
        out[2] = (uint8_t)(hmin & 0xFFu);
        out[3] = (uint8_t)(hmin >> 8);
        uint8_t *codes = out + 4;
        for (int b = 0; b < code_bytes; b++) codes[b] = 0;
        if (hscale == 0) continue;
        for (int i = 0; i < group; i++) {
            unsigned code = (unsigned)f16_group_code(x[i], mn, scale, levels);
            codes[(i * bits) >> 3] |= (uint8_t)(code << ((i * bits) & 7));
        }
    }
}

// One thread per float of the n rows.
__global__ void kv_copy_rows_kernel(uint8_t *dst, size_t dst_stride, const float *src, size_t src_stride, int n,
                                    int HD) {
    const size_t total = (size_t)n * HD;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        size_t row = idx / HD, d = idx % HD;
        ((float *)(dst + row * dst_stride))[d] = src[row * src_stride + d];
    }
}

extern "C" void kv_encode_rows_cuda(uint8_t *dst, size_t dst_stride, const float *src, size_t src_stride, int n, int HD,
                                    int group, int bits) {
    CHECK(n >= 1 && HD >= 1);
    if (bits == 32) {
        CHECK(dst_stride % sizeof(float) == 0 && dst_stride >= (size_t)HD * sizeof(float));
        unsigned blocks = cuda_blocks((size_t)n * HD, KVR_THREADS);
        kv_copy_rows_kernel<<<blocks < 4096 ? blocks : 4096, KVR_THREADS, 0, cuda_stream()>>>(dst, dst_stride, src,
                                                                                             src_stride, n, HD);
        CUDA_OP_DONE("kv_encode_rows");
        return;
    }
    CHECK((bits == 8 || bits == 4 || bits == 2) && group >= 1 && HD % group == 0);
    CHECK(dst_stride >= (size_t)(HD / group) * (size_t)(4 + (group * bits + 7) / 8));
    unsigned blocks = cuda_blocks((size_t)n * (HD / group), KVR_THREADS);
    kv_encode_q_kernel<<<blocks < 4096 ? blocks : 4096, KVR_THREADS, 0, cuda_stream()>>>(dst, dst_stride, src, src_stride,
                                                                                        n, HD, group, bits);
    CUDA_OP_DONE("kv_encode_rows");
}
