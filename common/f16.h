// IEEE binary16 conversions and the fp16 (scale, min) pair of a quantization group, written once for the CPU
// (kv/quant.c) and the device (attention/kv_rows.cu, attention/decode.cu) so both write and read kv/quant.h's
// rows with the same bits. Header-only, compiled by nvcc too (KVLAB_HD); no half intrinsics (their rounding
// direction is not the one asked for), and a product followed by a sum is rounded twice on every backend
// (F16_MADD: __fmul_rn/__fadd_rn on the device, where nvcc would otherwise fuse them; the CPU builds with
// -ffp-contract=off).
#ifndef KVLAB_COMMON_F16_H
#define KVLAB_COMMON_F16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef KVLAB_HD
#ifdef __CUDACC__
#define KVLAB_HD __host__ __device__ __forceinline__
#else
#define KVLAB_HD static inline
#endif
#endif

#ifdef __CUDA_ARCH__
#define F16_MADD(a, b, c) __fadd_rn(__fmul_rn((a), (b)), (c)) // a * b + c, no fused multiply-add
#else
#define F16_MADD(a, b, c) ((a) * (b) + (c))
#endif

KVLAB_HD uint32_t f16_float_bits(float x) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(x);
#else
    uint32_t f;
    memcpy(&f, &x, 4);
    return f;
#endif
}

KVLAB_HD float f16_bits_float(uint32_t f) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(f);
#else
    float x;
    memcpy(&x, &f, 4);
    return x;
#endif
}

// fp32 -> fp16, round to nearest even; past 65520 (65504 + half an ulp) inf; subnormals produced; NaN stays a
// quiet NaN.
KVLAB_HD uint16_t f16_from_f32(float x) {
    uint32_t f = f16_float_bits(x);
    uint32_t sign = (f >> 16) & 0x8000u, abs = f & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
    if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);
    if (abs < 0x38800000u) {                           // below 2^-14: fp16 subnormal or zero
        if (abs <= 0x33000000u) return (uint16_t)sign; // <= 2^-25, half the smallest subnormal (tie to 0)
        uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u; // 24-bit significand, value mant * 2^(e-150)
        int shift = 126 - (int)(abs >> 23);            // 14..24: units of 2^-24
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++; // a carry to 0x400 is the smallest normal: right
        return (uint16_t)(sign | q);
    }
    uint32_t h = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3FFu), rem = abs & 0x1FFFu; // rebias 127 -> 15
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; // a carry into the exponent is still correct
    return (uint16_t)(sign | h);
}

// fp16 -> fp32, exact.
KVLAB_HD float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, f;
    if (e == 0x1F) f = sign | 0x7F800000u | (mant << 13);
    else if (e) f = sign | ((e + 112) << 23) | (mant << 13);
    else if (!mant) f = sign;
    else { // subnormal: mant * 2^-24, exact in float
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return f16_bits_float(f);
}

// Directed roundings for the group parameters, on finite values, saturating at +-65504 (0x7BFF).
KVLAB_HD uint16_t f16_nearest_sat(float x) {
    if (x >= 65504.0f) return 0x7BFFu;
    if (x <= -65504.0f) return 0xFBFFu;
    return f16_from_f32(x);
}

KVLAB_HD uint16_t f16_down(float x) { // largest fp16 <= x
    if (x <= -65504.0f) return 0xFBFFu;
    uint16_t h = f16_nearest_sat(x);
    if (f16_to_f32(h) > x) h = (h & 0x8000u) ? (uint16_t)(h + 1) : h == 0 ? (uint16_t)0x8001u : (uint16_t)(h - 1);
    return h;
}

KVLAB_HD uint16_t f16_up_pos(float x) { // smallest fp16 >= x, for x >= 0
    uint16_t h = f16_nearest_sat(x);
    if (f16_to_f32(h) < x && h < 0x7BFFu) h++;
    return h;
}

// kv/quant.h's group parameters for values in [lo, hi] on `levels` + 1 codes: *hmin the largest fp16 <= lo and
// *hscale the smallest fp16 scale whose grid min + scale * levels (as the decoder computes it) reaches hi; a
// constant group (!(hi > lo)) gets min rounded to nearest and scale 0, so it decodes exactly to min.
KVLAB_HD void f16_group_params(float lo, float hi, int levels, uint16_t *hmin, uint16_t *hscale) {
    if (!(hi > lo)) {
        *hmin = f16_nearest_sat(lo);
        *hscale = 0;
        return;
    }
    *hmin = f16_down(lo);
    float mn = f16_to_f32(*hmin);
    // (hi - min) / levels was itself rounded in float; step up until the grid reaches hi. Runs at most once or
    // twice.
    uint16_t hs = f16_up_pos((hi - mn) / (float)levels);
    while (hs < 0x7BFFu && F16_MADD(f16_to_f32(hs), (float)levels, mn) < hi) hs++;
    *hscale = hs;
}

// The code of x in a group of (min, scale != 0): (x - min) / scale clamped to [0, levels], rounded half to even.
KVLAB_HD float f16_group_code(float x, float mn, float scale, int levels) {
    float t = (x - mn) / scale;
    t = t > 0.0f ? t : 0.0f;
    t = t < (float)levels ? t : (float)levels;
    return rintf(t);
}

// The value a code decodes to: min + scale * code, rounded twice (no fused multiply-add).
KVLAB_HD float f16_group_value(float mn, float scale, float code) { return F16_MADD(scale, code, mn); }

#endif
