// The slower tier measured under one stream (`--eval tier`).
#ifndef KVLAB_INFER_KVTIER_H
#define KVLAB_INFER_KVTIER_H

#include "../decode/tier.h"

// The tier under one stream (`--eval tier`): tokens[0..context), the first `prefill` fed into the pool
// without the tier, then decoded one at a time through it, each step's logits compared with a full cache.
// Stats exclude the first tier step (it warms the cold arena) and a slow file's prefill spill; logits include it.
typedef struct {
    int blocks, fast_blocks;    // blocks of the context; blocks' worth the arena holds
    size_t unit_bytes, fast_bytes, pool_bytes;
    int decode_tokens;          // context - prefill, the first a warm-up
    KVTierStats st;
    double hit_rate;            // hits / reads
    double prefetch_accuracy;   // prefetch_used / prefetch_issued (0 without prefetches)
    double mass_covered;        // share of the full attention's mass in the blocks read (1 unless top_k)
    double max_abs_logit_diff;  // vs the full cache, over every tier step
    double top1_agree;
    double decode_tokens_per_s; // tier steps after the warm-up (the mass_covered oracle not timed)
    double stall_ms_per_token, mb_moved_per_token;
} KVTierResult;

int kv_eval_tier(const Model *m, const int *tokens, size_t n, const KVTierConfig *cfg, KVTierResult *out,
                 char *err);
void kv_tier_print_json(const KVTierConfig *cfg, const KVTierResult *r);

#endif
