// The optimizer ops on the CPU: AdamW (Loshchilov & Hutter 2019), Adam with weight decay decoupled from the
// gradient (p -= lr * wd * p, applied only to the tensors the caller marks as decayed), the global gradient
// norm and gradient scaling. They are ops like the others (ops.h) so a CUDA train step runs the same sequence;
// layers/adamw.cu is their CUDA twin, bit-identical for the update and the scale.
#include "cpu_ops.h"

#include <math.h>

void adamw_update_cpu(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int t) {
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2 = 1.0f - powf(beta2, (float)t);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * g;
        v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
        float mhat = m[i] / bc1;
        float vhat = v[i] / bc2;
        params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
    }
}

void scale_cpu(float *x, size_t n, float s) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// Sequential on purpose: the same bits every run, whatever the thread count.
float grad_norm_cpu(const float *x, size_t n) {
    double sq = 0.0;
    for (size_t i = 0; i < n; i++) sq += (double)x[i] * x[i];
    return (float)sqrt(sq);
}
