// What one dropout mask call takes from the model's RNG, shared by the CPU op (residual.c) and the CUDA op
// (residual.cu): two draws, a Philox key and stream number (common/philox.h), whatever the mask's length.
// Element i is half-word i % 8 of Philox block i / 8 of (key, stream): keep[i] = 0 where it, as a multiple of
// 2^-16, is below p, else scale = 1/(1-p). 16 bits per element halve the Philox calls; p is then resolved to
// 1/65536, plenty for dropout.
#ifndef KVLAB_LAYERS_DROPOUT_H
#define KVLAB_LAYERS_DROPOUT_H

#include <stdint.h>

#include "../common/common.h"
#include "../common/philox.h"

#ifdef __cplusplus
extern "C" { // also included from residual.cu
#endif

typedef struct {
    uint64_t key, stream;
    float p, scale;
} DropoutDraw;

void dropout_mask_draw(DropoutDraw *d, float p, Rng *rng);

#define DROPOUT_PER_BLOCK 8 // elements per Philox block: 4 words of 2 half-words

// keep of element j (0..7) of a block whose Philox words are w: exact float arithmetic, the same on every backend.
KVLAB_HD float dropout_keep(const uint32_t w[4], int j, const DropoutDraw *d) {
    uint32_t h = (w[j >> 1] >> ((j & 1) * 16)) & 0xffffu;
    return (float)h * (1.0f / 65536.0f) < d->p ? 0.0f : d->scale;
}

#ifdef __cplusplus
}
#endif

#endif
