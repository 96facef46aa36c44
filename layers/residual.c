// Residual add and the dropout mask that scales the branch being added (residual dropout as in nanoGPT).
// The mask is counter-based (common/philox.h): each call takes a key and a stream number from the model's RNG
// (two draws, whatever N), and element i is a pure function of (key, stream, i). So the loop runs on every
// thread with the same result, and the CUDA op (residual.cu) computes the same mask on the device. A pass
// shorter than par_worth's threshold (a decode row) stays on the calling thread.
#include "cpu_ops.h"

#include <string.h>

#include "../common/par.h"

void residual_forward_cpu(float *out, const float *a, const float *b, const float *scale_b, size_t N) {
    if (scale_b) {
#pragma omp parallel for if (par_worth(N)) schedule(static)
        for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i] * scale_b[i];
    } else {
#pragma omp parallel for if (par_worth(N)) schedule(static)
        for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
    }
}

void dropout_mask_draw(DropoutDraw *d, float p, Rng *rng) {
    d->key = rng_next_u64(rng);
    d->stream = rng_next_u64(rng);
    d->p = p;
    d->scale = 1.0f / (1.0f - p);
}

void dropout_mask_cpu(float *keep, size_t N, float p, Rng *rng) {
    DropoutDraw d;
    dropout_mask_draw(&d, p, rng);
    size_t blocks = (N + DROPOUT_PER_BLOCK - 1) / DROPOUT_PER_BLOCK;
#pragma omp parallel for if (par_worth(N)) schedule(static)
    for (size_t b = 0; b < blocks; b++) {
        uint32_t w[4];
        philox_block(d.key, d.stream, b, w);
        for (size_t j = 0; j < DROPOUT_PER_BLOCK && b * DROPOUT_PER_BLOCK + j < N; j++)
            keep[b * DROPOUT_PER_BLOCK + j] = dropout_keep(w, j, &d);
    }
}

void dropout_apply_cpu(float *out, const float *inp, const float *keep, size_t N) {
#pragma omp parallel for if (par_worth(N)) schedule(static)
    for (size_t i = 0; i < N; i++) out[i] = inp[i] * keep[i];
}

void fill_zero_cpu(float *x, size_t N) { memset(x, 0, N * sizeof(float)); }
