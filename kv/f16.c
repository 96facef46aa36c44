// fp16 rows: IEEE half precision (kv/quant.h's rounding), half the bytes of fp32.
#include "codec.h"
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
    quant_f16_encode_row((uint16_t *)(void *)dst, src, dim);
}

static void f16_decode(const KVCodec *codec, float *dst, const uint8_t *src, int dim, int group) {
    (void)codec;
    (void)group;
    quant_f16_decode_row(dst, (const uint16_t *)(const void *)src, dim);
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
};
