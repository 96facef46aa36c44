// SwiGLU gate (Shazeer 2020): out = silu(a) * b with silu(a) = a * sigmoid(a). The element-wise math is
// common/vmath.h's vectorised silu_mul; the passes split into fixed chunks across threads when the size pays
// for a parallel region (common/par.h). An element's result does not depend on the split.
#include "cpu_ops.h"

#include "../common/par.h"
#include "../common/vmath.h"

#define SWIGLU_CHUNK 4096

void swiglu_forward_cpu(float *out, const float *a, const float *b, size_t N) {
    size_t chunks = (N + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp parallel for if (par_worth(N)) schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        size_t i = c * SWIGLU_CHUNK, n = N - i < SWIGLU_CHUNK ? N - i : SWIGLU_CHUNK;
        vmath_silu_mul(out + i, a + i, b + i, n);
    }
}

void swiglu_backward_cpu(float *da, float *db, const float *dout, const float *a, const float *b, size_t N) {
    size_t chunks = (N + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp parallel for if (par_worth(N)) schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        size_t i = c * SWIGLU_CHUNK, n = N - i < SWIGLU_CHUNK ? N - i : SWIGLU_CHUNK;
        vmath_silu_mul_backward(da + i, db + i, dout + i, a + i, b + i, n);
    }
}
