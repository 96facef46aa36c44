// SwiGLU gate (Shazeer 2020): out = silu(a) * b with silu(a) = a * sigmoid(a).
#include "cpu_ops.h"

#include <math.h>

void swiglu_forward_cpu(float *out, const float *a, const float *b, size_t N) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        float s = 1.0f / (1.0f + expf(-a[i]));
        out[i] = a[i] * s * b[i];
    }
}

void swiglu_backward_cpu(float *da, float *db, const float *dout, const float *a, const float *b, size_t N) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        float s = 1.0f / (1.0f + expf(-a[i]));
        float silu = a[i] * s;
        da[i] += dout[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
        db[i] += dout[i] * silu;
    }
}
