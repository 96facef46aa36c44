// fp8 rows: OCP FP8 E4M3 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, the largest
// finite value 448, subnormals down to 2^-9) with one fp16 scale per group of G channels of a token's head,
// as vLLM's and TensorRT-LLM's `--kv-cache-dtype fp8` hold a cache. Row layout, per group: [scale f16,
// little-endian][G codes, one byte each]. The scale is amax/448 rounded up to fp16, so no value saturates;
// each value is x / scale rounded to the nearest E4M3 value (ties to even mantissa). A group of zeros stores
// scale 0. Relative error per value: at most 2^-4 (half a mantissa step) for values of at least 2^-6 of the
// scale's range; smaller ones are subnormal codes with an absolute error of at most scale * 2^-10.
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "codec.h"
#include "packed.h"
#include "quant.h"

enum { FP8_MAX_CODE = 0x7E }; // 448 = 1.75 * 2^8

// Built from the bits (no libm call: this decodes every held value at every step): a normal code's exponent
// field E and mantissa m are the float's exponent E - 7 + 127 and its top 3 mantissa bits.
float kv_fp8_to_f32(uint8_t code) {
    uint32_t exp = (code >> 3) & 0xFu, mant = code & 7u;
    float mag;
    if (exp == 0) {
        mag = (float)mant * 0x1p-9f; // subnormal: m * 2^-9, exact
    } else if (exp == 0xF && mant == 7) {
        mag = NAN; // never produced by the encoder
    } else {
        uint32_t bits = ((exp + 120u) << 23) | (mant << 20);
        memcpy(&mag, &bits, sizeof(mag));
    }
    return code & 0x80 ? -mag : mag;
}

uint8_t kv_f32_to_fp8(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (!(a == a)) return sign | FP8_MAX_CODE; // NaN: the encoder's inputs are finite; saturate defensively
    int code;
    if (a < 0x1p-6f) { // subnormal range: steps of 2^-9; code 8 is the smallest normal, 2^-6
        code = (int)rintf(a * 0x1p9f);
    } else {
        int e;
        frexpf(a, &e); // a = f * 2^e, f in [0.5, 1): the leading bit is 2^(e-1)
        int q = (int)rintf(ldexpf(a, 4 - e)); // a / 2^(e-4): 8..16 steps of the binade
        code = (e + 6) * 8 + (q - 8);          // q == 16 carries into the next binade by itself
    }
    if (code > FP8_MAX_CODE) code = FP8_MAX_CODE;
    return sign | (uint8_t)code;
}

static int fp8_parse(KVSpec *spec, const char *args) {
    int g;
    if (!args) return 0;
    if (kv_parse_ints(args, &g, 1) != 1 || g < 1) return -1;
    spec->group = g;
    return 0;
}

static size_t fp8_row_bytes(const KVCodec *codec, int dim, int g) {
    (void)codec;
    if (dim < 1 || g < 1 || dim % g != 0) return 0;
    return (size_t)(dim / g) * (2 + (size_t)g);
}

static void fp8_encode(const KVCodec *codec, uint8_t *dst, const float *src, int dim, int g) {
    (void)codec;
    for (int at = 0; at < dim; at += g) {
        float amax = 0.0f;
        for (int i = 0; i < g; i++) amax = fmaxf(amax, fabsf(src[at + i]));
        uint16_t h = quant_f32_to_f16(amax / 448.0f);
        float scale = quant_f16_to_f32(h);
        if (scale * 448.0f < amax) { // rounded down: take the next fp16 up so amax / scale <= 448
            h++;
            scale = quant_f16_to_f32(h);
        }
        dst[0] = (uint8_t)(h & 0xFF);
        dst[1] = (uint8_t)(h >> 8);
        for (int i = 0; i < g; i++) dst[2 + i] = scale > 0.0f ? kv_f32_to_fp8(src[at + i] / scale) : 0;
        dst += 2 + g;
    }
}

// Every code's value, for the decode loop (one load per value; rows are decoded at every attention step).
static float fp8_table[256];
static pthread_once_t fp8_table_once = PTHREAD_ONCE_INIT;

static void fp8_table_fill(void) {
    for (int c = 0; c < 256; c++) fp8_table[c] = kv_fp8_to_f32((uint8_t)c);
}

static void fp8_decode(const KVCodec *codec, float *dst, const uint8_t *src, int dim, int g) {
    (void)codec;
    pthread_once(&fp8_table_once, fp8_table_fill);
    for (int at = 0; at < dim; at += g) {
        float scale = quant_f16_to_f32((uint16_t)(src[0] | (src[1] << 8)));
        for (int i = 0; i < g; i++) dst[at + i] = fp8_table[src[2 + i]] * scale;
        src += 2 + g;
    }
}

static void fp8_score(const KVCodec *codec, float *scores, const float *q, const uint8_t *rows, size_t stride, int n,
                      int dim, int group) {
    (void)codec;
    packed_score(PACKED_FP8, scores, q, rows, stride, n, dim, group);
}

static void fp8_accumulate(const KVCodec *codec, float *out, const float *p, const uint8_t *rows, size_t stride,
                           int n, int dim, int group) {
    (void)codec;
    packed_accumulate(PACKED_FP8, out, p, rows, stride, n, dim, group);
}

const KVCodec kv_codec_fp8 = {
    .name = "fp8",
    .form = "fp8[:G]",
    .help = "FP8 E4M3 per token with an fp16 scale per G channels (32, or the head dimension if smaller), as vLLM's fp8",
    .bits = 8,
    .parse = fp8_parse,
    .row_bytes = fp8_row_bytes,
    .encode = fp8_encode,
    .decode = fp8_decode,
    .score = fp8_score,
    .accumulate = fp8_accumulate,
    .quantized = 1,
};
