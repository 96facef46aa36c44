#include "eval.h"

#include <math.h>

int eval_tokens(Model *m, const int *tokens, size_t n, EvalResult *out, char *err) {
    if (n < 2) {
        err_set(err, "need at least 2 tokens to score, got %zu", n);
        return -1;
    }
    int T = m->cfg.block_size;
    model_alloc_inference_acts(m, 1, T);
    double sum = 0.0;
    size_t scored = 0;
    for (size_t start = 0; start + 1 < n; start += T) {
        int t = (int)(n - 1 - start < (size_t)T ? n - 1 - start : (size_t)T);
        model_forward(m, tokens + start, tokens + start + 1, 1, t, 0);
        sum += (double)m->mean_loss * t;
        scored += t;
    }
    out->n_scored = scored;
    out->mean_loss = sum / scored;
    out->perplexity = exp(out->mean_loss);
    return 0;
}
