// What a training run will hold in memory, worked out before anything is allocated, so a run that cannot fit
// is one clear line naming the cause and the size instead of an abort inside an allocation.
#ifndef KVLAB_BUDGET_H
#define KVLAB_BUDGET_H

#include "trainer.h"

typedef struct {
    double model_bytes; // weights, their gradients, the AdamW moments, the checkpoint's training section
    double act_bytes;   // activations and activation gradients at (batch, context), the token buffers
} TrainBudget;

// The bytes of a run of tc on a model of config mc (both valid).
TrainBudget train_budget_of(const ModelConfig *mc, const TrainConfig *tc, ModelAttention attn);

// Refuses a run whose total exceeds limit_bytes (0: no limit): -1 with one line in err naming the larger part
// (activations for this batch and context, or the model and its optimizer state), its size and the limit.
int train_budget_check(const ModelConfig *mc, const TrainConfig *tc, ModelAttention attn, double limit_bytes, char *err);

// "36.7 TiB", "512.0 MiB": bytes in binary units.
void train_budget_format(char *out, size_t len, double bytes);

#endif
