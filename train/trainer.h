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
    int grad_accum;     // micro-batches per optimizer step, over all ranks (each runs grad_accum / dist_size())
    int eval_interval;  // steps between validation passes; 0 = only at the end
    int eval_windows;   // fixed validation windows (B-sized batches of them)
    uint64_t seed;
    float recall_mix;   // fraction of training windows replaced by recall-task sequences (data/recall.h)
} TrainConfig;

// Everything that changes during training besides the weights: enough for --resume to continue exactly.
typedef struct {
    int step;           // optimizer steps completed
    float *m, *v;       // AdamW moments of elements [shard_lo, shard_lo + shard_n) of the parameter block (all
                        // n_params of them but with ZeRO-1, train_state_shard), in the memory of `ops`
    size_t shard_lo, shard_n;
    const Ops *ops;     // the backend whose memory holds m and v (NULL: host memory)
    Rng data_rng;       // draws the training window offsets (this is the data position)
    Rng dropout_rng;    // copied in and out of Model.dropout_rng around each step
    float *stage;       // host copy of the gradients or weights for the cross-rank sum and gather on a device
                        // backend (n_params floats, allocated at the first such step and kept; else NULL)
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

// Data parallelism (train/dist.h). Every rank draws every micro-batch of a step from the same data RNG and
// trains on its own contiguous run of them: rank r takes the global micro-batches [r G, (r + 1) G) of the
// step's tc->grad_accum = N G. The gradients are summed over ranks (dist_allreduce_sum_f32) and scaled by
// 1 / (N G), so the norm, the clipping and AdamW see the same bits on every rank. Micro-batch k's dropout masks
// come from an RNG seeded by (the step's dropout state, k), so a rank needs no other rank's draws, and N ranks
// of G micro-batches train what one process of N G does, up to the order of the gradient sums.
//
// ZeRO-1: each rank keeps the AdamW moments of its shard of the parameter block only (elements
// [n r / N, n (r + 1) / N)), updates that shard and all-gathers the parameters; the update is element-wise,
// so the weights are the same bits as without sharding.
// Whether ZeRO-1 takes a parameter block of n_params elements: 0, or -1 with one line in err (MPI's gather
// counts and offsets are ints: past INT_MAX elements they cannot say where a shard lies).
int train_zero_check(size_t n_params, char *err);
// The shard of rank `rank` of `size` over n_params elements.
void train_shard_range(size_t n_params, int rank, int size, size_t *lo, size_t *n);
// Keeps only this rank's shard of full (host) moments (train_state_init's or a checkpoint's).
void train_state_shard(TrainState *s, size_t n_params, int rank, int size);
// A collective: every rank's shard of the moments (in any backend's memory) into full, on rank 0 a host
// TrainState holding all n_params moments with s's step and RNGs (for a save); elsewhere full is zeroed and
// holds nothing. Free it with train_state_free.
void train_state_gather(TrainState *full, const TrainState *s, size_t n_params);

// Learning rate at optimizer step `step` (0-based).
float schedule_lr(const TrainConfig *tc, int step);

// One optimizer step: grad_accum micro-batches forward/backward (this rank's share of them, see above), clip, AdamW. Returns the mean train loss;
// *grad_norm receives the norm before clipping. inputs/targets are (B, T) scratch owned by the caller.
// Divergence: when a micro-batch's loss is not finite (returned at once, without its backward; *grad_norm
// is then NaN) or the gradient norm is not finite, nothing is updated: weights, moments and the step stay as
// they were. The caller checks the loss and *grad_norm with isfinite and stops.
float train_step(Model *m, TrainState *s, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets,
                 float *grad_norm);

// Mean loss over the fixed validation windows (no dropout).
float train_eval(Model *m, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets);

#endif
