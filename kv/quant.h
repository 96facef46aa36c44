// Storage primitives for KV rows: IEEE half precision, and asymmetric uniform integer quantization in groups
// (per-group fp16 scale and minimum, codes packed little-endian), plus the orthonormal Walsh-Hadamard
// rotation applied to keys before quantizing. Pure functions, no allocation.
#ifndef KVLAB_QUANT_H
#define KVLAB_QUANT_H

#include <stddef.h>
#include <stdint.h>

// Round to nearest even; subnormals, inf and NaN kept; overflow goes to inf.
uint16_t quant_f32_to_f16(float x);
float quant_f16_to_f32(uint16_t h);
void quant_f16_encode_row(uint16_t *dst, const float *src, int n);
void quant_f16_decode_row(float *dst, const uint16_t *src, int n);

// A row of n values in groups of g (g divides n), bits 8, 4 or 2. Each group: [scale f16][min f16][codes,
// ceil(g*bits/8) bytes], scale = (max - min) / (2^bits - 1) and code = round((x - min) / scale). The codes are
// computed with the fp16-rounded scale and minimum, so |x - decode| <= scale / 2 up to float rounding.
size_t quant_row_bytes(int n, int g, int bits);
void quant_encode_row(uint8_t *dst, const float *src, int n, int g, int bits);
void quant_decode_row(float *dst, const uint8_t *src, int n, int g, int bits);

// In-place orthonormal fast Walsh-Hadamard transform (scaled by 1/sqrt(n), its own inverse). n must be a
// power of two; returns -1 otherwise.
int quant_hadamard(float *x, int n);

#endif
