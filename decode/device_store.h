// The KV cache in device memory, for decode_forward on a device backend (build/infer --device cuda): rows are
// encoded and attended on the device through layers/ops.h's device-only ops (kv_encode_rows,
// attention_decode_kv), never copied to the host. It runs the `--kv` specs whose selection a ring buffer does
// exactly, with the per-row storage formats the decode kernel reads:
//   selection  full                every token (rows in position order; keys rotated on entry)
//              window:W            the newest W tokens: a ring of W rows (keys rotated on entry)
//              sink:S,window:W     the first S tokens and the newest W: S fixed rows and a ring of W, keys held
//                                  before RoPE and rotated when read to their position in the cache
//                                  (StreamingLLM, as kv/cache.c's view)
//   storage    fp32, int8[:G], int4[:G], int2[:G]   (kv/quant.h's rows, written byte for byte on the device)
// and nothing else (no modifiers, no score-based policy, no KIVI, no fp16/fp8). The kept positions are
// exactly the contiguous cache's for the same spec, and the bytes reported are what kv_cache_bytes reports
// for it (rows, positions when evicting, the per-lane counts). Attention reads the held rows in the ring's
// physical order (softmax does not depend on the order, only its rounding does), so results match the CPU
// cache to float rounding, not bit for bit.
#ifndef KVLAB_DECODE_DEVICE_STORE_H
#define KVLAB_DECODE_DEVICE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "step.h"

typedef struct {
    const Ops *ops;            // the device backend (on_device, with the device-only decode ops)
    int n_layer, n_head, n_kv_head, head_dim, max_positions;
    float rope_theta;
    int bits, group;           // 32: fp32 rows; 8, 4, 2: group rows of `group` values
    size_t row_bytes;          // one stored row of head_dim values (kv/codec.h's row_bytes)
    int full;                  // full selection: no positions kept, no eviction
    int sink, ring;            // rows [0, sink) fixed, then a ring of `ring` rows; full: ring = cap
    int rope_at_view;          // sink: keys stored before RoPE, rotated when read
    int cap;                   // rows per (layer, kv head) = sink + ring
    int clamped_from;          // the spec's budget when it was past max_positions (then cap = max_positions); else 0
    uint8_t *k, *v;            // device: (n_layer, n_kv_head, cap, row_bytes)
    float *rope_cos, *rope_sin; // device (cap, head_dim/2) tables, rope_at_view only
    int *seen;                 // (n_layer) tokens appended to each layer since the reset
    int *pos;                  // host (n_layer, cap): the original position of each physical row
} DecodeDevice;

// The specs the device cache runs, one line for messages ("full, window:W and sink:S,window:W with fp32,
// int8[:G], int4[:G] or int2[:G] rows").
const char *decode_device_forms(void);
// 0 when spec runs on the device cache; else -1 with one line naming the spec and what the device supports. Needs
// no device (programs ask before loading anything).
int decode_device_check(const KVSpec *spec, char *err);
// A device cache for spec (decode_device_check must pass) of shape on ops. -1 with a message (a group that does
// not divide the head dimension, or a head group too large for the decode kernel's shared memory:
// attention_decode_fits).
int decode_device_init(DecodeDevice *d, const Ops *ops, const KVSpec *spec, const KVShape *shape, char *err);
void decode_device_free(DecodeDevice *d);
void decode_device_reset(DecodeDevice *d);
int decode_device_tokens(const DecodeDevice *d, int layer); // rows held by each kv head of layer
int decode_device_budget(const DecodeDevice *d);            // the most rows held (0: unbounded, full)
// The spec's budget when it exceeds max_positions and the cache holds max_positions instead (nothing is ever
// evicted then), else 0: kv_cache_clamped_budget for the same spec.
int decode_device_clamped_budget(const DecodeDevice *d);
size_t decode_device_bytes(const DecodeDevice *d);          // as kv_cache_bytes for the same spec
// The original positions held by layer, in cache order (sinks, then oldest to newest), into out (cap ints);
// returns how many.
int decode_device_positions(const DecodeDevice *d, int layer, int *out);

// Fills every layer of an empty full or window cache with n tokens at positions 0..n-1 whose keys and values
// (the keys as already rotated) are the device rows `rows` (n_kv_head, n, head_dim), encoded into the cache's
// format: a long context for a benchmark without its prefill. n <= the cache's rows.
void decode_device_fill(DecodeDevice *d, const float *rows, int n);

// The store over a device cache (step.h): each row's key rotated by RoPE on entry (or kept before RoPE for
// sink), encoded into its row on the device, the query rotated to the position the cache gives it, attention
// through attention_decode_kv (no probabilities: s->att is left alone). -1 with a message when a full cache is past its positions.
KVStore decode_store_device(DecodeDevice *d);
// A prompt into a device cache, as decode_prefill_cache: tokens[0..n) at positions 0..n-1 in chunks of
// s->max_rows rows. Logits of the last token at s->logits.
int decode_prefill_device(const Model *m, DecodeState *s, DecodeDevice *d, const int *tokens, int n, char *err);

#endif
