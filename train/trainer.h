// The training loop's settings and resumable state: AdamW with decoupled weight decay, warm-up then cosine
// decay, gradient clipping by global norm, gradient accumulation, periodic validation.
#ifndef KVLAB_TRAINER_H
#define KVLAB_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "../common/common.h"
#include "../data/loader.h"
#include "../layers/model.h"

typedef struct {
    int batch_size;     // B sequences per micro-batch
    int seq_len;        // T tokens per sequence (<= block_size)
    int max_steps;      // optimizer steps; the schedule decays to min_lr at this step
    int warmup_steps;
    float lr;           // peak learning rate
    float min_lr;       // floor of the cosine decay
    float weight_decay; // decoupled (AdamW), matrices only
    float beta1, beta2, adam_eps;
    float grad_clip;    // max global gradient norm; 0 disables
    int grad_accum;     // micro-batches per optimizer step
    int eval_interval;  // steps between validation passes; 0 = only at the end
    int eval_windows;   // fixed validation windows (B-sized batches of them)
    uint64_t seed;
    float recall_mix;   // fraction of training windows replaced by recall-task sequences (data/recall.h)
} TrainConfig;

// Everything that changes during training besides the weights: enough for --resume to continue exactly.
typedef struct {
    int step;           // optimizer steps completed
    float *m, *v;       // AdamW moments, (n_params) each, in the memory of `ops`
    const Ops *ops;     // the backend whose memory holds m and v (NULL: host memory)
    Rng data_rng;       // draws the training window offsets (this is the data position)
    Rng dropout_rng;    // copied in and out of Model.dropout_rng around each step
} TrainState;

// The ranges of the settings: the command line parses its flags with these same bounds, and
// train_config_validate checks them again, for flags and for the settings a checkpoint stores alike (one
// validator for both). The upper bounds are far past any real run; they keep a typo from asking for a run
// that never ends.
#define TRAIN_MAX_BATCH 65536          // sequences per micro-batch
#define TRAIN_MAX_STEPS (1 << 30)      // also bounds warmup, eval interval and --stop-after
#define TRAIN_MAX_GRAD_ACCUM 1024      // micro-batches per optimizer step
#define TRAIN_MAX_EVAL_WINDOWS 16384   // validation windows per evaluation
#define TRAIN_MAX_MICRO_TOKENS (1 << 30) // batch x context: the forward indexes B*T in an int
#define TRAIN_MIN_LR 1e-9f
#define TRAIN_MAX_LR 10.0f             // --lr and --min-lr are in [TRAIN_MIN_LR, TRAIN_MAX_LR], both ends included
#define TRAIN_MAX_WEIGHT_DECAY 0.99f
#define TRAIN_MAX_BETA2 0.9999f
#define TRAIN_MAX_GRAD_CLIP 1e9f

// Checks every field against the ranges above (NaN and infinities refused) and the context against the
// model's block size. Returns 0, or -1 with a one-line reason in err.
int train_config_validate(const TrainConfig *tc, const ModelConfig *mc, char *err);

void train_state_init(TrainState *s, size_t n_params, uint64_t seed);
void train_state_free(TrainState *s);
// Moves the AdamW moments into another backend's memory (train on CUDA after loading on the CPU).
void train_state_to_backend(TrainState *s, size_t n_params, const Ops *ops);

// Learning rate at optimizer step `step` (0-based).
float schedule_lr(const TrainConfig *tc, int step);

// One optimizer step: grad_accum micro-batches forward/backward, clip, AdamW. Returns the mean train loss;
// *grad_norm receives the norm before clipping. inputs/targets are (B, T) scratch owned by the caller.
// Divergence: when a micro-batch's loss is not finite (returned at once, without its backward; *grad_norm
// is then NaN) or the gradient norm is not finite, nothing is updated: weights, moments and the step stay as
// they were. The caller checks the loss and *grad_norm with isfinite and stops.
float train_step(Model *m, TrainState *s, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets,
                 float *grad_norm);

// Mean loss over the fixed validation windows (no dropout).
float train_eval(Model *m, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets);

#endif
