// Generation through any KV cache spec: a stream of tokens (a prompt, then one token at a time) fed through
// evalcore.h's cache handle, with one rule for the model's trained context T. RoPE makes attention depend
// on the distance between a query and a key, and the model never saw a distance of T or more; so
// - a cache whose every query stays within T of the keys it holds streams on forever: sink:S,window:W
//   (positions re-indexed within the cache, S + W <= T), window:W (W <= T), window:W+paged:B (W + B <= T);
// - every other cache (full, the other policies, the other paged ones, whose kept tokens age without
//   bound) is rebuilt when its stream reaches T positions: emptied and fed the newest T/2 tokens at
//   positions 0.., as build/infer has always done for the full cache.
// Used by `build/infer generate` and `compare-gen`.
#ifndef KVLAB_GENSTREAM_H
#define KVLAB_GENSTREAM_H

#include <stddef.h>

#include "evalcore.h"

typedef struct {
    EvalCache cache;
    const Model *m;
    int context;       // the model's trained context T
    int streams;       // 1: the cache runs past T; 0: it is rebuilt at T
    int pos;           // position of the next token fed
    int *ids;          // (cap) every token of the stream: prompt, then generated
    size_t n_ids, cap;
    int rebuilds;      // times the cache was rebuilt at T
    double t_prefill, t_decode; // seconds in the prompt's prefill / in feeding later tokens (rebuilds too)
    size_t n_prefill, n_decode; // tokens fed in each
} GenStream;

// The longest stream: a streaming cache's RoPE table and attention row are sized for every position of the
// stream, so this bounds what a run allocates (generate -n says "at most 1048576").
#define GENSTREAM_MAX_TOKENS (1 << 20)

// A stream of at most max_tokens tokens (prompt + generated) through `spec`; calib / n_calib: low-rank
// calibration tokens. -1 with a message when the model cannot take the spec.
int genstream_init(GenStream *g, const Model *m, const KVSpec *spec, size_t max_tokens, const int *calib,
                   size_t n_calib, char *err);
void genstream_free(GenStream *g);
// Feeds the prompt (n >= 1 tokens): all of it to a streaming cache, its newest T tokens to the others.
int genstream_start(GenStream *g, const int *prompt, size_t n, char *err);
// Feeds the next token: one decode step, or the rebuild when the stream is at T positions.
int genstream_feed(GenStream *g, int token, char *err);
// The logits predicting the next token (V).
const float *genstream_logits(const GenStream *g);

#endif
