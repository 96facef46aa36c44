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
// masks are the same on every backend), attention form attn on both, the device's products in precision
// (OPS_PRECISION_*; the CPU is the fp32 reference). m is left as it was. -1 with err when the device refuses the
// precision.
int train_grad_check(const Model *m, const Ops *dev, ModelAttention attn, int precision, const TrainConfig *tc,
                     const Corpus *c, uint64_t seed, GradCheck *out, char *err);

// The tolerance of a check in each precision: the largest relative L2 error of any tensor's gradient, and of the
// loss. fp32 differs from the CPU by summation order only (cuBLAS against OpenBLAS, another reduction tree): a few
// float ulps grown through the layers, 1e-4 leaves two orders of margin at the shakespeare preset. tf32 (10
// mantissa bits, u = 2^-10 when the tensor cores truncate) and bf16 (7 bits, u = 2^-8) round every product's
// inputs: 10u and 10u, for the errors of several products in a row; a wrong op gives errors of order one.
double train_grad_check_tolerance(int precision);

#endif
