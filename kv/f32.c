// fp32 rows: the format the model computes in, so the cache is exact. The default codec.
#include <string.h>

#include "codec.h"
#include "packed.h"

static int f32_parse(KVSpec *spec, const char *args) {
    (void)spec;
    return args ? -1 : 0;
}

static size_t f32_row_bytes(const KVCodec *codec, int dim, int group) {
    (void)codec;
    (void)group;
    return (size_t)dim * sizeof(float);
}

static void f32_encode(const KVCodec *codec, uint8_t *dst, const float *src, int dim, int group) {
    (void)codec;
    (void)group;
    memcpy(dst, src, (size_t)dim * sizeof(float));
}

static void f32_decode(const KVCodec *codec, float *dst, const uint8_t *src, int dim, int group) {
    (void)codec;
    (void)group;
    memcpy(dst, src, (size_t)dim * sizeof(float));
}

static void f32_score(const KVCodec *codec, float *scores, const float *q, const uint8_t *rows, size_t stride, int n,
                      int dim, int group) {
    (void)codec;
    packed_score(PACKED_F32, scores, q, rows, stride, n, dim, group);
}

static void f32_accumulate(const KVCodec *codec, float *out, const float *p, const uint8_t *rows, size_t stride,
                           int n, int dim, int group) {
    (void)codec;
    packed_accumulate(PACKED_F32, out, p, rows, stride, n, dim, group);
}

const KVCodec kv_codec_f32 = {
    .name = "fp32",
    .form = "fp32",
    .help = "32-bit floats (exact; the default)",
    .bits = 32,
    .parse = f32_parse,
    .row_bytes = f32_row_bytes,
    .encode = f32_encode,
    .decode = f32_decode,
    .score = f32_score,
    .accumulate = f32_accumulate,
    .lossless = 1,
};
