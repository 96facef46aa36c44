// The training state inside a checkpoint. checkpoints/ stores an optional training section as opaque bytes;
// this module is what puts TrainConfig and TrainState into it and takes them back out, for --resume.
//
// Section layout (little-endian, fields one by one; n = n_params; TRAIN_SECTION_FIXED_BYTES + 8 n bytes):
//     0  TrainConfig (68 bytes): i32 batch_size, seq_len, max_steps, warmup_steps;
//                                f32 lr, min_lr, weight_decay, beta1, beta2, adam_eps, grad_clip;
//                                i32 grad_accum, eval_interval, eval_windows; u64 seed; f32 recall_mix
//    68  i32 step, u64 data_rng.state, u64 dropout_rng.state
//    88  f32[n] AdamW m, f32[n] AdamW v
// The decoder checks the section's length against n before reading any field, then the step (>= 0) and the
// config (train_config_validate against the model's config).
#ifndef KVLAB_STATE_IO_H
#define KVLAB_STATE_IO_H

#include "../checkpoints/checkpoint.h"
#include "trainer.h"

#define TRAIN_SECTION_FIXED_BYTES 88 // TrainConfig (68) + step and the two RNG states (20)

// Bytes of the training section for a model of n_params parameters.
size_t train_state_section_size(size_t n_params);

// bytes (train_state_section_size(n_params)) <- tc and s; moments held by a device backend are downloaded.
// s holds all n_params moments (a ZeRO-1 shard is gathered first: train_state_gather). The section is the same
// whatever the rank count: step, RNGs, config (grad_accum counts the micro-batches of all ranks) and moments.
void train_state_encode(unsigned char *bytes, const TrainConfig *tc, const TrainState *s, size_t n_params);

// tc and s <- bytes (size bytes) for a model of config cfg. s is allocated (train_state_init, host memory) only
// on success. Returns 0, or -1 with a one-line reason in err (no file name; the caller adds it) and tc, s
// untouched.
int train_state_decode(TrainConfig *tc, TrainState *s, const unsigned char *bytes, size_t size,
                       const ModelConfig *cfg, char *err);

// checkpoint_save with the training section of tc and s when both are non-NULL (weights only otherwise).
int train_save_checkpoint(const char *path, const Model *m, const Tokenizer *tok, const TrainConfig *tc,
                          const TrainState *s, char *err);

// checkpoint_load, then the training section into tc and s when the file has one and both are non-NULL.
// *has_state (may be NULL) says whether the file had one; without one tc and s are left untouched. On failure
// (-1, one line in err naming the file) m, tok, tc and s are not filled and nothing is left allocated.
int train_load_checkpoint(const char *path, Model *m, const Ops *ops, Tokenizer *tok, TrainConfig *tc,
                          TrainState *s, int *has_state, char *err);

#endif
