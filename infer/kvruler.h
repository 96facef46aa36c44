// The retrieval suite through a cache under test (build/infer ruler): for one task of data/ruler.h, `items`
// items of `context` tokens, each one prefill of the cache (evalcore_cache_prefill, chunked where the cache
// allows) and a few steps. Query-aware: everything before the first answer is the prompt, so SnapKV, which
// compresses at the prompt's end voting with its last W queries, sees the question. Query-agnostic: the prompt
// ends before the question, whose tokens then go through the compressed cache one by one. Then the answers are
// teacher-forced; an item is right when every answer token is the cache's top-1. No full-cache reference runs
// beside it (`--kv full` is a run of its own).
#ifndef KVLAB_KVRULER_H
#define KVLAB_KVRULER_H

#include <stddef.h>
#include <stdint.h>

#include "../data/loader.h"
#include "../data/ruler.h"
#include "../data/tokenizer.h"
#include "../kv/spec.h"
#include "../layers/model.h"

#define RULER_MAX_ANSWER_TOKENS 32

// What one item did (for tests and callers that want more than the sums).
typedef struct {
    int prompt_tokens;    // fed by evalcore_cache_prefill (SnapKV compresses at its end)
    int answer_tokens;    // checked
    int predicted[RULER_MAX_ANSWER_TOKENS]; // the cache's top-1 at each answer token
    int correct;          // every answer token right
    size_t bytes_first;   // the cache's bytes when the first answer token was predicted
} RulerOutcome;

typedef struct {
    RulerTask task;
    int context, items, depths;
    int agnostic; // 1: the question goes in after compression
    uint64_t seed;
    void (*on_item)(void *user, const RulerItem *it, const RulerOutcome *o); // may be NULL
    void *user;
} RulerConfig;

typedef struct {
    int items, correct;
    int depths;
    int by_depth_correct[RULER_MAX_DEPTHS], by_depth_n[RULER_MAX_DEPTHS];
    double kv_bytes_mean;      // evalcore_cache_bytes over every answer step of every item
    size_t kv_bytes_peak;
    double prompt_tokens_mean;
    double fp16_bytes_full;    // a full fp16 cache at the mean prompt length
    double seconds;            // the items, wall clock (cache setup and calibration excluded)
} RulerResult;

// Low-rank specs calibrate on the start of the corpus's training split, which also gives the filler. -1 with
// one line in err (a task that cannot be written, a spec the model cannot take).
int kv_eval_ruler(const Model *m, const KVSpec *spec, const Tokenizer *tok, const Corpus *corpus,
                  const RulerConfig *cfg, RulerResult *out, char *err);
// One JSON line: spec, task, query, context, items, correct, acc, by_depth {"0.1": [correct, n], ...},
// kv_bytes_mean, kv_bytes_peak, fp16_bytes_full, prompt_tokens_mean, seconds.
void kv_ruler_print_json(const KVSpec *spec, const RulerConfig *cfg, const RulerResult *r);

#endif
