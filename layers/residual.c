// Residual add and the dropout mask that scales the branch being added (residual dropout as in nanoGPT).
// The mask is drawn serially from the model's RNG so a run is reproducible whatever the thread count. A pass
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

void dropout_mask_cpu(float *keep, size_t N, float p, Rng *rng) {
    float scale = 1.0f / (1.0f - p);
    for (size_t i = 0; i < N; i++) keep[i] = rng_uniform(rng) < p ? 0.0f : scale;
}

void dropout_apply_cpu(float *out, const float *inp, const float *keep, size_t N) {
#pragma omp parallel for if (par_worth(N)) schedule(static)
    for (size_t i = 0; i < N; i++) out[i] = inp[i] * keep[i];
}

void fill_zero_cpu(float *x, size_t N) { memset(x, 0, N * sizeof(float)); }
