// The ggml tensor types a GGUF file may hold, their block geometry, and dequantization to fp32 of the ones
// kvlab reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K). A block of `block` elements takes `bytes`
// bytes; a row of n elements (n a multiple of block) takes n / block * bytes. Used by checkpoints/gguf.c.
#ifndef KVLAB_GGUF_QUANT_H
#define KVLAB_GGUF_QUANT_H

#include <stddef.h>
#include <stdint.h>

enum {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_BF16 = 30,
};

// The name of a ggml type ("Q4_K"), also for the types kvlab does not read; NULL for a number ggml never
// assigned.
const char *gguf_type_name(uint32_t type);
// Whether kvlab dequantizes type; if so, its block geometry.
int gguf_type_supported(uint32_t type, size_t *block, size_t *bytes);
// Dequantizes n elements (a multiple of the type's block) from src to dst, exactly as ggml does. The type
// must be supported.
void gguf_dequantize(uint32_t type, const unsigned char *src, float *dst, size_t n);
// One IEEE half / bfloat16 (little-endian bits) as a float, exactly.
float gguf_f16_to_f32(uint16_t h);
float gguf_bf16_to_f32(uint16_t h);

#endif
