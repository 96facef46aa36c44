// The contiguous KV cache (cache.c): for every layer and key/value head a "lane" of tokens with their
// original positions, a policy score, and keys and values encoded by the spec's codec. The
// selection policy (kv/policy.h, one file each) says which token a lane over budget drops; the codec
// (kv/codec.h, one file each) how rows are held; low rank, MiniCache and KIVI's blocks are the engine's own.
// The decode step appends each token's pre-RoPE key and value, attends straight from the stored rows
// (kv_cache_attend) or, where the cache cannot, over a view (fp32, keys rotated to their cache positions),
// then reports the attention it computed so score-based policies can use it.
#ifndef KVLAB_KV_H
#define KVLAB_KV_H

#include <stddef.h>
#include <stdint.h>

#include "spec.h"

typedef struct {
    int n_layer, n_head, n_kv_head, head_dim;
    int max_positions; // longest stream the cache will see (size of the RoPE table)
    float rope_theta;
    int keep_prerope;  // keep keys before RoPE even where rotating them once on entry is possible (calibration)
} KVShape;

typedef struct {
    int n;         // tokens held
    int *pos;      // (cap) original positions, ascending; NULL for full selection (slot s is position s)
    float *score;  // (cap) policy score: accumulated or last attention, key norm, SnapKV votes
    uint8_t *k;    // (cap, row_bytes) encoded keys, rotated on entry (before RoPE with sink, minicache,
                   // lowrank or keep_prerope); KIVI: quantized key blocks
    uint8_t *v;    // (cap, row_bytes) encoded values; KIVI: quantized value rows
    float *res_k;  // KIVI: (residual, head_dim) newest keys in fp32, rotated on entry
    float *res_v;  // KIVI: (residual, head_dim) newest values in fp32
    int n_res;     // KIVI: tokens in the residual (the first n - n_res are quantized)
    uint8_t *fp;   // fpkeep: (cap) 1 where the slot is held in fp32 (a sink or a recent token)
    uint8_t *merged; // minicache, both layers of a pair: (cap) 1 where the slot shares one direction
    float *mag;    // minicache: (cap, 2) this layer's key and value norms of merged slots
} KVLane;

typedef struct KVCache KVCache;

// The original position of a lane's slot s.
int kv_lane_pos(const KVLane *lane, int s);

int kv_cache_init(KVCache **out, const KVSpec *spec, const KVShape *shape, char *err);
void kv_cache_free(KVCache *kv);
void kv_cache_reset(KVCache *kv);
// The prompt length for SnapKV (its selection runs when the cache has seen that many tokens); 0 = none.
void kv_cache_set_prefill(KVCache *kv, int prefill_len);

// Stores token `pos`: k_pre and v are (n_kv_head * head_dim), k before RoPE. -1 when the cache cannot hold
// another token (an unbounded cache past max_positions).
int kv_cache_append(KVCache *kv, int layer, int pos, const float *k_pre, const float *v);
// fp32 views of what layer holds: each kv head's (Tc, head_dim) rows, head g at g * *head_stride floats,
// keys rotated to their positions in the cache; *qpos is the position the current query must be rotated
// to. Valid until the next call on the cache. A cache that never re-indexes positions (every spec but
// sink, minicache and lowrank) stores keys rotated on entry: an fp32 one returns its rows without a copy,
// the others decode theirs (kv_cache_attend avoids that).
void kv_cache_view(KVCache *kv, int layer, const float **k, const float **v, int *Tc, int *qpos,
                   size_t *head_stride);
// The position the current query must be rotated to (the view's *qpos).
int kv_cache_query_pos(const KVCache *kv, int layer);
// Attention for the current query straight from the stored rows (kv/attend.c), where the cache keeps keys
// rotated on entry in an encoded format with attention hooks (every codec but fp32, whose rows are their own
// view, and KIVI; not with sink, minicache or lowrank): each value is decoded inside the attention loop,
// nothing is written out. q (n_head, head_dim) rotated to kv_cache_query_pos; writes out (n_head, head_dim)
// and the probabilities att (n_head, Tc) for kv_cache_observe. Returns Tc, or 0 (nothing written) where the
// caller must attend over kv_cache_view instead. CPU memory only.
int kv_cache_attend(KVCache *kv, int layer, const float *q, float *out, float *att);
// Whether kv_cache_attend handles this cache; kv_cache_set_attend_packed(kv, 0) turns it off so that every
// step goes through the view (tests compare the two; on by default).
int kv_cache_attends_packed(const KVCache *kv);
void kv_cache_set_attend_packed(KVCache *kv, int on);
// The attention probabilities (n_head, Tc) the decode step computed over the view.
void kv_cache_observe(KVCache *kv, int layer, const float *att);

size_t kv_cache_bytes(const KVCache *kv);     // held: values, scales, positions (when evicting), scores, metadata
int kv_cache_tokens(const KVCache *kv, int layer); // tokens held per head
int kv_cache_layer_budget(const KVCache *kv, int layer); // 0 = unbounded
// A budget larger than the stream can hold is clamped to max_positions at init (nothing is allocated for it):
// the largest such budget asked for, 0 when none was (callers say so to the user).
int kv_cache_clamped_budget(const KVCache *kv);
const KVLane *kv_cache_lane(const KVCache *kv, int layer, int head);

// Low rank (lowrank.c): whether the cache needs its bases fitted before use, and the fit from n samples of
// one (layer, kv head): keys (before RoPE) and values, (n, head_dim) each. -1 with a message on failure.
int kv_cache_needs_calibration(const KVCache *kv);
int kv_lowrank_fit(KVCache *kv, int layer, int head, const float *keys, const float *values, int n, char *err);

// The plain fp32 full cache (the baseline), as `--kv=full`.
int kv_full_init(KVCache **out, const KVShape *shape, char *err);

#endif
