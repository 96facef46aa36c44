// The rows of the device KV cache, encoded on the device: fp32 copies, or kv/quant.h's group quantization
// written byte for byte as quant_encode_row writes it (the decode kernels of decode.cu read that layout). One
// thread per group: it finds the group's range, rounds min down and scale up to fp16 with the same integer
// conversions as kv/quant.c (no device half intrinsics, whose rounding direction is not the one asked for), and
// writes its own bytes, so there are no shared writes and every result is the CPU's.
#include <math.h>

#include "../common/common.h"
#include "../common/cuda_check.cuh"
#include "attention_cuda.h"

#define KVR_THREADS 128

// quant_f32_to_f16: round to nearest even, saturating to inf past 65520, subnormals produced.
static __device__ unsigned short kvr_f32_to_f16(float x) {
    unsigned f = __float_as_uint(x);
    unsigned sign = (f >> 16) & 0x8000u, abs = f & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return (unsigned short)(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
    if (abs >= 0x477FF000u) return (unsigned short)(sign | 0x7C00u);
    if (abs < 0x38800000u) {
        if (abs <= 0x33000000u) return (unsigned short)sign;
        unsigned mant = (abs & 0x7FFFFFu) | 0x800000u;
        int shift = 126 - (int)(abs >> 23);
        unsigned q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (unsigned short)(sign | q);
    }
    unsigned h = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3FFu), rem = abs & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (unsigned short)(sign | h);
}

// quant_f16_to_f32: exact.
static __device__ float kvr_f16_to_f32(unsigned short h) {
    unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, f;
    if (e == 0x1F) f = sign | 0x7F800000u | (mant << 13);
    else if (e) f = sign | ((e + 112) << 23) | (mant << 13);
    else if (!mant) f = sign;
    else {
        float v = __fmul_rn((float)mant, 5.9604644775390625e-8f);
        return sign ? -v : v;
    }
    return __uint_as_float(f);
}

static __device__ unsigned short kvr_nearest_sat(float x) {
    if (x >= 65504.0f) return 0x7BFFu;
    if (x <= -65504.0f) return 0xFBFFu;
    return kvr_f32_to_f16(x);
}

static __device__ unsigned short kvr_down(float x) { // largest fp16 <= x
    if (x <= -65504.0f) return 0xFBFFu;
    unsigned short h = kvr_nearest_sat(x);
    if (kvr_f16_to_f32(h) > x) h = (h & 0x8000u) ? (unsigned short)(h + 1) : h == 0 ? 0x8001u : (unsigned short)(h - 1);
    return h;
}

static __device__ unsigned short kvr_up_pos(float x) { // smallest fp16 >= x, for x >= 0
    unsigned short h = kvr_nearest_sat(x);
    if (kvr_f16_to_f32(h) < x && h < 0x7BFFu) h++;
    return h;
}

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
        unsigned short hmin, hscale;
        float mn, scale;
        if (!(hi > lo)) {
            hmin = kvr_nearest_sat(lo);
            hscale = 0;
            mn = kvr_f16_to_f32(hmin);
            scale = 0.0f;
        } else {
            hmin = kvr_down(lo);
            mn = kvr_f16_to_f32(hmin);
            hscale = kvr_up_pos(__fdiv_rn(__fsub_rn(hi, mn), (float)levels));
            while (hscale < 0x7BFFu && __fadd_rn(mn, __fmul_rn(kvr_f16_to_f32(hscale), (float)levels)) < hi) hscale++;
            scale = kvr_f16_to_f32(hscale);
        }
        out[0] = (uint8_t)(hscale & 0xFFu);
        out[1] = (uint8_t)(hscale >> 8);
        out[2] = (uint8_t)(hmin & 0xFFu);
        out[3] = (uint8_t)(hmin >> 8);
        uint8_t *codes = out + 4;
        for (int b = 0; b < code_bytes; b++) codes[b] = 0;
        if (hscale == 0) continue;
        for (int i = 0; i < group; i++) {
            float t = __fdiv_rn(__fsub_rn(x[i], mn), scale);
            t = t > 0.0f ? t : 0.0f;
            t = t < (float)levels ? t : (float)levels;
            unsigned code = (unsigned)rintf(t);
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
