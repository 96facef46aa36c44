// RMSNorm (Zhang & Sennrich 2019, as in Llama): y = x / rms(x) * w, no mean subtraction, no bias.
#include "cpu_ops.h"

#include <math.h>

#include "../common/par.h"

void rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
#pragma omp parallel for if (par_worth((size_t)N * C)) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / C + eps);
        rstd[n] = r;
        for (int c = 0; c < C; c++) y[c] = x[c] * r * weight[c];
    }
}

// With xhat = x * r and g = dy * w: dx = r * (g - xhat * mean(g * xhat)); dw = sum_n dy * xhat.
void rmsnorm_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C) {
#pragma omp parallel for if (par_worth((size_t)N * C)) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n], dot = 0.0f;
        for (int c = 0; c < C; c++) dot += dy[c] * weight[c] * x[c] * r;
        dot /= C;
        for (int c = 0; c < C; c++) dx[c] += r * (dy[c] * weight[c] - x[c] * r * dot);
    }
    // the weight gradient reduces over rows: parallel over channels keeps it deterministic
#pragma omp parallel for if (par_worth((size_t)N * C)) schedule(static)
    for (int c = 0; c < C; c++) {
        float acc = 0.0f;
        for (int n = 0; n < N; n++) acc += dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
        dweight[c] += acc;
    }
}
