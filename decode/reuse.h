// Reuse across requests on the model side (kv/reuse.h holds the store and says what is approximated): the
// prefill engine both reuse methods run on, a store over decode_forward (decode/step.h).
#ifndef KVLAB_DECODE_REUSE_H
#define KVLAB_DECODE_REUSE_H

#include "../kv/reuse.h"
#include "step.h"

// The prefill engine: a prompt processed layer by layer as a batch, where a layer runs
// only for the tokens still active, attending over the cache (reused rows included). With every token active
// it is the full recomputation the methods are compared with.
typedef struct {
    int cap, n;          // positions the cache can hold / holds
    float *k, *v;        // (L, NKV, cap, HD) keys rotated to their positions; values
    DecodeState ds;      // (cap rows) the prefill's active rows and the steps after it; ds.logits: the latest
    float *att;          // (cap, NH, cap) each active row's attention probabilities (rows run in parallel)
    int *pos;            // (cap) positions of the prompt's active rows (a prefill's input)
    int *keep;           // (cap) selection scratch
    // What each layer's lanes hold. Without pruning row i is position i (rows[l] == n). A pruned layer's
    // kept rows are compacted to the front (keys still rotated to their original positions) and decoded
    // tokens are appended after them; such a work's k, v must not be given to kv_reuse_insert.
    int *rows;           // (L) rows each layer's lanes hold: its kept prompt positions, then decoded ones
    int *row_pos;        // (L, cap) the position of each row, ascending
    float *votes;        // (L, cap) pruning scratch: attention the observation window paid each position
} KVReuseWork;

typedef struct {
    long long layer_tokens, layer_tokens_full; // (token, layer) pairs that ran attention + MLP / all of them
    double flops, flops_full;                  // estimated multiply-adds x 2 of the prompt's layers
} KVReuseCost;

void kv_reuse_work_init(KVReuseWork *w, const Model *m, int cap);
void kv_reuse_work_free(KVReuseWork *w);
// Bytes of keys and values the lanes hold (rows[l] per layer, all key/value heads, fp32).
size_t kv_reuse_work_bytes(const Model *m, const KVReuseWork *w);
// Each prefill leaves the last prompt token's logits in w->ds.logits and w->n = n; cost (may be NULL)
// accumulates. lsh: e from the store (same positions); semshare: map from kv_semshare_map, then with
// sc->deep_keep < 1 each layer's lanes pruned to kv_semshare_keep_counts tokens (w->rows, w->row_pos).
void kv_reuse_prefill_full(const Model *m, KVReuseWork *w, const int *tokens, int n, KVReuseCost *cost);
void kv_reuse_prefill_lsh(const Model *m, KVReuseWork *w, const KVReuseEntry *e, const int *tokens, int n,
                          int recompute_diff, KVReuseCost *cost);
void kv_reuse_prefill_semshare(const Model *m, KVReuseWork *w, const KVReuseEntry *e, const int *map,
                               const KVSemShareConfig *sc, const int *tokens, int n, KVReuseCost *cost);
// One generated token at position w->n, attending in each layer over the rows that layer holds; -1 when the
// cache is full.
int kv_reuse_decode(const Model *m, KVReuseWork *w, int token);

// The store of kv/reuse.h over this model's embeddings (the CPU backend only: it reads them on the host).
int decode_reuse_store_init(KVReuseStore **out, const Model *m, const KVReuseStoreConfig *cfg, const int *calib,
                            size_t n_calib, char *err);
// map[i] = the reference token (index into ref) new token i takes its KV from: the best match of content
// (embeddings of the token and its predecessors) plus position (RoPE frequencies), one matrix product.
void decode_semshare_map(const Model *m, const KVSemShareConfig *cfg, const int *ref, int n_ref, const int *tokens,
                         int n, int *map);

#endif
