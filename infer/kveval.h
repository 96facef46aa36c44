// Quality, memory and speed of a KV cache spec, measured streaming: each stream of `context` tokens is fed
// one token at a time through the compressed cache and, in lockstep, through the full fp32 cache; every
// token after the first `prefill` is predicted through the compressed cache (so eviction affects it) and
// compared with the full cache's prediction of the same token.
#ifndef KVLAB_KVEVAL_H
#define KVLAB_KVEVAL_H

#include <stddef.h>

#include "../data/loader.h"
#include "../data/tokenizer.h"
#include "../kv/kv.h"
#include "../decode/step.h"
#include "../layers/model.h"

typedef struct {
    int context; // tokens per stream (may exceed the trained context)
    int prefill; // tokens fed before scoring starts; SnapKV compresses at this point
    int streams; // streams taken at evenly spaced offsets of the token sequence
    const int *calib;  // lowrank: calibration tokens (not the evaluated ones), fed in windows of the context
    size_t n_calib;
    int curve;         // > 0: also perplexity against position, in this many equal buckets of the scored span
    int bos;           // 1: each stream starts with bos_id, then context - 1 tokens of the text (a model trained
    int bos_id;        //    with a start symbol: tokenizer_bos_id)
    const char *tokens_out; // non-NULL: every scored token's comparison written there as text (kv_eval_streams)
    int no_reference;  // 1: no lockstep full cache (timing and peak memory of the cache alone): ppl_full, kl
                       //    and top-1 then compare the cache with itself
} KVEvalConfig;

enum { KV_EVAL_MAX_CURVE = 64 };

// The lockstep pair, the cache handle, calibration and the metrics these evaluations share: evalcore.h.

typedef struct {
    size_t tokens;               // tokens scored
    double ppl, ppl_full;        // perplexity through the compressed / the full cache
    double kl;                   // mean KL(full || compressed) in nats per token
    double top1_agree;           // fraction of tokens where both caches' most likely token agree
    size_t kv_bytes;             // held by the compressed cache at the end of a stream
    double bytes_per_token;      // kv_bytes / context
    // bytes held over the scored steps (after each token that a scored prediction follows), every stream: the
    // mean and the peak, and the mean of what a full fp16 cache holds at the same steps (tokens so far times
    // fp16_bytes_per_token); kv_bytes_mean / fp16_full_bytes_mean is the cache's size against fp16
    double kv_bytes_mean, fp16_full_bytes_mean;
    size_t kv_bytes_peak;
    // per stream, in stream order (cfg->streams each; owned, kv_eval_result_free): summed NLL through the
    // compressed and the full cache, summed KL, tokens whose top-1 agree; every stream scores the same count
    double *stream_nll, *stream_nll_full, *stream_kl;
    int *stream_agree;
    double fp16_bytes_per_token; // a full fp16 cache: n_layer * 2 * kv_dim * 2
    double prefill_tokens_per_s; // compressed cache, first `prefill` tokens
    double decode_tokens_per_s;  // compressed cache, the rest
    size_t peak_rss_bytes;
    // cfg->curve buckets of the positions prefill .. context-1: the first position of each, perplexity
    // through the compressed and the full cache over the tokens predicted there
    int curve_start[KV_EVAL_MAX_CURVE];
    double curve_ppl[KV_EVAL_MAX_CURVE], curve_ppl_full[KV_EVAL_MAX_CURVE];
} KVEvalResult;

// cfg->tokens_out: one line per scored token, "stream position nll nll_full kl agree" (position: of the predicted
// token in its stream), after a header line; -1 with a message if the file cannot be written.
int kv_eval_streams(const Model *m, const KVSpec *spec, const int *tokens, size_t n, const KVEvalConfig *cfg,
                    KVEvalResult *out, char *err);
void kv_eval_result_free(KVEvalResult *r);
void kv_eval_print_json(const KVSpec *spec, const KVEvalConfig *cfg, const KVEvalResult *r);

// Long-range recall through a compressed cache (data/recall.h): for each distance, `per_distance` sequences
// of `context` tokens go through the compressed and the full cache (everything before the value as a prompt,
// then the value token by token); a sequence counts when all value tokens of its query are each the most
// likely next token (teacher-forced); char_acc counts the value tokens one by one (characters, chance 1/26,
// for a character model; BPE tokens of the digits for a GGUF model), a finer signal than the exact match.
// SnapKV compresses at the query's value, so its prompt includes the question, as in the paper.
#define KV_RECALL_MAX_DISTANCES 16
typedef struct {
    int n_distances;
    int distance[KV_RECALL_MAX_DISTANCES];
    double acc[KV_RECALL_MAX_DISTANCES], acc_full[KV_RECALL_MAX_DISTANCES];
    double acc_all, acc_all_full;
    double char_acc, char_acc_full;
    size_t kv_bytes;
    double bytes_per_token, fp16_bytes_per_token;
    size_t peak_rss_bytes;
} KVRecallResult;

// Calibration (lowrank) uses the start of the corpus's training split.
int kv_eval_recall(const Model *m, const KVSpec *spec, const Tokenizer *tok, const Corpus *corpus, int context,
                   int per_distance, uint64_t seed, KVRecallResult *out, char *err);
void kv_recall_print_json(const KVSpec *spec, int context, int per_distance, const KVRecallResult *r);

// The paged pool (--kv paged:BLOCK) under a request workload, infer/kvprefix.c: `requests` requests of
// `context` tokens sharing their first `shared` tokens, fed in turn through one pool of pool_blocks blocks
// (0: room for two requests), each also through a full cache to check the logits.
typedef struct {
    int requests, context, shared, pool_blocks;
} KVPrefixConfig;

typedef struct {
    int pool_blocks;
    size_t prompt_tokens;      // requests * context
    size_t computed_tokens;    // those not reused from the pool
    long long prefill_saved;   // prompt tokens whose K/V came from the pool
    double hit_rate;           // full prompt blocks found / looked up
    long long evictions;       // cached blocks taken back
    double fragmentation;      // unused slots of allocated blocks, mean over requests at their end
    double utilisation;        // used blocks / pool, mean over requests at their end
    size_t pool_bytes, peak_bytes_used;
    double max_abs_logit_diff; // last prompt token, paged vs full cache, over all requests
    double top1_agree;         // fraction of requests whose last-token argmax agrees
    double ms_per_request, ms_per_request_full; // prompt processing with reuse / through a full cache
} KVPrefixResult;

int kv_eval_prefix(const Model *m, const KVSpec *spec, const int *tokens, size_t n, const KVPrefixConfig *pc,
                   KVPrefixResult *out, char *err);
void kv_prefix_print_json(const KVSpec *spec, const KVPrefixConfig *pc, const KVPrefixResult *r);

#endif
