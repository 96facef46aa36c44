// The skeleton every KV evaluation of build/infer shares, so that each one only says what it feeds and what
// it reports: one handle for the cache under test whatever the spec (contiguous cache or paged pool,
// calibrated when it needs it), the lockstep pair of that cache and the full fp32 reference, the per-token
// comparison of two sets of logits (KL, top-1, NLL) with its accumulator, and a small JSON line writer.
// Users: kveval.c (streams), kvrecall.c, kvprefix.c, compare.c, and generation (genstream.c).
#ifndef KVLAB_EVALCORE_H
#define KVLAB_EVALCORE_H

#include <stddef.h>
#include <stdio.h>

#include "../kv/kv.h"
#include "../kv/paged.h"
#include "../decode/device_store.h"
#include "../decode/step.h"
#include "../layers/model.h"

// A cache of any spec with its decode state. A paged spec (SELECT+paged:B[+FORMAT]) holds one sequence in
// a pool of its own, sized for max_positions tokens plus a block to spare; anything else is a KVCache. On a
// device model (m->ops->on_device) the cache is a device cache (decode/device_store.h: the specs it names)
// and the decode state's buffers are in device memory too (ds.logits is the host's copy).
typedef struct {
    KVCache *kv;    // contiguous cache, NULL when paged or on a device
    KVPool *pool;   // paged: the pool and its one sequence
    DecodeDevice *dev; // device: the cache in device memory
    KVSeq seq;
    DecodeState ds; // logits of the last step in ds.logits (V)
    int n_layer;
    int chunked;    // a prompt may go in by chunks of rows: no layer's cache depends on another's (not minicache)
} EvalCache;

// max_positions: the longest stream the cache will see (its RoPE table); calib / n_calib: tokens to fit
// low-rank bases on (ignored by the other specs). -1 with a message on a spec the model cannot take.
int evalcore_cache_init(EvalCache *c, const Model *m, const KVSpec *spec, int max_positions, const int *calib,
                        size_t n_calib, char *err);
// The reference: a plain fp32 full cache (--kv full).
int evalcore_cache_init_full(EvalCache *c, const Model *m, int max_positions, char *err);
void evalcore_cache_free(EvalCache *c);
// Empties the cache for a new stream; prefill is the prompt length SnapKV compresses at (0 = none). A cache never
// initialised (zeroed) is left as it is.
void evalcore_cache_reset(EvalCache *c, int prefill);
// Token `token` at position pos (the next one) through the cache; logits in c->ds.logits. -1 with a message
// when the cache cannot take it (a pool out of blocks, a cache past its positions).
int evalcore_cache_step(EvalCache *c, const Model *m, int token, int pos, char *err);
// Resets the cache and feeds tokens[0..n) at positions 0..n-1 as a prompt (SnapKV compresses at its end;
// a pool first reuses the blocks it still holds for this prefix). Logits of the last token in c->ds.logits.
// A contiguous cache takes the prompt in chunks of rows (matrix products over the chunk, attention row by
// row: each layer's cache sees the same appends as token by token); a paged sequence, and minicache (whose
// merged layer pairs fill in lockstep), token by token.
int evalcore_cache_prefill(EvalCache *c, const Model *m, const int *tokens, int n, char *err);
// The store of a cache for decode_forward (step.h); slot holds what the store points at and must outlive it.
typedef union {
    DecodeCache cache;
    DecodePaged paged;
} EvalStoreSlot;
KVStore evalcore_cache_store(EvalCache *c, EvalStoreSlot *slot);
// One token into each of n caches in one decode_forward of n rows (caches[i] takes tokens[i] at pos[i], n <= ds's
// rows). Up to 8 rows every matrix product is bit-identical to one step per cache (layers/matmul.c), so this
// is a step of each cache, batched. Logits of cache i at ds->logits + i * V. -1 with a message in err.
int evalcore_caches_step(EvalCache *const *caches, int n, const Model *m, DecodeState *ds, const int *tokens,
                         const int *pos, char *err);
// Bytes the cache holds: a KVCache's own account (kv_cache_bytes); a paged sequence's held blocks' rows,
// its block table and scores.
size_t evalcore_cache_bytes(const EvalCache *c);
// Tokens held, the mean over layers (per-layer budgets differ under pyramid).
double evalcore_cache_held(const EvalCache *c);

// Fits a low-rank cache's bases from the keys and values the model produces on tokens (at most 8 windows of
// the model's context or of EVALCORE_CALIB_MAX_T tokens, the shorter), through a full cache. No-op for caches
// that need no calibration.
#define EVALCORE_CALIB_MAX_T 512
int evalcore_calibrate_cache(const Model *m, KVCache *kv, const int *tokens, size_t n, char *err);

// The full fp32 cache and the cache under test, stepped in lockstep over streams of up to `context` tokens.
typedef struct {
    EvalCache full, comp;
} EvalPair;

int evalcore_pair_init(EvalPair *p, const Model *m, const KVSpec *spec, int context, const int *calib,
                       size_t n_calib, char *err);
void evalcore_pair_free(EvalPair *p);
void evalcore_pair_reset(EvalPair *p, int prefill);
// One token through both (the pair is sized for its streams: a failure is a bug, and aborts).
void evalcore_pair_step(EvalPair *p, const Model *m, int token, int pos);

// One prediction compared: the reference logits `full` and the logits under test `comp` (V each), for the
// true next token y (y < 0: no NLL).
typedef struct {
    double kl;            // KL(full || comp), nats
    double nll, nll_full; // -log p(y) under comp / under full
    int top1, top1_full;  // each side's most likely token
} EvalTokenCompare;

void evalcore_compare_logits(const float *full, const float *comp, int V, int y, EvalTokenCompare *out);

// Sums over the compared tokens.
typedef struct {
    size_t scored, agree;        // tokens compared; of those, equal top-1
    double nll, nll_full, kl;    // sums
} EvalAcc;

void evalcore_acc_add(EvalAcc *a, const EvalTokenCompare *t);
double evalcore_acc_ppl(const EvalAcc *a);      // exp(mean NLL under comp)
double evalcore_acc_ppl_full(const EvalAcc *a); // exp(mean NLL under full)
double evalcore_acc_kl(const EvalAcc *a);       // mean KL per token
double evalcore_acc_top1(const EvalAcc *a);     // share of equal top-1

// A full fp16 cache's bytes per token of this model: n_layer * 2 (K, V) * kv_dim * 2 bytes.
double evalcore_fp16_bytes_per_token(const ModelConfig *c);
// Peak resident memory of this process so far, in bytes (0 if unknown).
size_t evalcore_peak_rss_bytes(void);

// One JSON object on one line: {"key": value, ...}\n. Keys and strings are written as given, escaped.
typedef struct {
    FILE *f;
    int fields; // written so far in the innermost object
} EvalJson;

void evalcore_json_begin(EvalJson *j, FILE *f);
void evalcore_json_end(EvalJson *j); // closes the object and the line
void evalcore_json_str(EvalJson *j, const char *key, const char *value);
void evalcore_json_int(EvalJson *j, const char *key, long long value);
void evalcore_json_num(EvalJson *j, const char *key, double value); // %.6g
// A number in a printf format of its own (e.g. "%.1f" for rates); fmt takes one double.
void evalcore_json_fmt(EvalJson *j, const char *key, const char *fmt, double value);
void evalcore_json_int_array(EvalJson *j, const char *key, const int *v, int n);
void evalcore_json_num_array(EvalJson *j, const char *key, const double *v, int n); // %.6g
// Writes the key (and the separator before it) and leaves the value to the caller, for a value the typed
// writers above do not cover (e.g. an object of arrays).
void evalcore_json_key(EvalJson *j, const char *key);
// {"k0": v0, ...} with integer keys (e.g. recall accuracy by distance).
void evalcore_json_num_map(EvalJson *j, const char *key, const int *keys, const double *v, int n);

#endif
