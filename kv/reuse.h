// KV reuse across requests (issue 5): a request whose prompt resembles an earlier one takes that request's
// KV instead of computing its own. Two methods share one store of earlier requests:
//   reuse:lsh      (Sim-LLM) the store is keyed by a random-hyperplane LSH signature of the prompt's mean
//                  token embedding (wte rows), each bucket candidate confirmed by exact cosine >= threshold.
//   reuse:semshare (SemShareKV) each new token is mapped to a reference token by fuzzy matching of
//                  position-aware embeddings, the reference KV is rearranged into the new order (keys
//                  re-rotated to the new positions), the first layer is recomputed fully and later layers
//                  only for the tokens whose values deviate most (fewer in deeper layers).
//
// WHAT IS APPROXIMATED (read this before quoting a number):
// - Sim-LLM reuses the *top-layer* KV of an LCKV model, where every layer attends to the top layer, so that
//   one layer is the whole cache. kvlab's model is a standard transformer: every layer has its own KV. So the
//   lsh method stores every layer's KV (L times what Sim-LLM stores) and, on a hit, adopts the reference's
//   KV at the same positions (p < both lengths) for all layers. It then recomputes through all layers the
//   last prompt token (it gives the logits), tokens past the reference's length and, by default
//   (lsh_recompute = 1), the tokens that differ from the reference's token at the same position; every
//   other position keeps KV computed for the *reference's* context. Identical prompts are exact (up to
//   float rounding of batch shapes); any edit leaves stale KV after it; reordered passages (same mean
//   embedding, so they hit) keep wrong content wherever tokens coincide by chance.
// - The mean embedding of a character-level prompt is dominated by the letter frequencies of English: two
//   unrelated passages have raw cosine ~0.95. The store therefore subtracts a centre (the mean embedding of
//   a calibration text) before hashing and comparing; raw cosines are still reported. Even centred, the
//   mean embedding does not separate unrelated passages from edited ones (recall-mha, 256-token windows of
//   the validation text: 3.5% of unrelated pairs reach cosine 0.8, the largest 0.977, while 4 edited
//   characters fall to 0.918), so a candidate must also pass a token-level check Sim-LLM does not have: the
//   fraction of the new prompt's 4-grams found in it (unrelated pairs: at most 0.395; 4 edits: at least
//   0.937; reordered halves: 0.988). min_overlap = 0 turns it off (Sim-LLM's cosine-only rule).
// - semshare: tokens here are characters, which carry little meaning alone, so the content part of the
//   match is the token's embedding plus decayed embeddings of its `window` previous tokens; the position
//   part is the RoPE kernel (mean over RoPE frequencies of cos((i-j) w)), weighted by pos_weight:
//   score(i, j) = cos(content_i, content_j) + pos_weight * mean_f cos((i-j) w_f); exact nearest neighbour
//   (the prompts are short), not LSH. Reference retrieval uses the store's lookup (mean embedding), not the
//   paper's LSH distance over the whole E-cache (so it takes the n-gram check too). Selection (CacheBlend-
//   style gradual filtering): at layer l >= 1 every token that ran layer l-1 projects fresh K/V (written to
//   the cache; the squared distance of its values from the reused ones is its deviation), and only the
//   round(n * recompute * layer_decay^(l-1)) most deviating (the last token always) run the rest of layer
//   l. So layer 1's KV is always fresh and reused KV serves layers >= 2, for the tokens filtered out
//   earlier; that KV was computed in the reference's context.
// - semshare deep-layer pruning (deep_keep < 1; off by default: see kv_semshare_config_default for why):
//   the paper's exponential-decay retention (its Attention Recovery falls with depth, and keeping more in
//   shallow layers gave the lowest perplexity) as a fixed schedule, layer l keeping
//   round(n * deep_keep^(l/(L-1))) of the n prompt tokens (layer 0 all, the last layer deep_keep), not a
//   count derived from a measured Attention Recovery threshold. Which tokens: SnapKV-style votes, the
//   attention probabilities (mean over query heads) paid to each position by the prompt's `deep_window`
//   newest tokens, but only those that ran the layer (semshare filters the rest out; the last token always
//   runs), without SnapKV's pooling; the first deep_sink and newest deep_recent tokens always stay. One kept
//   set per layer shared by all key/value heads (the paper's budget is per layer; SnapKV's is per head). It
//   runs after the prefill, which attends over every token; only decode sees the pruned cache. The work
//   buffer stays cap rows per lane: pruning compacts the kept rows to the front, and "bytes held" counts the
//   rows a lane holds (what a cache sized to them would take), not what kvlab allocated. Measured on
//   recall-mha (not the paper's finding): the votes beat keeping the newest tokens only at deep_keep 0.1, not
//   at 0.5, and a constant per-layer count of the same total bytes gave a lower KL but a lower top-1.
// Not thread-safe: one caller drives a store.
#ifndef KVLAB_REUSE_H
#define KVLAB_REUSE_H

#include <stddef.h>
#include <stdint.h>

#include "kv.h"

typedef struct {
    int planes;          // LSH hyperplanes = signature bits, 1..64 [16]
    int radius;          // candidates: signatures within this Hamming distance (0 = same bucket) [0]
    float threshold;     // exact cosine a candidate must reach, (0, 1] [0.8]
    float min_overlap;   // then the fraction of the new prompt's KV_REUSE_GRAM-grams found in it, [0, 1]; 0 = off [0.5]
    size_t budget_bytes; // entries are evicted least recently used first to stay under this [64 MiB]
    uint64_t seed;       // hyperplanes [1234]
} KVReuseStoreConfig;

typedef struct KVReuseEntry {
    uint64_t scope;      // tenant: lookups see only entries of their own scope
    uint64_t sig;        // LSH signature of mean
    float *mean;         // (C) centred mean token embedding
    int *tokens;         // (n)
    int n;
    float *k, *v;        // (L, NKV, n, HD) keys rotated by RoPE to their positions 0..n-1; values
    size_t bytes;        // everything the entry holds, struct included
    struct KVReuseEntry *prev, *next; // LRU list, most recent first
} KVReuseEntry;

typedef struct {
    long long lookups, hits, misses;
    long long rejected;  // bucket candidates whose cosine fell below the threshold
    long long rejected_overlap; // ... that passed the cosine but not the n-gram overlap
    long long inserts, evictions;
    int entries;
    size_t bytes;        // held by all entries
} KVReuseStats;

typedef struct KVReuseStore KVReuseStore;

void kv_reuse_store_config_default(KVReuseStoreConfig *cfg);
// centre: the mean embedding of calib (n_calib tokens); calib NULL = no centring (raw cosines).
int kv_reuse_store_init(KVReuseStore **out, const float *wte, int vocab, int width, const KVShape *shape,
                        const KVReuseStoreConfig *cfg, const int *calib,
                        size_t n_calib, char *err);
void kv_reuse_store_free(KVReuseStore *s);
void kv_reuse_clear(KVReuseStore *s);
// mean (C) = mean of wte rows of tokens - centre (centred = 0: the raw mean).
void kv_reuse_embed(const KVReuseStore *s, const int *tokens, int n, int centred, float *mean);
uint64_t kv_reuse_signature(const KVReuseStore *s, const float *mean);
double kv_reuse_cosine(const float *a, const float *b, int n);
// Fraction of the g-grams of tokens (n) also found in ref (n_ref), counted as multisets, g = KV_REUSE_GRAM
// (or the shorter length): 1 for identical prompts and for reordered passages but their seams.
enum { KV_REUSE_GRAM = 4 };
double kv_reuse_overlap(const int *ref, int n_ref, const int *tokens, int n);
// The most similar entry of `scope` among the LSH candidates whose cosine reaches the threshold, moved to
// the front of the LRU list; NULL on a miss. *sim (may be NULL): that cosine, or on a miss the best
// rejected candidate's, or -2 when the bucket held none.
const KVReuseEntry *kv_reuse_lookup(KVReuseStore *s, uint64_t scope, const int *tokens, int n, float *sim);
// Stores a processed request: k, v (L, NKV, cap, HD) as KVReuseWork holds them, first n positions. An
// entry of the same scope and tokens is only refreshed. -1 with a message when one entry exceeds the budget.
int kv_reuse_insert(KVReuseStore *s, uint64_t scope, const int *tokens, int n, const float *k, const float *v,
                    int cap, char *err);
void kv_reuse_stats(const KVReuseStore *s, KVReuseStats *st);

// SemShareKV knobs.
typedef struct {
    int window;          // previous tokens in a token's content embedding [4]
    float decay;         // their weights: decay^distance [0.7]
    float pos_weight;    // weight of the RoPE position kernel in the match score [0.1]
    float recompute;     // fraction of tokens recomputed at layer 1 [0.3]
    float layer_decay;   // ... times this per further layer (exponential decay) [0.5]
    // Deep-layer pruning after the prefill (what is approximated: the top comment).
    float deep_keep;     // fraction of the prompt's tokens the last layer keeps, (0, 1]; 1 = off [1]
    int deep_sink;       // the first tokens every layer keeps, >= 0 [4]
    int deep_recent;     // the newest prompt tokens every layer keeps, >= 1 [16]
    int deep_window;     // the newest prompt tokens whose attention votes for the rest, >= 1 [16]
} KVSemShareConfig;

void kv_semshare_config_default(KVSemShareConfig *cfg);
int kv_semshare_config_validate(const KVSemShareConfig *cfg, char *err);
// Prompt tokens (of n) each of n_layer layers keeps after a semshare prefill: n * deep_keep^(l/(L-1))
// rounded, at least the protected min(n, deep_sink + deep_recent), so non-increasing with depth; n when off.
void kv_semshare_keep_counts(const KVSemShareConfig *cfg, int n_layer, int n, int *keep);
#endif
