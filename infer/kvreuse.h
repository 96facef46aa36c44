// The reuse workload (`--eval reuse --reuse lsh|semshare`): the store (kv/reuse.h) and the prefill engine
// (decode/reuse.h) measured on pairs of prompts.
#ifndef KVLAB_INFER_KVREUSE_H
#define KVLAB_INFER_KVREUSE_H

#include "../decode/reuse.h"

// The workload (`--eval reuse --reuse lsh|semshare`): for `pairs` pairs per similarity
// class, the first prompt is processed in full and stored, the second looked up and processed with reuse,
// and compared with its full recomputation over its last prompt token and `gen` greedy tokens.
enum { KV_REUSE_IDENTICAL, KV_REUSE_EDIT, KV_REUSE_REORDER, KV_REUSE_UNRELATED, KV_REUSE_CLASSES };
enum { KV_REUSE_MAX_LAYERS = 64 }; // layers whose kept tokens the workload reports (deeper ones are not)

typedef struct {
    int context;         // tokens per prompt (--context) [model context]
    int pairs;           // pairs per class (--streams) [8]
    int gen;             // greedy tokens compared after the prompt [16]
    int edits;           // tokens replaced in a small edit [4]
    int lsh_recompute;   // lsh: also recompute tokens differing at the same position [1]
    uint64_t seed;       // edits [1]
    KVReuseStoreConfig store; // --threshold sets store.threshold
    KVSemShareConfig semshare;
    const int *calib;    // centre of the mean embeddings; NULL = the evaluated tokens
    size_t n_calib;
} KVReuseConfig;

typedef struct {
    int pairs, hits;
    double sim_mean, sim_min, sim_max; // centred cosine of the pair's mean embeddings
    double raw_sim_mean;               // the same without centring
    double same_token;                 // semshare hits: tokens mapped to a reference token with their id
    double layer_tokens_skipped;       // fraction of (token, layer) pairs not run
    double flops_skipped;              // fraction of estimated prompt FLOPs not spent
    double ttft_ms, ttft_full_ms;      // mean: lookup + prefill with reuse / full recomputation
    double kl_last, kl_gen;            // mean KL(full || reuse): last prompt token; over the gen tokens
    double top1;                       // fraction of the gen distributions whose argmax agrees
    double greedy_match;               // fraction of pairs generating the same gen tokens
    double kv_bytes, kv_bytes_full;    // mean K/V bytes held after the prefill with reuse / the full prompt's
    double kept[KV_REUSE_MAX_LAYERS];  // mean prompt tokens each layer holds after the prefill with reuse
} KVReuseClassResult;

typedef struct {
    KVReuseClassResult cls[KV_REUSE_CLASSES];
    KVReuseStats store;
    size_t entry_bytes;                // one stored request
    int n_layer;                       // entries of cls[].kept reported: min(layers, KV_REUSE_MAX_LAYERS)
} KVReuseResult;

extern const char *const kv_reuse_class_names[KV_REUSE_CLASSES];
void kv_reuse_config_default(KVReuseConfig *cfg, const Model *m);
int kv_eval_reuse(const Model *m, const char *method, const int *tokens, size_t n, const KVReuseConfig *cfg,
                  KVReuseResult *out, char *err);
void kv_reuse_print_json(const char *method, const KVReuseConfig *cfg, const KVReuseResult *r);

#endif
