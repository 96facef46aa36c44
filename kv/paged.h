// A paged KV cache (vLLM's PagedAttention idea) with prefix sharing. Memory is a pool of fixed-size blocks;
// each sequence holds a block table, so a sequence only wastes the unused slots of its last block, and blocks
// can be shared: a full block is named by a hash chained over its tokens and every block before it (xxHash),
// so a new request whose prompt starts like an earlier one reuses those blocks instead of computing them.
// Shared blocks are reference counted and copied before a write (copy-on-write, for forked sequences).
// Blocks no sequence holds stay findable by hash until allocation needs them back: the free list first, then
// the least recently used cached block of the lowest priority (TensorRT-LLM's prioritised LRU; 0..100, 100 =
// keep longest). Keys are stored already rotated by RoPE to their absolute position (the token's index in
// its sequence; reuse never shifts positions). Not thread-safe: one caller drives the pool.
//
// Composition with the other KV techniques (`--kv SELECT+paged:B[+FORMAT]`):
// - Storage formats: the pool holds every row in one format, fp32, fp16, fp8 or int8/int4/int2 in groups of
//   G channels (kv/quant.h's row layout: an fp16 scale and minimum per group), per token and head. Keys are
//   quantized after RoPE (as vLLM's quantized KV caches do, and the unpaged cache wherever its positions
//   never change). Shared blocks are shared in their encoded form.
// - Selection: a sequence may carry a policy that drops whole blocks (a block spans all layers and heads, so
//   there is one decision per block, not one per layer and head as in the unpaged cache): window:W drops
//   every full block that lies entirely before the newest W tokens; sink:S,window:W also keeps the blocks
//   holding the first S tokens; random:B,R drops a random block outside the newest R while more than
//   ceil(B/BLOCK) + 1 are held; h2o:H,R keeps the blocks overlapping the newest R tokens and, of the rest,
//   those with the most attention accumulated over all layers and heads, up to ceil((H+R)/B) + 1 blocks.
//   So a sequence never holds less than the unpaged policy, and at most: window W + B - 1 tokens; sink
//   ceil(S/B)*B + W + B - 1; h2o ceil((H+R)/B)*B + B. A dropped block leaves a hole (-1) in the table;
//   positions are never re-indexed (no StreamingLLM position shift, so a stream should stay within the
//   trained context's RoPE range). A block's K/V beyond layer 0 depends on what attention saw, which the
//   policy decides, so the policy is mixed into the seed of block 0's hash: only sequences with the same
//   salt and the same policy share blocks. Dropped full blocks stay cached for such sequences.
// - decode/paged_attention.c attends straight from encoded rows through the codec's score/accumulate hooks
//   (the pool's scratch decodes rows only for a codec without them): one thread per pool (as for everything
//   else here).
#ifndef KVLAB_PAGED_H
#define KVLAB_PAGED_H

#include <stddef.h>
#include <stdint.h>

#include "../common/common.h"
#include "codec.h"
#include "kv.h"
#include "policy.h"
#include "spec.h"

enum {
    KV_PRIORITY_MAX = 100,     // priorities are 0..KV_PRIORITY_MAX; higher is evicted later
    KV_PRIORITY_DEFAULT = 35,  // TensorRT-LLM's default
    KV_BLOCK_MAX = 4096,       // tokens per block
};

typedef enum { KV_BLOCK_FREE, KV_BLOCK_CACHED, KV_BLOCK_USED } KVBlockState;

typedef struct {
    int ref;          // sequences holding the block
    int n;            // token slots written (0..block); for layers > 0 the current position may lag by a layer
    int priority;     // eviction priority: the highest of the requests that held it since it was last cached
    int hashed;       // 1 once full: hash is its chained hash
    int registered;   // 1 when the hash map points at this block (findable by prefix)
    uint64_t hash;    // chained hash: H(its tokens, seed = hash of the block before it)
    KVBlockState state;
    int prev, next;   // links in the free list or in a priority's LRU list; -1 = none
} KVBlock;

// The map's key: a chained hash spread over 10 bytes of 7 bits. stb_ds hashes key bytes as (byte << 24) in an
// int, undefined behaviour (UBSan halts) for a byte >= 128 at offset 3 or 7 of a word.
typedef struct {
    uint8_t b[10];
} KVHashKey;

typedef struct {
    KVHashKey key;
    int value;
} KVPoolMapEntry; // stb_ds hash map entry: chained hash -> block id

typedef struct {
    int head, tail;
} KVBlockList;

typedef uint64_t (*KVBlockHashFn)(const int *tokens, int n, uint64_t seed);


typedef struct {
    int n_layer, n_kv_head, head_dim;
    int block;            // tokens per block (BLOCK)
    int n_blocks;
    int group;            // the row format's channels per group (kv_codec_group)
    const KVCodec *codec; // the row format (kv/codec.h): fp32, fp16, fp8, int8/int4/int2
    size_t row_bytes;     // one token's row of one head, encoded
    uint8_t *k, *v;       // (n_blocks, n_layer, n_kv_head, block) rows of row_bytes; keys rotated
    float *scratch;       // (2, block, head_dim): one block's rows decoded for attention
    int *tokens;          // (n_blocks, block) token ids of each block's slots
    KVBlock *blocks;      // (n_blocks)
    KVBlockList lists[KV_PRIORITY_MAX + 2]; // [p]: cached blocks of priority p, LRU at the head; last: free
    KVPoolMapEntry *map;  // stb_ds hmap of registered full blocks
    KVBlockHashFn hash;   // XXH64 by default; tests may swap it to force collisions
    // counters since init
    int64_t requests, query_blocks, hit_blocks, prefill_saved, evictions, cow;
} KVPool;

// Which blocks a sequence keeps (from a spec: kv_paged_policy); all zero = every block (full selection).
typedef struct {
    const KVPolicy *policy; // NULL: full selection; else a policy with a block victim (kv/policy.h)
    KVSpec spec;            // its parameters
    Rng rng;                // its random choices (random:B), seeded by the spec
} KVSeqPolicy;

// A sequence: zero-initialise it (KVSeq s = {0}), set its salt and policy, then kv_paged_begin or
// kv_paged_fork.
typedef struct {
    int *table;      // stb_ds array of block ids; token t lives in block table[t / block], slot t % block;
                     // KV_BLOCK_DROPPED where a policy dropped the block
    float *score;    // stb_ds array beside table: attention each block received (h2o), summed over layers, heads
    int n_tokens;    // positions whose K/V the table holds (layer 0; later layers catch up within a step)
    int priority;    // 0..KV_PRIORITY_MAX
    uint64_t salt;   // seed of block 0's hash: sequences with different salts never share (tenants)
    uint64_t last_hash; // chained hash of the last full block (the seed of the next one's)
    KVSeqPolicy policy;
    int64_t dropped; // blocks the policy dropped
} KVSeq;

typedef struct {
    int blocks_total, blocks_used, blocks_cached, blocks_free; // used: held (ref > 0); cached: ref 0, findable
    int64_t slots_allocated;  // used blocks * block
    int64_t tokens_held;      // token slots written in used blocks (a shared block counts once)
    double fragmentation;     // (slots_allocated - tokens_held) / slots_allocated; 0 when nothing is used
    double utilisation;       // blocks_used / blocks_total
    int64_t requests;         // kv_paged_begin calls
    int64_t query_blocks;     // full prompt blocks eligible for reuse (the last prompt token never is)
    int64_t hit_blocks;       // of those, found in the pool
    double hit_rate;          // hit_blocks / query_blocks; 0 when none were queried
    int64_t prefill_saved;    // prompt tokens whose K/V was reused (hit_blocks * block)
    int64_t evictions;        // cached blocks taken back for allocation
    int64_t cow;              // copy-on-write block copies
    size_t bytes;             // held by the pool: k and v rows, decode scratch, token ids, block metadata, hash map
    size_t bytes_used;        // k and v rows of the used blocks (encoded)
} KVPagedStats;

// A pool of n_blocks blocks of `block` tokens for shape's layers and kv heads, fp32 rows. -1 with a message
// in err on a bad block size or pool size.
int kv_pool_init(KVPool **out, const KVShape *shape, int block, int n_blocks, char *err);
// The same with rows in a storage term of the codec registry: "fp32", "fp16", "fp8[:G]", "int8[:G]",
// "int4[:G]", "int2[:G]" (NULL = fp32). -1 with a message for another term or a group that does not divide
// the head dimension.
int kv_pool_init_format(KVPool **out, const KVShape *shape, int block, int n_blocks, const char *format,
                        char *err);
// Reads a row format term (as kv_pool_init_format takes it) into fmt; -1 with the valid formats in err.
int kv_pool_parse_format(KVSpec *fmt, const char *format, char *err);
// Whether the pool holds fp32 rows (attention may read them in place).
int kv_pool_is_f32(const KVPool *pool);
// The pool a paged spec describes (spec->paged_block, its format and group).
int kv_pool_init_spec(KVPool **out, const KVShape *shape, const KVSpec *spec, int n_blocks, char *err);
void kv_pool_free(KVPool *pool);
void kv_pool_stats(const KVPool *pool, KVPagedStats *st);
// Checks every invariant the pool keeps (lists, states, counts, map); 0, or -1 with what is wrong in err.
int kv_pool_validate(const KVPool *pool, char *err);
// Keys (block rows, head_dim) of one (block, layer, kv head) of an fp32 pool; values likewise.
float *kv_pool_k(const KVPool *pool, int block, int layer, int head);
float *kv_pool_v(const KVPool *pool, int block, int layer, int head);
// The encoded rows of one (block, layer, kv head), any format: keys, or values when value is 1.
uint8_t *kv_pool_rows(const KVPool *pool, int value, int block, int layer, int head);
// The first `rows` keys (value 0) or values (value 1) of one (block, layer, kv head), decoded to fp32
// (rows, head_dim).
void kv_pool_read(const KVPool *pool, int value, int block, int layer, int head, int rows, float *dst);

// Starts seq (empty) on a prompt: walks the prompt's full blocks, reusing each whose chained hash is
// registered and whose tokens are equal, and stops at the first miss. Returns the number of prompt tokens
// reused (a multiple of the block size): they need no prefill, and seq->n_tokens is set to it. The whole
// prompt is never reused: at least the last prompt token is left to compute, so the caller gets its logits.
// seq's policy then applies to the reused blocks (what a cold run holds after the last reused token; h2o's
// block scores start at 0). -1 with a message on a bad priority or prompt length.
int kv_paged_begin(KVPool *pool, KVSeq *seq, const int *tokens, int n_prompt, int priority, char *err);
// dst (empty) shares all of src's blocks (parallel sampling, beam search); the first write to a shared
// partial block copies it.
void kv_paged_fork(KVPool *pool, KVSeq *dst, const KVSeq *src);
// Stores token `token` at position pos for one layer: k (rotated to pos) and v are (n_kv_head * head_dim).
// Call layers in order 0..n_layer-1 for each position; layer 0 takes pos == seq->n_tokens and allocates a
// block when the last one is full (or copies a shared partial one). When the last layer fills a block, its
// chained hash is registered (an identical registered block keeps the registration). -1 with a message when
// the pool has no block to give; the sequence and pool are then unchanged.
int kv_paged_append(KVPool *pool, KVSeq *seq, int layer, int pos, int token, const float *k, const float *v,
                    char *err);
// Releases seq's blocks (last block first, so a request's tail is evicted before its head) and empties it,
// keeping its salt and policy.
void kv_paged_end(KVPool *pool, KVSeq *seq);

// The policy a spec's selection describes; -1 with a message for a selection the pool cannot apply.
int kv_paged_policy(KVSeqPolicy *policy, const KVSpec *spec, char *err);
// Entries of seq's block table (dropped ones included).
int kv_paged_blocks(const KVSeq *seq);
// Rows table entry i holds: 0 for a dropped block (or one past n_tokens), else min(block, what is left).
int kv_paged_rows(const KVPool *pool, const KVSeq *seq, int i);
// Tokens of seq whose K/V the table still holds (n_tokens minus the dropped blocks' tokens).
int kv_paged_held(const KVPool *pool, const KVSeq *seq);
// Adds one layer's attention probabilities att (NH, kv_paged_held) to the blocks' scores (h2o's evidence).
void kv_paged_observe(const KVPool *pool, KVSeq *seq, const float *att, int NH);
// Applies seq's policy after a decode step (every layer written): drops the blocks it no longer keeps; they
// stay cached for prefix reuse like ended ones. Returns the number dropped.
int kv_paged_enforce(KVPool *pool, KVSeq *seq);

#endif
