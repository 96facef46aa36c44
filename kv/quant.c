// fp16 conversion, asymmetric group quantization (row and strided-column forms) and the Walsh-Hadamard
// rotation. See quant.h for the formats and the error bound. The fp16 arithmetic and the group parameters are
// common/f16.h's, which the device encoder and decoder (attention/kv_rows.cu, decode.cu) share.
#include "quant.h"

#include "../common/f16.h"

#include <assert.h>
#include <math.h>
#include <string.h>

// --- IEEE binary16 -------------------------------------------------------------------------------------

uint16_t quant_f32_to_f16(float x) { return f16_from_f32(x); }

float quant_f16_to_f32(uint16_t h) { return f16_to_f32(h); }

void quant_f16_encode_row(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = quant_f32_to_f16(src[i]);
}

void quant_f16_decode_row(float *dst, const uint16_t *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = quant_f16_to_f32(src[i]);
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
    f16_group_params(lo, hi, levels, &hmin, &hscale);
    float min = f16_to_f32(hmin), scale = f16_to_f32(hscale);
    put_u16(dst, hscale);
    put_u16(dst + 2, hmin);
    uint8_t *codes = dst + 4;
    memset(codes, 0, group_code_bytes(g, bits));
    if (hscale == 0) return; // all codes 0
    // the codes of a chunk at a time (f16_group_code, vectorizable), then packed
    enum { CHUNK = 64 };
    uint8_t q[CHUNK];
    for (int i0 = 0; i0 < g; i0 += CHUNK) {
        int cnt = g - i0 < CHUNK ? g - i0 : CHUNK;
        const float *xc = x + i0 * stride;
        for (int i = 0; i < cnt; i++) q[i] = (uint8_t)f16_group_code(xc[i * stride], min, scale, levels);
        for (int i = 0; i < cnt; i++) codes[((i0 + i) * bits) >> 3] |= (uint8_t)(q[i] << (((i0 + i) * bits) & 7));
    }
}

// The 4- and 2-bit paths look the dequantized levels up in a small table (the same min + scale * code, so the
// values are identical); whole code bytes first, then any codes in a partial last byte.
static inline void decode_group(float *y, ptrdiff_t stride, const uint8_t *src, int g, int bits) {
    float scale = f16_to_f32(get_u16(src)), min = f16_to_f32(get_u16(src + 2));
    const uint8_t *codes = src + 4;
    if (bits == 8) {
        for (int i = 0; i < g; i++) y[i * stride] = f16_group_value(min, scale, (float)codes[i]);
        return;
    }
    float lut[16];
    int levels = (1 << bits) - 1, per_byte = 8 / bits, i = 0;
    for (int k = 0; k <= levels; k++) lut[k] = f16_group_value(min, scale, (float)k);
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
