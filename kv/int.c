// Integer rows: asymmetric uniform quantization per token in groups of G channels of a head, an fp16 scale
// and minimum per group (kv/quant.h's layout and error bound), with 8, 4 or 2 bits per value.
#include "codec.h"
#include "packed.h"
#include "quant.h"

static int int_parse(KVSpec *spec, const char *args) {
    int g;
    if (!args) return 0;
    if (kv_parse_ints(args, &g, 1) != 1 || g < 1) return -1;
    spec->group = g;
    return 0;
}

static size_t int_row_bytes(const KVCodec *codec, int dim, int group) {
    return quant_row_bytes(dim, group, codec->bits);
}

static void int_encode(const KVCodec *codec, uint8_t *dst, const float *src, int dim, int group) {
    quant_encode_row(dst, src, dim, group, codec->bits);
}

static void int_decode(const KVCodec *codec, float *dst, const uint8_t *src, int dim, int group) {
    quant_decode_row(dst, src, dim, group, codec->bits);
}

static void int_score(const KVCodec *codec, float *scores, const float *q, const uint8_t *rows, size_t stride, int n,
                      int dim, int group) {
    packed_score(packed_int_format(codec->bits), scores, q, rows, stride, n, dim, group);
}

static void int_accumulate(const KVCodec *codec, float *out, const float *p, const uint8_t *rows, size_t stride,
                           int n, int dim, int group) {
    packed_accumulate(packed_int_format(codec->bits), out, p, rows, stride, n, dim, group);
}

#define INT_CODEC(BITS)                                                                                   \
    const KVCodec kv_codec_int##BITS = {                                                                  \
        .name = "int" #BITS,                                                                              \
        .form = "int" #BITS "[:G]",                                                                       \
        .help = #BITS "-bit integers per token, groups of G channels (32, or the head dimension if smaller), fp16 scale and minimum",   \
        .bits = BITS,                                                                                     \
        .parse = int_parse,                                                                               \
        .row_bytes = int_row_bytes,                                                                       \
        .encode = int_encode,                                                                             \
        .decode = int_decode,                                                                             \
        .score = int_score,                                                                               \
        .accumulate = int_accumulate,                                                                     \
        .quantized = 1,                                                                                   \
    }

INT_CODEC(8);
INT_CODEC(4);
INT_CODEC(2);
