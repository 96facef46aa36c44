// build/train --check-grads: one batch's loss and parameter gradients on the CPU (the reference) and on the run's
// device from the same weights, compared tensor by tensor. What scripts/gpu-check.sh runs to see every gradient
// agree after one step, not a summary of them.
#ifndef KVLAB_GRADCHECK_H
#define KVLAB_GRADCHECK_H

#include "trainer.h"

typedef struct {
    const char *name;     // the ParamTensors field ("wq", ...)
    size_t n;             // elements
    double max_abs_diff;  // max |device - cpu|
    double max_abs_ref;   // max |cpu|
    double rel_l2;        // ||device - cpu|| / ||cpu|| (0 when both are zero)
} GradDiff;

typedef struct {
    float loss_cpu, loss_dev;
    GradDiff t[NUM_PARAM_TENSORS];
    double worst_rel_l2; // the largest rel_l2 over the tensors
} GradCheck;

// The first training batch of tc (drawn from a copy of the data RNG seeded with seed, so the run's own state is
// untouched) through m (CPU weights) and through a copy of m on dev, with the dropout stream seeded alike (the
// masks are the same on every backend), attention form attn on both. m is left as it was.
void train_grad_check(const Model *m, const Ops *dev, ModelAttention attn, const TrainConfig *tc, const Corpus *c,
                      uint64_t seed, GradCheck *out);

// The tolerance of a check: the largest relative L2 error of any tensor's gradient, and of the loss.
#define GRAD_CHECK_TOL_FP32 1e-4

#endif
