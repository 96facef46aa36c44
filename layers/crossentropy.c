// Softmax + cross-entropy over the vocabulary: the forward (probabilities and losses, for scoring) and the loss with
// its gradient, probs - onehot(target), in one pass from the logits (training: the probabilities are never kept).
// Each row's softmax runs through common/vmath.h (vectorised max, exp with the running sum, scale); rows split
// across threads when the whole pass pays for a parallel region (common/par.h).
#include "cpu_ops.h"

#include <math.h>

#include "../common/par.h"
#include "../common/vmath.h"

void crossentropy_forward_cpu(float *losses, float *probs, const float *logits, const int *targets, int N, int V) {
#pragma omp parallel for if (par_worth((size_t)N * V)) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V;
        float mx = vmath_max(z, V);
        for (int i = 0; i < V; i++) p[i] = z[i];
        float sum = vmath_exp_shift_sum(p, V, mx);
        vmath_scale(p, V, 1.0f / sum);
        // -log softmax computed from the logits, not log(p), so a tiny probability stays finite
        if (targets && losses) losses[n] = -(z[targets[n]] - mx - logf(sum));
    }
}

void crossentropy_fused_cpu(float *losses, float *dlogits, const float *logits, const int *targets, float dloss, int N,
                            int V) {
#pragma omp parallel for if (par_worth((size_t)N * V)) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        float mx = vmath_max(z, V);
        float zt = z[targets[n]]; // read before an in-place pass overwrites it
        for (int i = 0; i < V; i++) d[i] = z[i];
        float sum = vmath_exp_shift_sum(d, V, mx);
        vmath_scale(d, V, 1.0f / sum);
        for (int i = 0; i < V; i++) d[i] *= dloss;
        d[targets[n]] -= dloss;
        if (losses) losses[n] = -(zt - mx - logf(sum));
    }
}
