// The kvlab checkpoint: model config, tokenizer and weights, plus (optionally) the training state that lets
// --resume continue exactly. One binary format, written atomically, validated before it is trusted.
//
// Layout. Every field is little-endian and written one by one (never a C struct); offsets are in bytes.
//
//   header (CHECKPOINT_HEADER_BYTES = 92 bytes)
//      0  u8[8]  magic "KVLABCKP"
//      8  u32    version (CHECKPOINT_VERSION = 1)
//     12  u32    header size in bytes (92 for version 1)
//     16  u32    flags: bit 0 = has training state; every other bit must be zero
//     20  i32    vocab_size      24  i32 n_layer     28  i32 n_head      32  i32 n_kv_head
//     36  i32    n_embd          40  i32 n_hidden    44  i32 block_size
//     48  f32    rope_theta      52  f32 norm_eps    56  f32 dropout
//     60  u64    n_params (must equal model_param_count(config))
//     68  u64    payload size in bytes (file size = header size + payload size)
//     76  u64    XXH64 (seed 0) of the payload bytes
//     84  u64    XXH64 (seed 0) of header bytes [0, 84), so a flipped config field is caught too
//
//   payload
//     u32        tokenizer vocab_size (must equal the config's vocab_size)
//     u8[V]      tokenizer id_to_byte, strictly increasing
//     f32[n_params]  weights, ParamTensors order (model_param_point)
//     only with flags bit 0:
//       TrainConfig (68 bytes): i32 batch_size, seq_len, max_steps, warmup_steps;
//                               f32 lr, min_lr, weight_decay, beta1, beta2, adam_eps, grad_clip;
//                               i32 grad_accum, eval_interval, eval_windows; u64 seed; f32 recall_mix
//       i32 step, u64 data_rng.state, u64 dropout_rng.state
//       f32[n_params] AdamW m, f32[n_params] AdamW v
//
// Writes go to "<path>.tmp.<pid>", are flushed, fsynced and closed, then renamed over path and the directory
// fsynced: a failed save leaves the previous file at path untouched. The reader checks, in order: length
// against the header, magic, version, header size and checksum, flags, file length against the header's
// payload size, the config, n_params, payload size, payload checksum, tokenizer; any failure is one line in
// err naming the file and -1, with nothing left allocated.
#ifndef KVLAB_CHECKPOINT_H
#define KVLAB_CHECKPOINT_H

#include "../common/common.h"
#include "../data/tokenizer.h"
#include "../layers/model.h"
#include "../layers/ops.h"
#include "../train/trainer.h"

#define CHECKPOINT_MAGIC "KVLABCKP"
#define CHECKPOINT_VERSION 1
#define CHECKPOINT_HEADER_BYTES 92
#define CHECKPOINT_FLAG_TRAIN_STATE 1u

// Saves weights + tokenizer, and the training state when tc and s are both non-NULL.
// Returns 0, or -1 with a one-line message in err (ERR_LEN bytes); the file at path is then unchanged, except
// when only the directory fsync after the rename failed ("saved checkpoint ... but could not fsync").
int checkpoint_save(const char *path, const Model *m, const Tokenizer *tok, const TrainConfig *tc,
                    const TrainState *s, char *err);
// Loads into an uninitialised Model (calls model_init(m, &cfg, ops) then copies the weights).
// If the file has training state and tc/s are non-NULL they are filled (s allocated with train_state_init
// and then overwritten); *has_state (may be NULL) says whether it had one. Without training state in the
// file, tc and s are left untouched. On failure (-1, message in err) m, tok, tc and s are not filled and
// nothing is left allocated.
int checkpoint_load(const char *path, Model *m, const Ops *ops, Tokenizer *tok, TrainConfig *tc,
                    TrainState *s, int *has_state, char *err);

#endif
