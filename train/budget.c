// The memory a training run will need (budget.h): counted from the same sizes the allocations use
// (model_param_count, model_train_act_bytes), in double so that no size wraps.
#include "budget.h"

#include <unistd.h>

TrainBudget train_budget_of(const ModelConfig *mc, const TrainConfig *tc, ModelAttention attn) {
    double n = (double)model_param_count(mc);
    double tokens = (double)tc->batch_size * tc->seq_len;
    TrainBudget b;
    // weights, gradients, AdamW m and v (4 n bytes each), and the training section built at every save (8 n)
    b.model_bytes = 4.0 * 4.0 * n + 8.0 * n;
    // inputs and targets: two int buffers of (B, T)
    b.act_bytes = model_train_act_bytes(mc, tc->batch_size, tc->seq_len, attn) + 2.0 * tokens * sizeof(int);
    return b;
}

void train_budget_format(char *out, size_t len, double bytes) {
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 6) {
        bytes /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(out, len, "%.0f bytes", bytes);
    else snprintf(out, len, "%.1f %s", bytes, units[u]);
}

int train_budget_check(const ModelConfig *mc, const TrainConfig *tc, ModelAttention attn, double limit_bytes, char *err) {
    TrainBudget b = train_budget_of(mc, tc, attn);
    double total = b.model_bytes + b.act_bytes;
    if (limit_bytes <= 0.0 || total <= limit_bytes) return 0;
    char acts[32], model[32], limit[32];
    train_budget_format(acts, sizeof acts, b.act_bytes);
    train_budget_format(model, sizeof model, b.model_bytes);
    train_budget_format(limit, sizeof limit, limit_bytes);
    if (b.act_bytes >= b.model_bytes) {
        err_set(err,
                "batch %d x context %d needs %s of activations, plus %s for the model and optimizer state; this "
                "machine has %s of memory",
                tc->batch_size, tc->seq_len, acts, model, limit);
    } else {
        err_set(err,
                "a model of %zu parameters needs %s for its weights, gradients and optimizer state, plus %s of "
                "activations; this machine has %s of memory",
                model_param_count(mc), model, acts, limit);
    }
    return -1;
}
