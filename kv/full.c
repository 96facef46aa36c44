// The full cache: keys and values of every token, fp32, (layer, pos, kv_dim). The baseline every other
// technique is measured against.
#include "kv.h"

#include <string.h>

#include "../common/common.h"

typedef struct {
    float *k, *v; // (L, capacity, KVC)
    int *len;     // (L) tokens held per layer
} KVFull;

static int full_append(KVCache *kv, int layer, int pos, const float *k, const float *v) {
    KVFull *f = kv->impl;
    if (f->len[layer] >= kv->capacity) return -1;
    size_t kvc = (size_t)kv->n_kv_head * kv->head_dim;
    size_t off = ((size_t)layer * kv->capacity + f->len[layer]) * kvc;
    memcpy(f->k + off, k, kvc * sizeof(float));
    memcpy(f->v + off, v, kvc * sizeof(float));
    f->len[layer]++;
    return 0;
}

static void full_view(KVCache *kv, int layer, const float **k, const float **v, int *Tc) {
    KVFull *f = kv->impl;
    size_t off = (size_t)layer * kv->capacity * kv->n_kv_head * kv->head_dim;
    *k = f->k + off;
    *v = f->v + off;
    *Tc = f->len[layer];
}

static void full_observe(KVCache *kv, int layer, const float *att, int NH, int Tc) {}

static size_t full_bytes(const KVCache *kv) {
    const KVFull *f = kv->impl;
    size_t n = 0;
    for (int l = 0; l < kv->n_layer; l++) n += (size_t)f->len[l];
    return n * 2 * kv->n_kv_head * kv->head_dim * sizeof(float) + kv->n_layer * sizeof(int);
}

static void full_reset(KVCache *kv) {
    KVFull *f = kv->impl;
    memset(f->len, 0, kv->n_layer * sizeof(int));
}

static void full_free(KVCache *kv) {
    KVFull *f = kv->impl;
    if (!f) return;
    common_free(f->k);
    common_free(f->v);
    common_free(f->len);
    common_free(f);
    kv->impl = NULL;
}

static const KVCacheOps kv_full_ops = {"full", full_append, full_view, full_observe, full_bytes, full_reset, full_free};

int kv_full_init(KVCache *kv, int n_layer, int n_kv_head, int head_dim, int capacity) {
    kv->ops = &kv_full_ops;
    kv->n_layer = n_layer;
    kv->n_kv_head = n_kv_head;
    kv->head_dim = head_dim;
    kv->capacity = capacity;
    KVFull *f = common_calloc(1, sizeof(KVFull));
    size_t n = (size_t)n_layer * capacity * n_kv_head * head_dim;
    f->k = common_calloc(n, sizeof(float));
    f->v = common_calloc(n, sizeof(float));
    f->len = common_calloc(n_layer, sizeof(int));
    kv->impl = f;
    return 0;
}
