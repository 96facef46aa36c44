// Softmax + cross-entropy over the vocabulary, fused; the backward is probs - onehot(target).
#include "cpu_ops.h"

#include <math.h>

void crossentropy_forward_cpu(float *losses, float *probs, const float *logits, const int *targets, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V;
        float mx = z[0];
        for (int i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        float sum = 0.0f;
        for (int i = 0; i < V; i++) {
            p[i] = expf(z[i] - mx);
            sum += p[i];
        }
        for (int i = 0; i < V; i++) p[i] /= sum;
        // -log softmax computed from the logits, not log(p), so a tiny probability stays finite
        if (targets && losses) losses[n] = -(z[targets[n]] - mx - logf(sum));
    }
}

void crossentropy_backward_cpu(float *dlogits, const float *probs, const int *targets, float dloss, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        for (int i = 0; i < V; i++) d[i] = p[i] * dloss;
        d[targets[n]] -= dloss;
    }
}
