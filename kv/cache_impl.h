// The contiguous cache's state (kv/kv.h's KVCache), shared by the files that implement it: cache.c (append,
// view, policies) and attend.c (attention straight from the stored rows). Nothing outside kv/cache*.c and
// kv/attend.c includes this.
#ifndef KVLAB_KV_CACHE_IMPL_H
#define KVLAB_KV_CACHE_IMPL_H

#include <stddef.h>

#include "../common/common.h"
#include "kv.h"

struct KVCache {
    KVSpec spec;
    KVShape shape;
    int *budget;        // (L) tokens per lane; 0 = unbounded
    int *cap;           // (L) slots allocated per lane
    int *seen;          // (L) tokens appended so far
    size_t row_bytes;   // one encoded head row
    size_t stride;      // bytes per slot in a lane's k and v arrays (room for fp32 rows with fpkeep)
    int fpkeep;         // whether some slots are held in fp32
    int rotated;        // keys rotated by RoPE on entry (positions never change), then encoded
    int direct;         // rotated fp32 rows: the view is the lanes themselves
    int group;          // int formats: channels per group
    KVLane *lanes;      // (L, NKV)
    float *kview, *vview; // (NKV, max cap, HD) fp32 view workspace, allocated at the first view that needs it
    int max_cap;          // the most slots of any layer's lanes
    float *rope_cos, *rope_sin; // (max_positions, HD/2)
    float *row;         // (HD) scratch
    int *keep;          // (max cap) SnapKV scratch
    float *pooled;      // (max cap) SnapKV scratch
    int prefill_len;
    size_t kivi_key_bytes; // KIVI: one channel of a key block (G values)
    size_t kivi_val_bytes; // KIVI: one value row
    int kivi_vgroup;       // KIVI: channels per value group
    float *block;          // KIVI: (G, HD) scratch
    int dim;               // values per stored row: head_dim, or the rank with lowrank
    float *basis;          // lowrank: (L, NKV, 2, HD, R) key and value bases
    int calibrated;        // lowrank: bases fitted
    float *coef;           // lowrank: (HD) scratch
    float *tmp;            // minicache: (4, HD) scratch
    float *mean;           // (max cap) one lane's attention averaged over its group's query heads
    int clamped_from;      // the largest per-layer budget above max_positions (clamped to it), 0 if none
    Rng *rng;              // (L) the policy's random choices (random:B), one stream per layer seeded from the
                           // spec, so a layer's draws never depend on the order the layers run in
    float *krot;           // (HD) the key being appended, rotated to its position
    float *qbuf;           // (NH, HD) kv_cache_attend's Hadamard-rotated queries
    int attend_packed;     // kv_cache_attend may attend from the encoded rows (kv_cache_set_attend_packed)
};

#endif
