// The kvlab checkpoint: model config, tokenizer and weights, plus an optional training section that lets
// --resume continue exactly. One binary format, written atomically, validated before it is trusted. The
// training section is opaque bytes here: train/ writes and reads it (train/state_io.h gives its layout), so
// a checkpoint knows the model and the tokenizer, never the trainer.
//
// Layout. Every field is little-endian and written one by one (never a C struct); offsets are in bytes.
//
//   header (CHECKPOINT_HEADER_BYTES = 92 bytes)
//      0  u8[8]  magic "KVLABCKP"
//      8  u32    version (CHECKPOINT_VERSION = 1)
//     12  u32    header size in bytes (92 for version 1)
//     16  u32    flags: bit 0 = a training section follows the weights; every other bit must be zero
//     20  i32    vocab_size      24  i32 n_layer     28  i32 n_head      32  i32 n_kv_head
//     36  i32    n_embd          40  i32 n_hidden    44  i32 block_size
//     48  f32    rope_theta      52  f32 norm_eps    56  f32 dropout
//     60  u64    n_params (must equal model_param_count(config))
//     68  u64    payload size in bytes (file size = header size + payload size)
//     76  u64    XXH64 (seed 0) of the payload bytes, the training section included
//     84  u64    XXH64 (seed 0) of header bytes [0, 84), so a flipped config field is caught too
//
//   payload
//     u32        tokenizer vocab_size (must equal the config's vocab_size)
//     u8[V]      tokenizer id_to_byte, strictly increasing
//     f32[n_params]  weights, ParamTensors order (model_param_point)
//     only with flags bit 0:
//       u8[S]    the training section, S = payload size - (4 + V + 4 n_params) > 0 bytes
//
// Writes go to "<path>.tmp.<pid>", are flushed, fsynced and closed, then renamed over path and the directory
// fsynced: a failed save leaves the previous file at path untouched. A saver killed mid-write leaves its temp
// file behind; the next save of the same path removes those whose process no longer exists. A save refuses
// weights that are not all finite and a path that is a device, FIFO or socket. The reader checks, in order: length
// against the header, magic, version, header size and checksum, flags, file length against the header's
// payload size, the config, n_params, payload size (exact without a training section, larger than the model's
// part with one), payload checksum, tokenizer, weights all finite (a NaN or infinity names its tensor); any failure is one line in err naming the file and -1, with
// nothing left allocated. The training section's own fields are checked by train/ when it decodes them.
#ifndef KVLAB_CHECKPOINT_H
#define KVLAB_CHECKPOINT_H

#include "../common/common.h"
#include "../data/tokenizer.h"
#include "../layers/model.h"
#include "../layers/ops.h"

#define CHECKPOINT_MAGIC "KVLABCKP"
#define CHECKPOINT_VERSION 1
#define CHECKPOINT_HEADER_BYTES 92
#define CHECKPOINT_FLAG_TRAIN_STATE 1u

// Saves weights + tokenizer, and train_size bytes of training section when train_bytes is non-NULL
// (train_size > 0; stored verbatim). Returns 0, or -1 with a one-line message in err (ERR_LEN bytes); the file
// at path is then unchanged, except when only the directory fsync after the rename failed ("saved checkpoint
// ... but could not fsync"). Refused before anything is written: a NaN or infinite weight (the message names
// the tensor), a path that exists and is neither a regular file nor a directory (a rename over a directory
// fails on its own). Stale temp files of path (checkpoint_remove_stale_temps) are removed first.
int checkpoint_save(const char *path, const Model *m, const Tokenizer *tok, const unsigned char *train_bytes,
                    size_t train_size, char *err);
// Loads into an uninitialised Model (calls model_init(m, &cfg, ops) then copies the weights).
// *has_train (may be NULL) says whether the file has a training section. When train_bytes is non-NULL
// (train_size must be too) it receives a common_calloc'd copy of the section (free with common_free) and
// *train_size its length, or NULL and 0 without one; when train_bytes is NULL the section is only
// checksummed. On failure (-1, message in err) m, tok and the outputs are not filled and nothing is left
// allocated.
int checkpoint_load(const char *path, Model *m, const Ops *ops, Tokenizer *tok, unsigned char **train_bytes,
                    size_t *train_size, int *has_train, char *err);

// Checks, before a program starts work, that a checkpoint can be saved at path: if something exists there it
// must be a regular file, and unless replace_any it must start with the checkpoint magic (a corpus or any other
// file is never replaced by accident); the directory must take a new file (a temp file is created and
// removed). Returns 0; -2 when path is a regular file that is not a checkpoint (and !replace_any); -1 for any
// other refusal; the message in err is one line naming path.
int checkpoint_check_target(const char *path, int replace_any, char *err);

// Removes the temp files "<path>.tmp.<pid>" next to path whose process no longer exists (kill(pid, 0) fails
// with ESRCH): a saver killed during a save leaves one. The caller's own pid and live processes' files are
// left alone. Returns how many were removed.
int checkpoint_remove_stale_temps(const char *path);

// "regular file", "directory", "FIFO", "character device", ... for a st_mode.
const char *checkpoint_file_kind(unsigned mode);

#endif
