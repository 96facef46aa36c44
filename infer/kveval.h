// Quality, memory and speed of a KV cache spec, measured streaming: each stream of `context` tokens is fed
// one token at a time through the compressed cache and, in lockstep, through the full fp32 cache; every
// token after the first `prefill` is predicted through the compressed cache (so eviction affects it) and
// compared with the full cache's prediction of the same token.
#ifndef KVLAB_KVEVAL_H
#define KVLAB_KVEVAL_H

#include <stddef.h>

#include "../kv/kv.h"
#include "../layers/model.h"

typedef struct {
    int context; // tokens per stream (may exceed the trained context)
    int prefill; // tokens fed before scoring starts; SnapKV compresses at this point
    int streams; // streams taken at evenly spaced offsets of the token sequence
} KVEvalConfig;

typedef struct {
    size_t tokens;               // tokens scored
    double ppl, ppl_full;        // perplexity through the compressed / the full cache
    double kl;                   // mean KL(full || compressed) in nats per token
    double top1_agree;           // fraction of tokens where both caches' most likely token agree
    size_t kv_bytes;             // held by the compressed cache at the end of a stream
    double bytes_per_token;      // kv_bytes / context
    double fp16_bytes_per_token; // a full fp16 cache: n_layer * 2 * kv_dim * 2
    double prefill_tokens_per_s; // compressed cache, first `prefill` tokens
    double decode_tokens_per_s;  // compressed cache, the rest
    size_t peak_rss_bytes;
} KVEvalResult;

int kv_eval_streams(const Model *m, const KVSpec *spec, const int *tokens, size_t n, const KVEvalConfig *cfg,
                    KVEvalResult *out, char *err);
void kv_eval_print_json(const KVSpec *spec, const KVEvalConfig *cfg, const KVEvalResult *r);

#endif
