// fp16 rows: IEEE half precision (kv/quant.h's rounding), half the bytes of fp32.
#include <string.h>

#include "codec.h"
#include "packed.h"
#include "quant.h"

static int f16_parse(KVSpec *spec, const char *args) {
    (void)spec;
    return args ? -1 : 0;
}

static size_t f16_row_bytes(const KVCodec *codec, int dim, int group) {
    (void)codec;
    (void)group;
    return (size_t)dim * sizeof(uint16_t);
}

static void f16_encode(const KVCodec *codec, uint8_t *dst, const float *src, int dim, int group) {
    (void)codec;
    (void)group;
    for (int i = 0; i < dim; i++) { // byte stores: a row may start at any address (the codec contract)
        uint16_t h = quant_f32_to_f16(src[i]);
        memcpy(dst + 2 * (size_t)i, &h, sizeof h);
    }
}

static void f16_decode(const KVCodec *codec, float *dst, const uint8_t *src, int dim, int group) {
    (void)codec;
    (void)group;
    for (int i = 0; i < dim; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * (size_t)i, sizeof h);
        dst[i] = quant_f16_to_f32(h);
    }
}

static void f16_score(const KVCodec *codec, float *scores, const float *q, const uint8_t *rows, size_t stride, int n,
                      int dim, int group) {
    (void)codec;
    packed_score(PACKED_F16, scores, q, rows, stride, n, dim, group);
}

static void f16_accumulate(const KVCodec *codec, float *out, const float *p, const uint8_t *rows, size_t stride,
                           int n, int dim, int group) {
    (void)codec;
    packed_accumulate(PACKED_F16, out, p, rows, stride, n, dim, group);
}

const KVCodec kv_codec_f16 = {
    .name = "fp16",
    .form = "fp16",
    .help = "IEEE half precision",
    .bits = 16,
    .parse = f16_parse,
    .row_bytes = f16_row_bytes,
    .encode = f16_encode,
    .decode = f16_decode,
    .score = f16_score,
    .accumulate = f16_accumulate,
};
