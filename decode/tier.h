// The slower tier as a store (kv/tier.h holds the tier): each layer's row goes into the pool and the tier's
// tail, and attention reads through the tier's fast arena.
#ifndef KVLAB_DECODE_TIER_H
#define KVLAB_DECODE_TIER_H

#include "../kv/tier.h"
#include "step.h"

// The decode step through the pool with attention over the tier (kv_paged_append, then kv_tier_append and
// kv_tier_attend for each layer). -1 with a message when the pool is out of blocks or the slow file fails.
// With q_log (layer, NH*HD) and sel_log (layer, k1) set, each layer's rotated query and the blocks it read
// (-1 past the last) are logged (the coverage oracle of top_k).
typedef struct {
    KVPool *pool;
    KVSeq *seq;
    KVTier *tier;
    float *q_log;
    int *sel_log;
    int k1;
} DecodeTier;
KVStore decode_store_tier(DecodeTier *t);
int decode_tier_step(const Model *m, DecodeState *s, DecodeTier *t, int token, int pos, char *err);

#endif
