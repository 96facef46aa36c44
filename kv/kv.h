// The KV cache interface the decode step talks to. A technique is one file implementing this table; the
// decode step appends each new token's keys and values (after RoPE) and asks for a contiguous fp32 view of
// what the cache holds for a layer, then reports the attention it computed so score-based policies can use
// it. This issue ships the plain full cache; the techniques come behind the same table.
#ifndef KVLAB_KV_H
#define KVLAB_KV_H

#include <stddef.h>

typedef struct KVCache KVCache;

typedef struct {
    const char *name;
    // Stores token `pos`'s k and v (KVC floats each) for `layer`. Returns -1 if the cache is full.
    int (*append)(KVCache *kv, int layer, int pos, const float *k, const float *v);
    // Contiguous views (Tc, KVC) of the keys and values held for `layer`; *Tc receives the token count.
    void (*view)(KVCache *kv, int layer, const float **k, const float **v, int *Tc);
    // Attention probabilities (NH, Tc) the decode step computed from the view (may be ignored).
    void (*observe)(KVCache *kv, int layer, const float *att, int NH, int Tc);
    // Bytes actually held: values, scales, indices and metadata.
    size_t (*bytes)(const KVCache *kv);
    void (*reset)(KVCache *kv);
    void (*free)(KVCache *kv);
} KVCacheOps;

struct KVCache {
    const KVCacheOps *ops;
    int n_layer, n_kv_head, head_dim, capacity; // capacity: most tokens held per layer
    void *impl;
};

// The full fp32 cache: every token of every layer, up to `capacity` tokens.
int kv_full_init(KVCache *kv, int n_layer, int n_kv_head, int head_dim, int capacity);

#endif
