// The CUDA emulator's cuda_bf16.h (tests/cuda_emu/): __nv_bfloat16 as the top 16 bits of an IEEE binary32, with the
// conversions kvlab's .cu sources use: float -> bf16 rounded to nearest even (a NaN stays a quiet NaN of its sign,
// a finite value past the largest bf16 rounds to infinity), bf16 -> float exact. cuemu_round_mantissa is the same
// rounding to any shorter mantissa, which the emulated cuBLAS also uses for TF32 (10 bits).
#ifndef KVLAB_CUDA_EMU_BF16_H
#define KVLAB_CUDA_EMU_BF16_H

#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    unsigned short x;
};
typedef __nv_bfloat16 nv_bfloat16;

// The float whose bits keep `bits` of the 23 mantissa bits of f, rounded to nearest, ties to even.
static inline float cuemu_round_mantissa(float f, int bits) {
    uint32_t u;
    memcpy(&u, &f, 4);
    int drop = 23 - bits;
    if (drop > 0) {
        if ((u & 0x7f800000u) == 0x7f800000u) { // inf stays, a NaN becomes the quiet NaN of its sign
            if (u & 0x007fffffu) u = (u & 0x80000000u) | 0x7fc00000u;
        } else {
            uint32_t lsb = (u >> drop) & 1u;
            u += (1u << (drop - 1)) - 1u + lsb; // a carry may run into the exponent: the next binade, or inf
            u &= ~((1u << drop) - 1u);
        }
    }
    float out;
    memcpy(&out, &u, 4);
    return out;
}

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    float r = cuemu_round_mantissa(f, 7);
    uint32_t u;
    memcpy(&u, &r, 4);
    return __nv_bfloat16{(unsigned short)(u >> 16)};
}

static inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.x << 16;
    float out;
    memcpy(&out, &u, 4);
    return out;
}

#endif
