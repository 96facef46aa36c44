#include "quant.h"

#include <math.h>
#include <string.h>

uint16_t quant_f32_to_f16(float x) {
    uint32_t f;
    memcpy(&f, &x, 4);
    uint32_t sign = (f >> 16) & 0x8000u, abs = f & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((abs >> 13) & 0x3FFu)); // NaN stays NaN
    if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);                       // rounds past 65504: inf
    if (abs < 0x38800000u) {                                                         // fp16 subnormal or zero
        if (abs < 0x33000000u) return (uint16_t)sign;                                // below half the smallest
        uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
        int shift = 126 - (int)(abs >> 23); // 14..24
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t e = (abs >> 23) - 112, mant = abs & 0x7FFFFFu; // rebias 127 -> 15
    uint32_t h = (e << 10) | (mant >> 13), rem = mant & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; // a carry into the exponent is still correct
    return (uint16_t)(sign | h);
}

float quant_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, f;
    if (e == 0x1F) f = sign | 0x7F800000u | (mant << 13);
    else if (e) f = sign | ((e + 112) << 23) | (mant << 13);
    else if (!mant) f = sign;
    else { // subnormal: value mant * 2^-24
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    float out;
    memcpy(&out, &f, 4);
    return out;
}

void quant_f16_encode_row(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = quant_f32_to_f16(src[i]);
}

void quant_f16_decode_row(float *dst, const uint16_t *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = quant_f16_to_f32(src[i]);
}

static size_t group_code_bytes(int g, int bits) { return ((size_t)g * bits + 7) / 8; }

size_t quant_row_bytes(int n, int g, int bits) { return (size_t)(n / g) * (4 + group_code_bytes(g, bits)); }

void quant_encode_row(uint8_t *dst, const float *src, int n, int g, int bits) {
    int levels = (1 << bits) - 1;
    size_t code_bytes = group_code_bytes(g, bits);
    for (int start = 0; start < n; start += g) {
        const float *x = src + start;
        float lo = x[0], hi = x[0];
        for (int i = 1; i < g; i++) lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
        uint16_t hmin = quant_f32_to_f16(lo), hscale = quant_f32_to_f16((hi - lo) / levels);
        float min = quant_f16_to_f32(hmin), scale = quant_f16_to_f32(hscale);
        memcpy(dst, &hscale, 2);
        memcpy(dst + 2, &hmin, 2);
        uint8_t *codes = dst + 4;
        memset(codes, 0, code_bytes);
        for (int i = 0; i < g; i++) {
            int q = scale > 0.0f ? (int)lrintf((x[i] - min) / scale) : 0;
            q = q < 0 ? 0 : q > levels ? levels : q;
            codes[(i * bits) / 8] |= (uint8_t)(q << ((i * bits) % 8));
        }
        dst += 4 + code_bytes;
    }
}

void quant_decode_row(float *dst, const uint8_t *src, int n, int g, int bits) {
    int mask = (1 << bits) - 1;
    size_t code_bytes = group_code_bytes(g, bits);
    for (int start = 0; start < n; start += g) {
        uint16_t hscale, hmin;
        memcpy(&hscale, src, 2);
        memcpy(&hmin, src + 2, 2);
        float scale = quant_f16_to_f32(hscale), min = quant_f16_to_f32(hmin);
        const uint8_t *codes = src + 4;
        for (int i = 0; i < g; i++) dst[start + i] = min + scale * (float)((codes[(i * bits) / 8] >> ((i * bits) % 8)) & mask);
        src += 4 + code_bytes;
    }
}

int quant_hadamard(float *x, int n) {
    if (n < 1 || (n & (n - 1)) != 0) return -1;
    for (int len = 1; len < n; len <<= 1)
        for (int i = 0; i < n; i += 2 * len)
            for (int j = i; j < i + len; j++) {
                float a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
    float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++) x[i] *= s;
    return 0;
}
