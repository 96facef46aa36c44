// Attention read straight from encoded KV rows: the dot products of a query with n encoded rows, and the
// probability-weighted sum of n encoded rows, with each value decoded inside the loop (never written out).
// The codecs' score/accumulate hooks (kv/codec.h) and KIVI's key blocks (kv/attend.c) are built on these.
//
// A row is laid out as groups of g values, each [header][codes] (kv/quant.h's int rows: fp16 scale and
// minimum, value = min + scale * code; fp8.c's rows: fp16 scale, value = scale * e4m3(code); fp16 and fp32
// rows: one headerless group). An affine group is never decoded value by value: with c the codes,
//   q . x = scale * (q . c) + min * sum(q over the group)   and   sum_s p_s x_s = sum_s (p_s scale_s) c_s
//                                                                                 + sum_s p_s min_s,
// so the query's group sums are taken once per call and the minima once per row and group.
// AVX-512 or AVX2 (whichever the build targets) with a scalar path for a group's last values that do not
// fill a vector and for other CPUs. Pure functions: thread safe.
#ifndef KVLAB_KV_PACKED_H
#define KVLAB_KV_PACKED_H

#include <stddef.h>
#include <stdint.h>

typedef enum { PACKED_INT8, PACKED_INT4, PACKED_INT2, PACKED_FP8, PACKED_F16, PACKED_F32 } PackedFormat;

// The format of kv/quant.h's int rows of `bits` bits (8, 4, 2).
PackedFormat packed_int_format(int bits);

// scores[s] = q . decode(row s) for the n rows at rows + s * stride, each of dim values in groups of g
// (g is ignored for fp16 and fp32).
void packed_score(PackedFormat f, float *scores, const float *q, const uint8_t *rows, size_t stride, int n, int dim,
                  int g);
// out[i] += sum_s p[s] * decode(row s)[i], i < dim.
void packed_accumulate(PackedFormat f, float *out, const float *p, const uint8_t *rows, size_t stride, int n,
                       int dim, int g);
// KIVI's key block: dim channels, channel c at block + c * chan_bytes holding G tokens as one int group of
// `bits` bits (kv/quant.h's quant_encode_col). scores[t] = q . key_t for the block's G tokens.
void packed_score_cols(float *scores, const float *q, const uint8_t *block, size_t chan_bytes, int G, int dim,
                       int bits);

#endif
