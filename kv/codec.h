// A storage format for KV rows: how one head's row of `dim` floats is held. Each format is one codec file in
// kv/ (its parse, row bytes, encode, decode, and optionally its attention hooks) plus one line in
// kv/registry.c; the contiguous cache (cache.c, attend.c) and the paged pool (paged.c,
// decode/paged_attention.c) encode, decode and attend through these hooks only.
//
// KIVI is the one layout that is not per row (keys are quantized per channel across a block of tokens): its
// codec entry parses and names it, and cache.c holds its blocks.
#ifndef KVLAB_KV_CODEC_H
#define KVLAB_KV_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "spec.h"

struct KVCodec {
    const char *name; // the spec term: int4
    const char *form; // its grammar: int4[:G]
    const char *help; // one line
    int bits;         // bits per stored value (32, 16, 8, 4, 2)
    // Reads the term's arguments (after "name:", NULL when bare) into spec (group; KIVI: residual). -1 when
    // malformed.
    int (*parse)(KVSpec *spec, const char *args);
    // Bytes of one encoded row of dim values in groups of `group` channels (kv_codec_group); 0 when that does
    // not fit (a group that does not divide dim). NULL: not a row format (KIVI). Pure functions of their
    // arguments: thread safe.
    size_t (*row_bytes)(const KVCodec *codec, int dim, int group);
    void (*encode)(const KVCodec *codec, uint8_t *dst, const float *src, int dim, int group);
    void (*decode)(const KVCodec *codec, float *dst, const uint8_t *src, int dim, int group);
    // Attention straight from encoded rows, each value decoded inside the loop (kv/packed.h); NULL where the
    // format has none (the cache then decodes rows into an fp32 view). For the n rows at rows + s * stride:
    // score: scores[s] = q . decode(row s); accumulate: out[i] += sum_s p[s] * decode(row s)[i], i < dim.
    // Equal to decode-then-attend up to float rounding (tests/test_kv_attend.c). Thread safe.
    void (*score)(const KVCodec *codec, float *scores, const float *q, const uint8_t *rows, size_t stride, int n,
                  int dim, int group);
    void (*accumulate)(const KVCodec *codec, float *out, const float *p, const uint8_t *rows, size_t stride, int n,
                       int dim, int group);
    int lossless;  // 1: decode(encode(x)) == x (fp32)
    int is_kivi;   // KIVI's block layout (full selection only, not paged)
    int quantized; // an integer-like format: hadamard and fpkeep apply to it
};

extern const KVCodec *const kv_codecs[];
extern const int kv_codec_count;
// The codec named `name` (the term up to ':'), or NULL.
const KVCodec *kv_codec_find(const char *name, size_t len);
// fp32, the default.
extern const KVCodec kv_codec_f32;

// fp8.c's scalar conversions (E4M3: round to nearest, ties to even, saturating at 448).
uint8_t kv_f32_to_fp8(float x);
float kv_fp8_to_f32(uint8_t code);

// The channels per group a spec's codec uses on rows of dim values: spec->group, or min(32, dim).
int kv_codec_group(const KVSpec *spec, int dim);

#endif
