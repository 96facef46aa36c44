// The CUDA emulator's cuda_fp16.h (tests/cuda_emu/): __half as its IEEE binary16 bits, with the exact conversions
// (the one kvlab's .cu sources use: half -> float, exact).
#ifndef KVLAB_CUDA_EMU_FP16_H
#define KVLAB_CUDA_EMU_FP16_H

#include <stdint.h>
#include <string.h>

struct __half {
    unsigned short bits;
};

static inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
static inline unsigned short __half_as_ushort(__half h) { return h.bits; }

static inline float __half2float(__half h) {
    uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu, f;
    if (exp == 0x1f) {
        f = sign | 0x7f800000u | (man << 13); // inf, NaN
    } else if (exp) {
        f = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man) { // subnormal: normalise
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        f = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    } else {
        f = sign;
    }
    float out;
    memcpy(&out, &f, 4);
    return out;
}

#endif
