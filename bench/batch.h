// build/bench --decode-batch (batch.c prints, batch_run.c is the harness): decode throughput as the batch of
// sequences grows, for MHA, GQA and MQA models of the same shape, and the largest batch a fixed KV budget holds
// (the GQA paper's "faster inference, larger batches on the same hardware"). The harness is kept free of
// printing so that tests/test_bench_batch.c can check it.
#ifndef KVLAB_BENCH_BATCH_H
#define KVLAB_BENCH_BATCH_H

#include <stddef.h>

#include "../decode/step.h"
#include "../kv/kv.h"
#include "../layers/model.h"

enum {
    BATCH_DECODE_STEPS = 16, // timed decode steps per run; the prompt fills the cache to context - this
    BATCH_HEADS = 8,         // query heads of the model (the `baby` preset with --heads 8: 8 heads of 16)
    BATCH_VOCAB = 65,        // the character vocabulary of tinyshakespeare
    BATCH_MAX_CAP = 256,     // the budget's largest batch is capped at this many sequences
    BATCH_PREFILL_ROWS = 64, // rows per chunk when the prompt goes through the model
};

// The model of the report's tier 2: the `baby` preset (4 layers, width 128) with 8 query heads of 16 and
// n_kv_head key/value heads (8 MHA, 4 and 2 GQA, 1 MQA), vocabulary 65, SwiGLU width by Llama's rule,
// block_size = max_context (RoPE has no learned positions: the weights do not depend on it).
ModelConfig batch_model_config(int n_kv_head, int max_context);

// Bytes a full fp32 cache of this model reports (kv_cache_bytes) when it holds `context` tokens: each layer's
// and kv head's rows (2 * head_dim floats a token) and its 4-byte token count.
size_t batch_kv_bytes_per_seq(const ModelConfig *c, int context);

// The largest batch whose caches fit the budget: floor(budget / bytes_per_seq), at most cap (*capped = 1 when
// the cap cut it). 0 when not even one sequence fits.
int batch_max_batch(double budget_bytes, size_t bytes_per_seq, int cap, int *capped);

// The token sequence s decodes at step `step` (a fixed pattern: rows differ, runs repeat), and the prompt's
// token i.
int batch_token(int seq, int step, int vocab);
int batch_prompt_token(int i, int vocab);

// One prompt through the model, chunked as decode_prefill_cache does it: each layer's keys (before RoPE) and
// values of its n tokens, (n_layer, n, kv_dim) each. Every sequence's cache is filled from these rows
// (kv_cache_append rotates them exactly as the prefill's own appends did), so B caches hold what B prefills
// of this prompt would hold, for the cost of one.
typedef struct {
    int n_layer, n, kv_dim;
    float *k, *v;
} BatchPrompt;

int batch_prompt_record(BatchPrompt *p, const Model *m, int n, char *err);
void batch_prompt_free(BatchPrompt *p);

// B sequences at one context: each its own full fp32 cache (room for `context` tokens) and store, one
// DecodeState of B rows.
typedef struct {
    const Model *m;
    int B, context;
    KVCache **kv;
    DecodeCache *dc;
    KVStore *st, **stores;
    DecodeState ds;
    int *tokens, *pos;
} BatchRun;

int batch_run_init(BatchRun *r, const Model *m, int B, int context, char *err);
// Empties every cache and appends the prompt's first context - BATCH_DECODE_STEPS tokens (p->n must reach).
int batch_run_fill(BatchRun *r, const BatchPrompt *p, char *err);
// Decode step `step` (0..BATCH_DECODE_STEPS-1) of all B sequences at once: one decode_forward of B rows, row b
// token batch_token(b, step) at position context - BATCH_DECODE_STEPS + step; row b's logits at
// r->ds.logits + b * vocab.
int batch_run_step(BatchRun *r, int step, char *err);
void batch_run_free(BatchRun *r);

#endif
