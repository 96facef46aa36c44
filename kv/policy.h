// A selection policy: which tokens a KV store keeps. Each policy is one file in kv/ (its parse, budget,
// score update, victim and block victim) plus one line in kv/registry.c; the contiguous cache (cache.c) and
// the paged pool (paged.c) call only these hooks, so a new policy touches nothing else.
//
// The unpaged cache keeps a lane of slots per (layer, key/value head, kv.h's KVLane); a policy reads and
// writes only its n, pos and score. A lane over its budget drops the slot `victim` names, after each append (evict_at_append) or
// after each attention step (the others). The paged pool keeps whole blocks (one decision for all layers and
// heads): after each decode step it drops blocks while `block_victim` names one.
#ifndef KVLAB_KV_POLICY_H
#define KVLAB_KV_POLICY_H

#include <stdint.h>

#include "../common/common.h"
#include "kv.h"

// A paged sequence's blocks as a policy sees them: block i covers tokens [i*block, min((i+1)*block, n)).
enum { KV_BLOCK_DROPPED = -1 }; // a table entry a selection policy dropped

typedef struct {
    const int *table;    // (n_blocks) the sequence's block table: KV_BLOCK_DROPPED where a block was dropped
    const float *score;  // (n_blocks) attention mass block i received, summed over layers and heads
    int n_blocks, block, n_tokens; // the last block (the one being written) is never a victim
} KVBlockSet;

struct KVPolicy {
    const char *name; // the spec term: window
    const char *form; // its grammar, for errors and --help: window:W
    const char *help; // one line
    // Reads the term's arguments (the text after "name:", NULL when the term is bare) into spec. -1 when
    // malformed or out of range.
    int (*parse)(KVSpec *spec, const char *args);
    // Tokens per lane before per-layer weighting (pyramid); 0 = unbounded.
    int (*budget)(const KVSpec *spec);
    // The smallest per-layer budget it still works with (NULL: 1).
    int (*min_budget)(const KVSpec *spec);
    // Layer `layer`'s budget given the weighted one (NULL: unchanged); 0 leaves the layer whole.
    int (*layer_budget)(const KVSpec *spec, int layer, int budget);
    int evict_at_append; // 1: a lane over budget drops a slot as soon as a token arrives (no attention needed)
    int in_cache_positions; // 1: keys are rotated to their slot in the cache, not their original position
                            // (StreamingLLM), so a stream may outgrow the trained context
    int bounded_reach;      // 1: every kept token lies within the budget of the newest one (or is a sink at
                            // a cache position), so query-key distances stay bounded on an endless stream
    int needs_scores;    // 1: the lane keeps a score per slot (charged in the cache's bytes)
    // The score a token enters with; k is its key before RoPE (head_dim values). NULL: 0.
    float (*enter_score)(const float *k, int head_dim);
    // One attention step: att[s] is the attention slot s received from the current query (averaged over
    // the group's query heads); seen = tokens this layer has appended, prompt = the prompt length (0 when
    // unknown). NULL: the policy takes no attention evidence.
    void (*observe)(KVLane *lane, const KVSpec *spec, const float *att, int seen, int prompt);
    // The slot a lane over its budget drops. NULL: the policy never evicts slot by slot.
    int (*victim)(const KVLane *lane, const KVSpec *spec, int budget, Rng *rng);
    // A one-time selection when the prompt ends (seen == prompt): fills keep[0..budget) with ascending slots
    // to keep; pooled is (n) scratch. NULL: none.
    void (*select_prompt)(const KVLane *lane, const KVSpec *spec, int budget, int *keep, float *pooled);
    int grows_after_prompt; // 1: the lane is unbounded after its prompt selection (SnapKV)
    // Paged pool: the block to drop next, -1 when the set is within the policy. NULL: the policy does not
    // run on pages (one clear error at parse time).
    int (*block_victim)(const KVBlockSet *blocks, const KVSpec *spec, Rng *rng);
};

extern const KVPolicy kv_policy_full; // every token: the baseline and the default

// The registry (kv/registry.c): every policy, in the order --help lists them.
extern const KVPolicy *const kv_policies[];
extern const int kv_policy_count;
// The policy named `name` (the term up to ':'), or NULL.
const KVPolicy *kv_policy_find(const char *name, size_t len);

// The forms of the policies that run on pages ("window:W, sink:S,window:W, h2o:H,R or random:B[,R[,SEED]]")
// into buf (cap bytes), for messages.
void kv_policy_block_forms(char *buf, size_t cap);

// Whether block i of a set is still held.
static inline int kv_block_held(const KVBlockSet *b, int i) { return b->table[i] != KV_BLOCK_DROPPED; }

// Helpers the policy files share.
// The newest `recent` slots of a lane (a per-layer budget can be smaller: then budget - 1) are protected.
int kv_policy_protected(int recent, int budget);
// The slot of the lowest (sign 1) or highest (sign -1) score in [from, to); ties: the earliest.
int kv_policy_extreme(const KVLane *lane, int from, int to, int sign);

#endif
