// fp16 conversion, asymmetric group quantization (row and strided-column forms) and the Walsh-Hadamard
// rotation. See quant.h for the formats and the error bound.
#include "quant.h"

#include <assert.h>
#include <math.h>
#include <string.h>

// --- IEEE binary16 -------------------------------------------------------------------------------------

uint16_t quant_f32_to_f16(float x) {
    uint32_t f;
    memcpy(&f, &x, 4);
    uint32_t sign = (f >> 16) & 0x8000u, abs = f & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((abs >> 13) & 0x3FFu)); // NaN stays (quiet) NaN
    if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); // >= 65520 (65504 + half an ulp, ties to even): inf
    if (abs < 0x38800000u) {                                   // below 2^-14: fp16 subnormal or zero
        if (abs <= 0x33000000u) return (uint16_t)sign;         // <= 2^-25, half the smallest subnormal (tie to 0)
        uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;         // 24-bit significand, value mant * 2^(e-150)
        int shift = 126 - (int)(abs >> 23);                    // 14..24: units of 2^-24
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;      // a carry to 0x400 is the smallest normal: right
        return (uint16_t)(sign | q);
    }
    uint32_t h = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3FFu), rem = abs & 0x1FFFu; // rebias 127 -> 15
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; // a carry into the exponent is still correct
    return (uint16_t)(sign | h);
}

float quant_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, f;
    if (e == 0x1F) f = sign | 0x7F800000u | (mant << 13);
    else if (e) f = sign | ((e + 112) << 23) | (mant << 13);
    else if (!mant) f = sign;
    else { // subnormal: mant * 2^-24, exact in float
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

// Directed roundings for the group parameters, on finite values, saturating at +-65504 (0x7BFF).
static uint16_t f16_nearest_sat(float x) {
    if (x >= 65504.0f) return 0x7BFFu;
    if (x <= -65504.0f) return 0xFBFFu;
    return quant_f32_to_f16(x);
}

static uint16_t f16_down(float x) { // largest fp16 <= x
    if (x <= -65504.0f) return 0xFBFFu;
    uint16_t h = f16_nearest_sat(x);
    if (quant_f16_to_f32(h) > x) h = (h & 0x8000u) ? (uint16_t)(h + 1) : h == 0 ? 0x8001u : (uint16_t)(h - 1);
    return h;
}

static uint16_t f16_up_pos(float x) { // smallest fp16 >= x, for x >= 0
    uint16_t h = f16_nearest_sat(x);
    if (quant_f16_to_f32(h) < x && h < 0x7BFFu) h++;
    return h;
}

// --- Group quantization ----------------------------------------------------------------------------------

static int valid_bits(int bits) { return bits == 8 || bits == 4 || bits == 2; }

static size_t group_code_bytes(int g, int bits) { return ((size_t)g * (size_t)bits + 7) / 8; }

size_t quant_row_bytes(int n, int g, int bits) {
    if (n < 1 || g < 1 || n % g != 0 || !valid_bits(bits)) return 0;
    return (size_t)(n / g) * (4 + group_code_bytes(g, bits));
}

// The fp16 fields are little-endian whatever the host.
static inline void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v & 0xFFu), p[1] = (uint8_t)(v >> 8); }
static inline uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

// One group of g values x[0], x[stride], ...; writes exactly 4 + group_code_bytes(g, bits) bytes.
static inline void encode_group(uint8_t *dst, const float *x, ptrdiff_t stride, int g, int bits) {
    int levels = (1 << bits) - 1;
    float lo = x[0], hi = x[0];
    for (int i = 1; i < g; i++) {
        float v = x[i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    uint16_t hmin, hscale;
    float min, scale;
    if (!(hi > lo)) { // constant group: scale 0, min to nearest; decodes exactly to min
        hmin = f16_nearest_sat(lo);
        hscale = 0;
        min = quant_f16_to_f32(hmin), scale = 0.0f;
    } else {
        hmin = f16_down(lo);
        min = quant_f16_to_f32(hmin);
        hscale = f16_up_pos((hi - min) / (float)levels);
        // (hi - min) / levels was itself rounded in float; step up until the grid reaches hi as decode computes
        // it (scale * levels is exact: 11 x 8 significant bits). Runs at most once or twice.
        while (hscale < 0x7BFFu && min + quant_f16_to_f32(hscale) * (float)levels < hi) hscale++;
        scale = quant_f16_to_f32(hscale);
    }
    put_u16(dst, hscale);
    put_u16(dst + 2, hmin);
    uint8_t *codes = dst + 4;
    memset(codes, 0, group_code_bytes(g, bits));
    if (hscale == 0) return; // all codes 0
    // t = (x - min) / scale lies in [0, levels] up to float rounding; clamp, then round half to even (rintf,
    // like lrintf in the default rounding mode, but vectorizable). A chunk of codes at a time, then packed.
    enum { CHUNK = 64 };
    uint8_t q[CHUNK];
    for (int i0 = 0; i0 < g; i0 += CHUNK) {
        int cnt = g - i0 < CHUNK ? g - i0 : CHUNK;
        const float *xc = x + i0 * stride;
        for (int i = 0; i < cnt; i++) {
            float t = (xc[i * stride] - min) / scale;
            t = t > 0.0f ? t : 0.0f;
            t = t < (float)levels ? t : (float)levels;
            q[i] = (uint8_t)rintf(t);
        }
        for (int i = 0; i < cnt; i++) codes[((i0 + i) * bits) >> 3] |= (uint8_t)(q[i] << (((i0 + i) * bits) & 7));
    }
}

// The 4- and 2-bit paths look the dequantized levels up in a small table (the same min + scale * code, so the
// values are identical); whole code bytes first, then any codes in a partial last byte.
static inline void decode_group(float *y, ptrdiff_t stride, const uint8_t *src, int g, int bits) {
    float scale = quant_f16_to_f32(get_u16(src)), min = quant_f16_to_f32(get_u16(src + 2));
    const uint8_t *codes = src + 4;
    if (bits == 8) {
        for (int i = 0; i < g; i++) y[i * stride] = min + scale * (float)codes[i];
        return;
    }
    float lut[16];
    int levels = (1 << bits) - 1, per_byte = 8 / bits, i = 0;
    for (int k = 0; k <= levels; k++) lut[k] = min + scale * (float)k;
    if (bits == 4) {
        for (; i + 1 < g; i += 2) {
            unsigned b = codes[i >> 1];
            y[i * stride] = lut[b & 0xFu];
            y[(i + 1) * stride] = lut[b >> 4];
        }
    } else {
        for (; i + 3 < g; i += 4) {
            unsigned b = codes[i >> 2];
            y[i * stride] = lut[b & 3u];
            y[(i + 1) * stride] = lut[(b >> 2) & 3u];
            y[(i + 2) * stride] = lut[(b >> 4) & 3u];
            y[(i + 3) * stride] = lut[b >> 6];
        }
    }
    for (; i < g; i++) y[i * stride] = lut[(codes[i / per_byte] >> ((i % per_byte) * bits)) & (unsigned)levels];
}

void quant_encode_row(uint8_t *dst, const float *src, int n, int g, int bits) {
    assert(quant_row_bytes(n, g, bits) > 0);
    size_t group_bytes = 4 + group_code_bytes(g, bits);
    for (int start = 0; start < n; start += g, dst += group_bytes) encode_group(dst, src + start, 1, g, bits);
}

void quant_decode_row(float *dst, const uint8_t *src, int n, int g, int bits) {
    assert(quant_row_bytes(n, g, bits) > 0);
    size_t group_bytes = 4 + group_code_bytes(g, bits);
    for (int start = 0; start < n; start += g, src += group_bytes) decode_group(dst + start, 1, src, g, bits);
}

void quant_encode_col(uint8_t *dst, const float *src, int rows, int cols, int c, int bits) {
    assert(quant_row_bytes(rows, rows, bits) > 0 && c >= 0 && c < cols);
    encode_group(dst, src + c, cols, rows, bits);
}

void quant_decode_col(float *dst, const uint8_t *src, int rows, int cols, int c, int bits) {
    assert(quant_row_bytes(rows, rows, bits) > 0 && c >= 0 && c < cols);
    decode_group(dst + c, cols, src, rows, bits);
}

// --- Rotation --------------------------------------------------------------------------------------------

int quant_hadamard(float *x, int n) {
    if (n < 1 || (n & (n - 1)) != 0) return -1;
    for (int len = 1; len < n; len <<= 1)
        for (int i = 0; i < n; i += 2 * len)
            for (int j = i; j < i + len; j++) {
                float a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
    float s = (float)(1.0 / sqrt((double)n)); // exact for even powers of two
    for (int i = 0; i < n; i++) x[i] *= s;
    return 0;
}
