// Dequantization of ggml's block formats to fp32 (layouts in ggml's ggml-common.h; every multi-byte field
// little-endian). The arithmetic is done in float in the same order as ggml's reference dequantize_row_*
// (scale times scale, then times the quant, then minus the offset), so with the build's -std=c11 (no FMA
// contraction) the results are the same floats the gguf Python package's reference gives.
//
//   Q8_0  32 elements, 34 bytes:  f16 d, i8 q[32]                     y = d * q
//   Q4_0  32 elements, 18 bytes:  f16 d, u8 qs[16]                    y[j] = d * (lo(qs[j]) - 8), y[j+16]: hi
//   Q4_1  32 elements, 20 bytes:  f16 d, f16 m, u8 qs[16]             y = d * q + m, nibbles as Q4_0
//   Q4_K 256 elements, 144 bytes: f16 d, f16 dmin, u8 scales[12] (8 six-bit scales and mins), u8 qs[128];
//         sub-block j (32 elements) = d*sc[j] * q - dmin*m[j]; qs bytes 32c..32c+31 hold sub-block 2c in their
//         low nibbles and 2c+1 in their high nibbles
//   Q6_K 256 elements, 210 bytes: u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), i8 scales[16], f16 d;
//         y = d * scales[i/16] * (q - 32), the 6-bit q of each half (128 elements) spread as ggml's loop does
#include "gguf_quant.h"

#include <string.h>

#include "../common/common.h"

static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

float gguf_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        float f = (float)man * 0x1p-24f; // zero or a subnormal half: exact in float
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13); // infinity or NaN (payload kept)
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

float gguf_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static void deq_f32(const unsigned char *s, float *y, size_t nb) {
    for (size_t i = 0; i < nb; i++) {
        uint32_t b = (uint32_t)s[4 * i] | (uint32_t)s[4 * i + 1] << 8 | (uint32_t)s[4 * i + 2] << 16 |
                     (uint32_t)s[4 * i + 3] << 24;
        memcpy(&y[i], &b, 4);
    }
}

static void deq_f16(const unsigned char *s, float *y, size_t nb) {
    for (size_t i = 0; i < nb; i++) y[i] = gguf_f16_to_f32(get16(s + 2 * i));
}

static void deq_bf16(const unsigned char *s, float *y, size_t nb) {
    for (size_t i = 0; i < nb; i++) y[i] = gguf_bf16_to_f32(get16(s + 2 * i));
}

static void deq_q8_0(const unsigned char *s, float *y, size_t nb) {
    for (size_t b = 0; b < nb; b++, s += 34, y += 32) {
        float d = gguf_f16_to_f32(get16(s));
        for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)s[2 + j] * d;
    }
}

static void deq_q4_0(const unsigned char *s, float *y, size_t nb) {
    for (size_t b = 0; b < nb; b++, s += 18, y += 32) {
        float d = gguf_f16_to_f32(get16(s));
        const unsigned char *qs = s + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((qs[j] & 0x0f) - 8) * d;
            y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

static void deq_q4_1(const unsigned char *s, float *y, size_t nb) {
    for (size_t b = 0; b < nb; b++, s += 20, y += 32) {
        float d = gguf_f16_to_f32(get16(s)), m = gguf_f16_to_f32(get16(s + 2));
        const unsigned char *qs = s + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(qs[j] & 0x0f) * d + m;
            y[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

// The six-bit scale and min of sub-block j (0..7) of a Q4_K block's 12 packed bytes: j < 4 in the low six
// bits of bytes j and j+4; j >= 4 in the nibbles of byte j+4 with their top two bits from bytes j-4 and j.
static void q4k_scale_min(int j, const unsigned char *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void deq_q4_k(const unsigned char *s, float *y, size_t nb) {
    for (size_t b = 0; b < nb; b++, s += 144) {
        float d = gguf_f16_to_f32(get16(s)), dmin = gguf_f16_to_f32(get16(s + 2));
        const unsigned char *scales = s + 4, *q = s + 16;
        for (int c = 0; c < 4; c++, q += 32) { // 64 elements per 32 bytes: low nibbles, then high nibbles
            int sc, m;
            q4k_scale_min(2 * c, scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            q4k_scale_min(2 * c + 1, scales, &sc, &m);
            float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

static void deq_q6_k(const unsigned char *s, float *y, size_t nb) {
    for (size_t b = 0; b < nb; b++, s += 210) {
        const unsigned char *ql = s, *qh = s + 128;
        const int8_t *sc = (const int8_t *)(s + 192);
        float d = gguf_f16_to_f32(get16(s + 208));
        for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = (int)((ql[l] & 0x0f) | ((qh[l] >> 0) & 3) << 4) - 32;
                int q2 = (int)((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) - 32;
                int q3 = (int)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int q4 = (int)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

typedef struct {
    uint32_t type;
    size_t block, bytes;
    void (*dequant)(const unsigned char *src, float *dst, size_t n_blocks);
} TypeInfo;

static const TypeInfo SUPPORTED[] = {
    {GGML_TYPE_F32, 1, 4, deq_f32},       {GGML_TYPE_F16, 1, 2, deq_f16},     {GGML_TYPE_BF16, 1, 2, deq_bf16},
    {GGML_TYPE_Q8_0, 32, 34, deq_q8_0},   {GGML_TYPE_Q4_0, 32, 18, deq_q4_0}, {GGML_TYPE_Q4_1, 32, 20, deq_q4_1},
    {GGML_TYPE_Q4_K, 256, 144, deq_q4_k}, {GGML_TYPE_Q6_K, 256, 210, deq_q6_k},
};

static const TypeInfo *find(uint32_t type) {
    for (size_t i = 0; i < sizeof SUPPORTED / sizeof SUPPORTED[0]; i++)
        if (SUPPORTED[i].type == type) return &SUPPORTED[i];
    return NULL;
}

const char *gguf_type_name(uint32_t type) {
    static const char *const names[] = {
        "F32",   "F16",   "Q4_0",    "Q4_1",   "",        "",       "Q5_0",    "Q5_1",   "Q8_0",  "Q8_1",
        "Q2_K",  "Q3_K",  "Q4_K",    "Q5_K",   "Q6_K",    "Q8_K",   "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
        "IQ4_NL", "IQ3_S", "IQ2_S",  "IQ4_XS", "I8",      "I16",    "I32",     "I64",    "F64",   "IQ1_M",
        "BF16",  "",      "",        "",       "TQ1_0",   "TQ2_0",  "",        "",       "",      "MXFP4"};
    if (type >= sizeof names / sizeof names[0] || !names[type][0]) return NULL;
    return names[type];
}

int gguf_type_supported(uint32_t type, size_t *block, size_t *bytes) {
    const TypeInfo *t = find(type);
    if (!t) return 0;
    *block = t->block;
    *bytes = t->bytes;
    return 1;
}

void gguf_dequantize(uint32_t type, const unsigned char *src, float *dst, size_t n) {
    const TypeInfo *t = find(type);
    CHECK(t && n % t->block == 0);
    t->dequant(src, dst, n / t->block);
}
