// Storage primitives for KV rows: IEEE half precision, and asymmetric uniform integer quantization in groups
// (per-group fp16 scale and minimum, codes packed little-endian), plus the orthonormal Walsh-Hadamard
// rotation applied to keys before quantizing. Pure functions: no allocation, no global state, thread safe.
#ifndef KVLAB_QUANT_H
#define KVLAB_QUANT_H

#include <stddef.h>
#include <stdint.h>

// --- IEEE binary16 -------------------------------------------------------------------------------------
// Round to nearest, ties to even, independent of the FP environment. Subnormal halves are produced and read;
// magnitudes at or below 2^-25 become a signed zero, those at or above 65520 become a signed inf; inf stays
// inf and NaN stays a (quiet) NaN with its sign and the top 10 bits of its payload.
uint16_t quant_f32_to_f16(float x);
float quant_f16_to_f32(uint16_t h); // exact
void quant_f16_encode_row(uint16_t *dst, const float *src, int n);
void quant_f16_decode_row(float *dst, const uint16_t *src, int n);

// --- Group quantization ----------------------------------------------------------------------------------
// A row of n floats in groups of g consecutive values (g divides n), bits 8, 4 or 2; L = 2^bits - 1 levels.
// Layout of one row: for each group, [scale f16][min f16][codes, ceil(g*bits/8) bytes], the f16 fields
// little-endian, code i of a group at bit offset i*bits of the group's code bytes (little-endian, so with
// 4 bits value 0 is the low nibble of byte 0; any unused high bits of the last byte are 0). Nothing is
// aligned: a row may start at any byte. Value i decodes to min + scale * code_i.
//
// Encoding, for a group with lo = min x and hi = max x:
//   min   = the largest fp16 <= lo (rounded down, not to nearest),
//   scale = the smallest fp16 >= (hi - min) / L (rounded up), so that min + L*scale >= hi,
//   code  = round((x - min) / scale) clamped to [0, L], computed from these fp16-rounded values.
// The directed rounding makes the fp16 grid cover [lo, hi], so no code is ever clamped and
//   |x - decode(x)| <= scale/2 + 2^-22 * (|min| + L*scale)   (the second term: float rounding),
// where scale <= ((hi - lo) + max(|lo| 2^-9, 2^-24)) / L * (1 + 2^-9) + 2^-23, i.e. (hi - lo) / L up to
// fp16's 11-bit precision (tests/test_quant.c derives and checks both). Codes round half to even (the
// default FP rounding mode is assumed). Rounding min to nearest instead could put it above lo and clamp lo's
// code, an error of up to half an fp16 ulp of lo (1/16 at 100), far above scale/2 for a group with a large
// offset and a small spread, e.g. a biased key channel in KIVI's per-channel groups.
// A constant group (hi == lo) stores scale 0 and min = lo rounded to nearest, and decodes exactly to that.
// Inputs must be finite and within fp16 range (|x| <= 65504); larger values are clamped, and nothing
// produces inf or NaN.

// Bytes of one encoded row; 0 if the arguments are invalid (n < 1, g < 1, g not dividing n, bits not in
// {8, 4, 2}), so callers can validate a configuration with it.
size_t quant_row_bytes(int n, int g, int bits);
void quant_encode_row(uint8_t *dst, const float *src, int n, int g, int bits);
void quant_decode_row(float *dst, const uint8_t *src, int n, int g, int bits);

// Strided variant for the KIVI key layout (keys quantized per channel across a block of tokens): encodes
// column c of a (rows, cols) row-major fp32 block, i.e. src[c], src[c + cols], ..., src[c + (rows-1)*cols],
// as ONE group of `rows` values; dst gets quant_row_bytes(rows, rows, bits) bytes, byte-identical to
// quant_encode_row of the gathered column. decode writes back into the same strided column of dst and
// touches nothing else.
void quant_encode_col(uint8_t *dst, const float *src, int rows, int cols, int c, int bits);
void quant_decode_col(float *dst, const uint8_t *src, int rows, int cols, int c, int bits);

// --- Rotation --------------------------------------------------------------------------------------------
// In-place orthonormal fast Walsh-Hadamard transform of n values (Sylvester order, H_2 = [[1, 1], [1, -1]]),
// scaled by 1/sqrt(n) so that it is its own inverse and preserves the norm. Applied per head (n = head_dim)
// to keys before quantizing (the QuaRot / llama.cpp idea: it spreads a channel outlier over all channels).
// Returns 0, or -1 (x untouched) if n is not a power of two.
int quant_hadamard(float *x, int n);

#endif
