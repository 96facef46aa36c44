// The decode step: one token through the stack against a KV cache, written over the same op table as the
// training forward so the two cannot drift (a test checks they give the same logits).
#ifndef KVLAB_DECODE_H
#define KVLAB_DECODE_H

#include "../kv/kv.h"
#include "../kv/paged.h"
#include "model.h"

typedef struct {
    float *x, *xn, *q, *k, *v, *atty, *proj, *h1, *h3, *hg; // one token's activations
    float *att;                                             // (NH, capacity) attention probabilities
    float *logits;                                          // (V)
    int capacity;
} DecodeState;

void decode_state_init(DecodeState *s, const ModelConfig *cfg, int capacity);
void decode_state_free(DecodeState *s);
// Runs token `token` at position `pos` through the model, appending to the cache; logits land in s->logits.
// capacity bounds the tokens any layer's view may hold. Returns -1 if the cache is full.
int model_decode_step(const Model *m, DecodeState *s, KVCache *kv, int token, int pos);

// The step over any cache: for each layer, attend(ctx, m, s, layer, pos) receives the current token's query,
// key and value in s->q, s->k, s->v (before RoPE; q (NH*HD), k and v (NKV*HD)), stores what its cache keeps,
// and writes the attention output (NH*HD) to s->atty (s->att holds NH*capacity floats of scratch). A non-zero
// return stops the step and is returned.
typedef int (*DecodeAttendFn)(void *ctx, const Model *m, DecodeState *s, int layer, int pos);
int model_decode_step_with(const Model *m, DecodeState *s, int token, int pos, DecodeAttendFn attend, void *ctx);
// The same step through a paged pool (kv/paged.h): token `token` at position pos == seq->n_tokens is
// appended to seq's blocks and attends through its block table; then seq's policy drops the blocks it no
// longer keeps (kv_paged_enforce). -1 with a message when the pool is out of
// blocks (the sequence is then unchanged).
int model_decode_step_paged(const Model *m, DecodeState *s, KVPool *pool, KVSeq *seq, int token, int pos,
                            char *err);

// The paged pool's side of one layer's attention for one token: rotates k (NKV*HD) and q (NH*HD) to pos and
// appends (k, v) to seq's blocks for `layer`. -1 with a message when the pool is out of blocks.
int decode_paged_store(const Model *m, KVPool *pool, KVSeq *seq, int layer, int pos, int token, float *q, float *k,
                       const float *v, char *err);

// Batched decode over the paged pool: one token for each of n different sequences in one pass, so the weight
// matrices are read once per step for all of them (matrix-matrix products of n rows instead of n
// matrix-vector products); attention stays per sequence, through its own block table. Row i: token
// tokens[i] at position pos[i] == seqs[i]->n_tokens; logits row i lands at b->logits + i * vocab.
typedef struct {
    float *x, *xn, *q, *k, *v, *atty, *proj, *h1, *h3, *hg; // (max_batch, width) each
    float *att;                                             // (NH, capacity) scratch, one row at a time
    float *logits;                                          // (max_batch, V)
    int max_batch, capacity;
} DecodeBatch;

void decode_batch_init(DecodeBatch *b, const ModelConfig *cfg, int max_batch, int capacity);
void decode_batch_free(DecodeBatch *b);
// -1 with a message when the pool runs out of blocks; the sequences before the failing one have then
// advanced by a token at layer 0 and the batch must not be retried as is (callers reserve blocks first, as
// build/serve does). The sequences must be distinct.
int model_decode_batch_paged(const Model *m, DecodeBatch *b, KVPool *pool, KVSeq *const *seqs, const int *tokens,
                             const int *pos, int n, char *err);

#endif
