// The inference step, written once: n rows (tokens) through the stack over the same op table as the training
// forward (layers/transformer.c), attending through a KV store. The single-token decode step is n = 1, the
// server's batch is one row per request (each with its own store), the reuse prefill is the whole prompt
// through one store that may drop rows layer by layer. A store is the model-side face of a KV structure
// (decode/cache_store.c, paged_store.c, tier_store.c, reuse.c): it keeps each row's key and value and
// computes its attention.
#ifndef KVLAB_DECODE_STEP_H
#define KVLAB_DECODE_STEP_H

#include "../kv/kv.h"
#include "../kv/paged.h"
#include "../layers/model.h"

// The cache shape of a model, for streams of up to max_positions tokens.
KVShape decode_kv_shape(const ModelConfig *cfg, int max_positions);

// Buffers of one step, for up to max_rows rows (llama2.c's RunState). Row r of each (rows, width) buffer is
// at r * width.
// On a device backend (decode_state_init_on with ops->on_device) every float buffer but logits lives in device
// memory; tokens and pos stay on the host (the stores read them) and are uploaded to tokens_dev, and the logits a
// step computes (in logits_dev) are downloaded into the host's logits for sampling and comparison.
typedef struct {
    float *x, *xn, *q, *atty, *proj; // (max_rows, C) residual stream, normed, queries, attention out, a product
    float *k, *v;                    // (max_rows, KVC) keys and values before RoPE
    float *h1, *h3, *hg;             // (max_rows, H) MLP
    float *rstd;                     // (max_rows) rmsnorm scratch
    float *att;                      // (NH, capacity) one row's attention probabilities (scratch)
    float *logits;                   // (max_rows, V)
    int *tokens, *pos;               // (max_rows) each row's token and position (a store may compact them)
    int max_rows, capacity;          // capacity: the most tokens any store may attend over
    const Ops *ops;                  // the backend whose memory holds the buffers (ops_cpu: the host)
    float *logits_dev;               // device: (max_rows, V) the step's logits before their download
    int *tokens_dev;                 // device: (max_rows) the tokens, uploaded for the embedding
} DecodeState;

// Host buffers (the CPU backend).
void decode_state_init(DecodeState *s, const ModelConfig *cfg, int max_rows, int capacity);
// Buffers in ops' memory (host for ops_cpu: the same as decode_state_init). decode_forward needs the model's
// backend to be the state's.
void decode_state_init_on(DecodeState *s, const ModelConfig *cfg, const Ops *ops, int max_rows, int capacity);
void decode_state_free(DecodeState *s);

typedef struct KVStore KVStore;

typedef struct {
    // Optional. After layer `layer` computed keys and values for rows [0, n) (s->k, s->v, before RoPE) and
    // before the queries: keeps what it stores of them and may let only some rows go on through the layer,
    // compacting s->x, s->xn, s->pos and s->tokens to the front in order. Returns the rows that go on (>= 1;
    // the last row always goes on). Only a store that owns every row of the step may do this.
    int (*select_rows)(KVStore *st, const Model *m, DecodeState *s, int layer, int n);
    // Attention for rows [row0, row0 + n): each row's query (s->q, before RoPE), key and value (unless
    // select_rows stored them); stores what it keeps and writes each row's output to s->atty. -1 with a
    // message in err (a full pool, a failed slow tier); the step then stops.
    int (*attend)(KVStore *st, const Model *m, DecodeState *s, int layer, int row0, int n, char *err);
    // Optional: after the last layer (a policy that drops whole blocks).
    void (*step_end)(KVStore *st);
} KVStoreOps;

struct KVStore {
    const KVStoreOps *ops;
    void *ctx; // the store's state, owned by its caller
};

enum { DECODE_LOGITS_ALL = 0, DECODE_LOGITS_LAST = 1 };

// Runs rows (tokens[i] at position pos[i]) through the model. stores: one store for all rows (n_stores = 1)
// or one per row (n_stores = n, attended row by row). Logits of every row (DECODE_LOGITS_ALL, row i at
// s->logits + i * V) or of the last row only (at s->logits). Returns the rows that reached the end (n unless
// a store dropped rows), or -1 with a message in err.
int decode_forward(const Model *m, DecodeState *s, KVStore *const *stores, int n_stores, const int *tokens,
                   const int *pos, int n, int logits, char *err);

// A prompt through one store: tokens[0..n) at positions 0..n-1 in chunks of s->max_rows rows (matrix products over
// the chunk, attention row by row, so the store sees the appends of token-by-token steps). Logits of the last
// token at s->logits. -1 with a message in err (may be NULL) when the store cannot hold a position.
int decode_prefill(const Model *m, DecodeState *s, KVStore *st, const int *tokens, int n, char *err);
// decode_prefill into a contiguous cache.
int decode_prefill_cache(const Model *m, DecodeState *s, KVCache *kv, const int *tokens, int n, char *err);

// --- stores ---------------------------------------------------------------------------------------------------

// The contiguous cache (kv/kv.h): keys handed over before RoPE, the query rotated to the position the cache
// gives it, attention straight from the cache's encoded rows where it can (kv_cache_attend). watch, when set, sees each row's attention probabilities (NH, Tc) after each layer (attention maps).
typedef struct {
    KVCache *kv;
    void (*watch)(void *watch_ctx, int layer, int pos, const float *att, int Tc);
    void *watch_ctx;
} DecodeCache;
KVStore decode_store_cache(DecodeCache *c);

// One sequence of the paged pool (kv/paged.h): keys rotated to their position on entry, attention through
// the block table, the sequence's policy applied after each step.
typedef struct {
    KVPool *pool;
    KVSeq *seq;
} DecodePaged;
KVStore decode_store_paged(DecodePaged *p);
// The paged store's side of one layer for one row: rotates k (NKV*HD) and q (NH*HD) to pos and appends (k, v)
// to seq's blocks. -1 with a message when the pool is out of blocks.
int decode_paged_store(const Model *m, KVPool *pool, KVSeq *seq, int layer, int pos, int token, float *q, float *k,
                       const float *v, char *err);
// attention_decode_cpu over a block table (decode/paged_attention.c). q (NH, HD) rotated to its position; out
// (NH, HD); att (NH, Tc) probabilities over the held tokens in table order, Tc = kv_paged_held(pool, seq);
// reads layer's keys and values through seq's table (encoded rows through the codec's attention hooks),
// skipping dropped blocks.
void attention_decode_paged(float *out, float *att, const float *q, const KVPool *pool, const KVSeq *seq,
                            int layer, int NH, int NKV, int HD);

// A one-row store from a function (tests and tools): attend(ctx, m, s, layer, pos) gets the row's query, key and
// value in s->q, s->k, s->v (before RoPE), stores what it keeps and writes s->atty; s->att is (NH, capacity)
// scratch. A non-zero return stops the step.
typedef int (*DecodeAttendFn)(void *ctx, const Model *m, DecodeState *s, int layer, int pos);
int model_decode_step_with(const Model *m, DecodeState *s, int token, int pos, DecodeAttendFn attend, void *ctx);

// --- the common steps, as one-liners over decode_forward -------------------------------------------------------

// Token `token` at position pos through a contiguous cache; logits in s->logits. -1 when the cache is full.
int model_decode_step(const Model *m, DecodeState *s, KVCache *kv, int token, int pos);
// The same through one paged sequence (pos == seq->n_tokens). -1 with a message when the pool is out of
// blocks (the sequence is then unchanged).
int model_decode_step_paged(const Model *m, DecodeState *s, KVPool *pool, KVSeq *seq, int token, int pos,
                            char *err);
// One token for each of n distinct sequences in one pass (the weights read once for all: n-row matrix
// products); row i: tokens[i] at pos[i] == seqs[i]->n_tokens, logits at s->logits + i * V. -1 with a message
// when the pool runs out of blocks; the sequences before the failing one have then advanced by a token at
// layer 0 and the batch must not be retried as is (callers reserve blocks first, as build/serve does).
int model_decode_batch_paged(const Model *m, DecodeState *s, KVPool *pool, KVSeq *const *seqs, const int *tokens,
                             const int *pos, int n, char *err);

#endif
