// The paged pool behind kv/paged.h: block allocation with a free list and prioritised LRU lists of cached
// blocks (intrusive doubly linked lists, O(1) moves, as vLLM's free queue), the chained-hash prefix map
// (stb_ds), reference counts and copy-on-write. A hash hit is always confirmed by comparing tokens: the hash
// only finds a candidate.
#define STB_DS_IMPLEMENTATION
#if defined(__GNUC__) && !defined(__clang__) // stb_ds's hm* macros say typeof: not a keyword in -std=c11
#define typeof __typeof__
#endif
#include <stb/stb_ds.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "../common/common.h"
#include "codec.h"
#include "paged.h"
#include "policy.h"

enum { FREE_LIST = KV_PRIORITY_MAX + 1 };

static uint64_t hash_xxh64(const int *tokens, int n, uint64_t seed) {
    return XXH64(tokens, (size_t)n * sizeof(int), seed);
}

static KVHashKey map_key(uint64_t h) {
    KVHashKey k;
    for (int i = 0; i < 10; i++) k.b[i] = (uint8_t)((h >> (7 * i)) & 0x7f);
    return k;
}

// ---- intrusive lists ---------------------------------------------------------------------------------------

static void list_push_tail(KVPool *p, int li, int b) {
    KVBlockList *l = &p->lists[li];
    p->blocks[b].prev = l->tail, p->blocks[b].next = -1;
    if (l->tail >= 0) p->blocks[l->tail].next = b;
    else l->head = b;
    l->tail = b;
}

static void list_remove(KVPool *p, int li, int b) {
    KVBlockList *l = &p->lists[li];
    KVBlock *x = &p->blocks[b];
    if (x->prev >= 0) p->blocks[x->prev].next = x->next;
    else l->head = x->next;
    if (x->next >= 0) p->blocks[x->next].prev = x->prev;
    else l->tail = x->prev;
    x->prev = x->next = -1;
}

// ---- pool ------------------------------------------------------------------------------------------------

int kv_pool_init(KVPool **out, const KVShape *shape, int block, int n_blocks, char *err) {
    return kv_pool_init_format(out, shape, block, n_blocks, "fp32", err);
}

int kv_pool_parse_format(KVSpec *fmt, const char *format, char *err) {
    char why[ERR_LEN];
    if (!format) format = "fp32";
    if (kv_spec_parse(fmt, format, why) == 0 && kv_spec_is_full(fmt) && !fmt->paged_block && fmt->codec->row_bytes &&
        !fmt->rank && !fmt->hadamard && !fmt->fp_sink && !fmt->fp_recent && !fmt->merge_from && !fmt->tier_fast)
        return 0;
    char names[256];
    size_t at = 0;
    for (int i = 0; i < kv_codec_count; i++)
        if (kv_codecs[i]->row_bytes)
            at += (size_t)snprintf(names + at, sizeof(names) - at, "%s%s", at ? ", " : "", kv_codecs[i]->form);
    err_set(err, "bad row format '%s': valid formats are %s", format, names);
    return -1;
}

int kv_pool_init_format(KVPool **out, const KVShape *shape, int block, int n_blocks, const char *format,
                        char *err) {
    *out = NULL;
    KVSpec fmt;
    if (kv_pool_parse_format(&fmt, format, err) != 0) return -1;
    if (shape->n_layer < 1 || shape->n_kv_head < 1 || shape->head_dim < 1) {
        err_set(err, "paged KV: bad shape (%d layers, %d kv heads, head_dim %d)", shape->n_layer,
                shape->n_kv_head, shape->head_dim);
        return -1;
    }
    if (block < 1 || block > KV_BLOCK_MAX) {
        err_set(err, "paged KV: block size %d must be 1..%d tokens", block, KV_BLOCK_MAX);
        return -1;
    }
    if (n_blocks < 1) {
        err_set(err, "paged KV: the pool needs at least one block (got %d)", n_blocks);
        return -1;
    }
    int HD = shape->head_dim;
    int group = kv_codec_group(&fmt, HD);
    size_t row_bytes = fmt.codec->row_bytes(fmt.codec, HD, group);
    if (row_bytes == 0) {
        err_set(err, "paged KV: %s rows in groups of %d do not fit head_dim %d (the group must divide it)", format,
                group, HD);
        return -1;
    }
    size_t per_block = (size_t)shape->n_layer * shape->n_kv_head * block * row_bytes; // bytes
    if ((size_t)n_blocks > SIZE_MAX / 2 / per_block) {
        err_set(err, "paged KV: %d blocks of %zu bytes do not fit in memory", n_blocks, per_block);
        return -1;
    }
    KVPool *p = common_calloc(1, sizeof(KVPool));
    p->n_layer = shape->n_layer, p->n_kv_head = shape->n_kv_head, p->head_dim = HD;
    p->block = block, p->n_blocks = n_blocks;
    p->codec = fmt.codec;
    p->group = group;
    p->row_bytes = row_bytes;
    p->k = calloc((size_t)n_blocks * per_block, 1);
    p->v = calloc((size_t)n_blocks * per_block, 1);
    p->scratch = calloc(2 * (size_t)block * HD, sizeof(float));
    p->tokens = calloc((size_t)n_blocks * block, sizeof(int));
    p->blocks = calloc((size_t)n_blocks, sizeof(KVBlock));
    if (!p->k || !p->v || !p->scratch || !p->tokens || !p->blocks) {
        err_set(err, "paged KV: cannot allocate %d blocks (%zu bytes of keys and values)", n_blocks,
                2 * (size_t)n_blocks * per_block);
        kv_pool_free(p);
        return -1;
    }
    for (int i = 0; i <= FREE_LIST; i++) p->lists[i].head = p->lists[i].tail = -1;
    for (int b = 0; b < n_blocks; b++) {
        p->blocks[b].state = KV_BLOCK_FREE;
        list_push_tail(p, FREE_LIST, b);
    }
    p->hash = hash_xxh64;
    *out = p;
    return 0;
}

int kv_pool_init_spec(KVPool **out, const KVShape *shape, const KVSpec *spec, int n_blocks, char *err) {
    *out = NULL;
    if (!spec->paged_block || !spec->codec->row_bytes) {
        err_set(err, "paged KV: '%s' is not a paged spec with per-row storage", spec->text);
        return -1;
    }
    char format[64];
    if (spec->group) snprintf(format, sizeof(format), "%s:%d", spec->codec->name, spec->group);
    else snprintf(format, sizeof(format), "%s", spec->codec->name);
    return kv_pool_init_format(out, shape, spec->paged_block, n_blocks, format, err);
}

void kv_pool_free(KVPool *p) {
    if (!p) return;
    hmfree(p->map);
    free(p->k), free(p->v), free(p->scratch), free(p->tokens), free(p->blocks);
    common_free(p);
}

uint8_t *kv_pool_rows(const KVPool *p, int value, int b, int layer, int head) {
    size_t unit = (((size_t)b * p->n_layer + layer) * p->n_kv_head + head) * p->block * p->row_bytes;
    return (value ? p->v : p->k) + unit;
}

int kv_pool_is_f32(const KVPool *p) { return p->codec->lossless; }

float *kv_pool_k(const KVPool *p, int b, int layer, int head) {
    CHECK(kv_pool_is_f32(p));
    return (float *)(void *)kv_pool_rows(p, 0, b, layer, head);
}

float *kv_pool_v(const KVPool *p, int b, int layer, int head) {
    CHECK(kv_pool_is_f32(p));
    return (float *)(void *)kv_pool_rows(p, 1, b, layer, head);
}

static void encode_row(const KVPool *p, uint8_t *dst, const float *src) {
    p->codec->encode(p->codec, dst, src, p->head_dim, p->group);
}

static void decode_rows(const KVPool *p, float *dst, const uint8_t *src, int rows) {
    int HD = p->head_dim;
    if (kv_pool_is_f32(p)) {
        memcpy(dst, src, (size_t)rows * p->row_bytes);
        return;
    }
    for (int r = 0; r < rows; r++) p->codec->decode(p->codec, dst + (size_t)r * HD, src + (size_t)r * p->row_bytes, HD, p->group);
}

void kv_pool_read(const KVPool *p, int value, int b, int layer, int head, int rows, float *dst) {
    CHECK(rows >= 0 && rows <= p->block);
    decode_rows(p, dst, kv_pool_rows(p, value, b, layer, head), rows);
}

static void unregister(KVPool *p, int b) {
    KVBlock *x = &p->blocks[b];
    if (!x->registered) return;
    CHECK(hmget(p->map, map_key(x->hash)) == b);
    CHECK(hmdel(p->map, map_key(x->hash)));
    x->registered = 0;
}

// A block for a sequence of the given priority: the free list first, then the least recently used cached
// block of the lowest priority. -1 when every block is held.
static int block_alloc(KVPool *p, int priority) {
    int b = p->lists[FREE_LIST].head, li = FREE_LIST;
    for (int q = 0; b < 0 && q <= KV_PRIORITY_MAX; q++)
        if (p->lists[q].head >= 0) b = p->lists[q].head, li = q;
    if (b < 0) return -1;
    list_remove(p, li, b);
    if (li != FREE_LIST) {
        unregister(p, b);
        p->evictions++;
    }
    KVBlock *x = &p->blocks[b];
    *x = (KVBlock){.ref = 1, .priority = priority, .state = KV_BLOCK_USED, .prev = -1, .next = -1};
    return b;
}

// One more holder of block b (a prefix hit or a fork).
static void block_acquire(KVPool *p, int b, int priority) {
    KVBlock *x = &p->blocks[b];
    if (x->state == KV_BLOCK_CACHED) {
        CHECK(x->ref == 0);
        list_remove(p, x->priority, b);
        x->state = KV_BLOCK_USED, x->priority = priority;
    }
    CHECK(x->state == KV_BLOCK_USED);
    x->ref++;
    if (priority > x->priority) x->priority = priority;
}

static void block_release(KVPool *p, int b) {
    KVBlock *x = &p->blocks[b];
    CHECK(x->state == KV_BLOCK_USED && x->ref > 0);
    if (--x->ref > 0) return;
    if (x->registered) {
        x->state = KV_BLOCK_CACHED;
        list_push_tail(p, x->priority, b);
    } else {
        *x = (KVBlock){.state = KV_BLOCK_FREE};
        list_push_tail(p, FREE_LIST, b);
    }
}

// ---- sequences -------------------------------------------------------------------------------------------

// The seed of a sequence's block 0: its salt, mixed with its policy when it drops blocks. A block's K/V at
// layers >= 1 depends on what earlier attention saw, which the policy decides, so only sequences with the
// same policy may share blocks (the fields are hashed one by one: the struct has padding).
static uint64_t seq_seed(const KVSeq *seq) {
    const KVSeqPolicy *pol = &seq->policy;
    if (!pol->policy || kv_spec_is_full(&pol->spec)) return seq->salt;
    const KVSpec *sp = &pol->spec;
    int64_t f[9] = {sp->sink, sp->window, sp->heavy, sp->recent, sp->keep, sp->kernel, sp->skip_layers,
                    (int64_t)sp->seed, 0};
    uint64_t h = XXH64(pol->policy->name, strlen(pol->policy->name), seq->salt ^ 0x706f6c696379ULL);
    return XXH64(f, sizeof(f), h);
}

int kv_paged_begin(KVPool *p, KVSeq *seq, const int *tokens, int n_prompt, int priority, char *err) {
    CHECK(seq->n_tokens == 0 && arrlen(seq->table) == 0);
    if (priority < 0 || priority > KV_PRIORITY_MAX) {
        err_set(err, "paged KV: priority %d must be 0..%d", priority, KV_PRIORITY_MAX);
        return -1;
    }
    if (n_prompt < 0 || (n_prompt > 0 && !tokens)) {
        err_set(err, "paged KV: bad prompt (%d tokens)", n_prompt);
        return -1;
    }
    seq->priority = priority;
    int B = p->block, eligible = n_prompt > 0 ? (n_prompt - 1) / B : 0; // leave the last token to compute
    uint64_t seed = seq_seed(seq);
    int hits = 0;
    for (; hits < eligible; hits++) {
        const int *t = tokens + (size_t)hits * B;
        uint64_t h = p->hash(t, B, seed);
        ptrdiff_t i = hmgeti(p->map, map_key(h));
        if (i < 0) break;
        int b = p->map[i].value;
        if (memcmp(p->tokens + (size_t)b * B, t, (size_t)B * sizeof(int)) != 0) break; // a hash collision
        block_acquire(p, b, priority);
        arrput(seq->table, b);
        arrput(seq->score, 0.0f);
        seed = h;
    }
    seq->n_tokens = hits * B;
    seq->last_hash = seed;
    if (hits) kv_paged_enforce(p, seq); // the state a cold run has after its last reused token (h2o: scores 0)
    p->requests++;
    p->query_blocks += eligible;
    p->hit_blocks += hits;
    p->prefill_saved += (int64_t)hits * B;
    return hits * B;
}

void kv_paged_fork(KVPool *p, KVSeq *dst, const KVSeq *src) {
    CHECK(dst->n_tokens == 0 && arrlen(dst->table) == 0);
    for (ptrdiff_t i = 0; i < arrlen(src->table); i++) {
        if (src->table[i] != KV_BLOCK_DROPPED) block_acquire(p, src->table[i], src->priority);
        arrput(dst->table, src->table[i]);
        arrput(dst->score, src->score[i]);
    }
    dst->n_tokens = src->n_tokens, dst->priority = src->priority, dst->salt = src->salt;
    dst->last_hash = src->last_hash, dst->policy = src->policy;
}

// Gives seq a private copy of its last block (slots 0..n-1 of every layer).
static int block_copy_on_write(KVPool *p, KVSeq *seq) {
    ptrdiff_t last = arrlen(seq->table) - 1;
    int old = seq->table[last], b = block_alloc(p, seq->priority);
    if (b < 0) return -1;
    size_t rows = (size_t)p->blocks[old].n * p->row_bytes;
    for (int l = 0; l < p->n_layer; l++)
        for (int g = 0; g < p->n_kv_head; g++) {
            memcpy(kv_pool_rows(p, 0, b, l, g), kv_pool_rows(p, 0, old, l, g), rows);
            memcpy(kv_pool_rows(p, 1, b, l, g), kv_pool_rows(p, 1, old, l, g), rows);
        }
    memcpy(p->tokens + (size_t)b * p->block, p->tokens + (size_t)old * p->block,
           (size_t)p->blocks[old].n * sizeof(int));
    p->blocks[b].n = p->blocks[old].n;
    block_release(p, old);
    seq->table[last] = b;
    p->cow++;
    return 0;
}

// The last layer filled block b (index i of seq's table): name it and make it findable. The seed is the
// previous block's hash, kept in the sequence since a policy may have dropped that block already.
static void block_register(KVPool *p, KVSeq *seq, ptrdiff_t i, int b) {
    KVBlock *x = &p->blocks[b];
    uint64_t seed = i == 0 ? seq_seed(seq) : seq->last_hash;
    x->hash = p->hash(p->tokens + (size_t)b * p->block, p->block, seed);
    x->hashed = 1;
    seq->last_hash = x->hash;
    if (hmgeti(p->map, map_key(x->hash)) >= 0) return; // an identical (or colliding) block keeps it
    hmput(p->map, map_key(x->hash), b);
    x->registered = 1;
}

int kv_paged_append(KVPool *p, KVSeq *seq, int layer, int pos, int token, const float *k, const float *v,
                    char *err) {
    int B = p->block, slot = pos % B;
    CHECK(layer >= 0 && layer < p->n_layer && pos >= 0);
    if (layer == 0) {
        CHECK(pos == seq->n_tokens);
        if (slot == 0) {
            int b = block_alloc(p, seq->priority);
            if (b < 0) goto exhausted;
            arrput(seq->table, b);
            arrput(seq->score, 0.0f);
        } else if (p->blocks[arrlast(seq->table)].ref > 1 && block_copy_on_write(p, seq) != 0) {
            goto exhausted;
        }
        int b = arrlast(seq->table);
        CHECK(p->blocks[b].n == slot && p->blocks[b].ref == 1);
        p->tokens[(size_t)b * B + slot] = token;
        p->blocks[b].n = slot + 1;
        seq->n_tokens = pos + 1;
    }
    CHECK(pos == seq->n_tokens - 1 && arrlen(seq->table) == pos / B + 1);
    ptrdiff_t i = pos / B;
    int b = seq->table[i];
    CHECK(p->blocks[b].ref == 1 && p->tokens[(size_t)b * B + slot] == token);
    size_t HD = p->head_dim;
    for (int g = 0; g < p->n_kv_head; g++) {
        encode_row(p, kv_pool_rows(p, 0, b, layer, g) + slot * p->row_bytes, k + g * HD);
        encode_row(p, kv_pool_rows(p, 1, b, layer, g) + slot * p->row_bytes, v + g * HD);
    }
    if (layer == p->n_layer - 1 && slot == B - 1) block_register(p, seq, i, b);
    return 0;
exhausted:
    err_set(err, "paged KV: pool exhausted: all %d blocks of %d tokens are held by running sequences",
            p->n_blocks, B);
    return -1;
}

void kv_paged_end(KVPool *p, KVSeq *seq) {
    for (ptrdiff_t i = arrlen(seq->table) - 1; i >= 0; i--)
        if (seq->table[i] != KV_BLOCK_DROPPED) block_release(p, seq->table[i]);
    arrfree(seq->table);
    arrfree(seq->score);
    *seq = (KVSeq){.salt = seq->salt, .policy = seq->policy};
}

// ---- selection policies over blocks ---------------------------------------------------------------------

int kv_paged_policy(KVSeqPolicy *pol, const KVSpec *spec, char *err) {
    memset(pol, 0, sizeof(*pol));
    if (kv_spec_is_full(spec)) return 0;
    if (!spec->policy->block_victim) {
        err_set(err, "paged KV: '%s': %s does not drop whole blocks (the pool runs full selection or a policy "
                "with a block victim: window, sink, h2o, random)", spec->text, spec->policy->name);
        return -1;
    }
    pol->policy = spec->policy;
    pol->spec = *spec;
    rng_init(&pol->rng, spec->seed);
    return 0;
}

int kv_paged_blocks(const KVSeq *seq) { return (int)arrlen(seq->table); }

int kv_paged_rows(const KVPool *p, const KVSeq *seq, int i) {
    int rows = seq->n_tokens - i * p->block; // a view may cut n_tokens short of the table
    if (i >= arrlen(seq->table) || rows <= 0 || seq->table[i] == KV_BLOCK_DROPPED) return 0;
    return rows < p->block ? rows : p->block;
}

int kv_paged_held(const KVPool *p, const KVSeq *seq) {
    int held = 0;
    for (int i = 0; i < arrlen(seq->table); i++) held += kv_paged_rows(p, seq, i);
    return held;
}

void kv_paged_observe(const KVPool *p, KVSeq *seq, const float *att, int NH) {
    if (!seq->policy.policy || !seq->policy.policy->observe) return; // only policies that take evidence
    int Tc = kv_paged_held(p, seq), off = 0;
    for (int i = 0; i < arrlen(seq->table); i++) {
        int rows = kv_paged_rows(p, seq, i);
        double mass = 0.0;
        for (int h = 0; h < NH; h++)
            for (int r = 0; r < rows; r++) mass += att[(size_t)h * Tc + off + r];
        seq->score[i] += (float)mass;
        off += rows;
    }
}

static void drop_block(KVPool *p, KVSeq *seq, ptrdiff_t i) {
    block_release(p, seq->table[i]);
    seq->table[i] = KV_BLOCK_DROPPED;
    seq->dropped++;
}

int kv_paged_enforce(KVPool *p, KVSeq *seq) {
    KVSeqPolicy *pol = &seq->policy;
    int n = seq->n_tokens, dropped = 0, nb = (int)arrlen(seq->table);
    if (!pol->policy || n == 0) return 0;
    KVBlockSet set = {.table = seq->table, .score = seq->score, .n_blocks = nb, .block = p->block, .n_tokens = n};
    int victim;
    while ((victim = pol->policy->block_victim(&set, &pol->spec, &pol->rng)) >= 0) {
        // never the block being written, never a dropped one
        CHECK(victim < (n - 1) / p->block && kv_block_held(&set, victim));
        drop_block(p, seq, victim);
        dropped++;
    }
    return dropped;
}

// ---- reporting -------------------------------------------------------------------------------------------

// What the stb_ds map holds: its entries (one hidden default entry before them) and its bucket index.
static size_t map_bytes(KVPoolMapEntry *map) {
    if (!map) return 0;
    KVPoolMapEntry *a = map - 1; // stb_ds's array starts at the default entry
    const stbds_hash_index *t = stbds_header(a)->hash_table;
    size_t n = sizeof(stbds_array_header) + arrcap(a) * sizeof(KVPoolMapEntry);
    return n + (t ? sizeof(*t) + (t->slot_count >> STBDS_BUCKET_SHIFT) * sizeof(stbds_hash_bucket) : 0);
}

void kv_pool_stats(const KVPool *p, KVPagedStats *st) {
    memset(st, 0, sizeof(*st));
    st->blocks_total = p->n_blocks;
    for (int b = 0; b < p->n_blocks; b++) {
        const KVBlock *x = &p->blocks[b];
        st->blocks_used += x->state == KV_BLOCK_USED;
        st->blocks_cached += x->state == KV_BLOCK_CACHED;
        st->blocks_free += x->state == KV_BLOCK_FREE;
        if (x->state == KV_BLOCK_USED) st->tokens_held += x->n;
    }
    st->slots_allocated = (int64_t)st->blocks_used * p->block;
    st->fragmentation = st->slots_allocated ? (double)(st->slots_allocated - st->tokens_held) / st->slots_allocated : 0;
    st->utilisation = (double)st->blocks_used / p->n_blocks;
    st->requests = p->requests, st->query_blocks = p->query_blocks, st->hit_blocks = p->hit_blocks;
    st->hit_rate = p->query_blocks ? (double)p->hit_blocks / p->query_blocks : 0;
    st->prefill_saved = p->prefill_saved, st->evictions = p->evictions, st->cow = p->cow;
    size_t block_bytes = (size_t)p->n_layer * p->n_kv_head * p->block * p->row_bytes;
    st->bytes_used = 2 * (size_t)st->blocks_used * block_bytes;
    st->bytes = sizeof(KVPool) + 2 * (size_t)p->n_blocks * block_bytes + 2 * (size_t)p->block * p->head_dim * sizeof(float) +
                (size_t)p->n_blocks * (p->block * sizeof(int) + sizeof(KVBlock)) +
                map_bytes(p->map);
}

#define FAIL(...) return err_set(err, "paged KV: " __VA_ARGS__), -1

int kv_pool_validate(const KVPool *p, char *err) {
    KVPoolMapEntry *map = p->map; // lookups write the map's scratch header
    int on_list = 0;
    for (int li = 0; li <= FREE_LIST; li++) {
        int prev = -1;
        for (int b = p->lists[li].head; b >= 0; prev = b, b = p->blocks[b].next) {
            const KVBlock *x = &p->blocks[b];
            if (++on_list > p->n_blocks) FAIL("list %d has a cycle", li);
            if (x->prev != prev) FAIL("block %d: prev link %d, expected %d", b, x->prev, prev);
            if (li == FREE_LIST && (x->state != KV_BLOCK_FREE || x->ref || x->registered))
                FAIL("block %d on the free list is not free", b);
            if (li < FREE_LIST && (x->state != KV_BLOCK_CACHED || x->ref || !x->registered || x->priority != li))
                FAIL("block %d on cached list %d is not a cached block of that priority", b, li);
        }
        if (p->lists[li].tail != prev) FAIL("list %d: tail %d, expected %d", li, p->lists[li].tail, prev);
    }
    int registered = 0;
    for (int b = 0; b < p->n_blocks; b++) {
        const KVBlock *x = &p->blocks[b];
        if (x->state == KV_BLOCK_USED && x->ref < 1) FAIL("used block %d has refcount %d", b, x->ref);
        if (x->state != KV_BLOCK_USED) on_list--;
        if (x->n < 0 || x->n > p->block) FAIL("block %d holds %d of %d slots", b, x->n, p->block);
        if (x->registered) {
            registered++;
            if (!x->hashed || x->n != p->block) FAIL("registered block %d is not full and hashed", b);
            if (hmgeti(map, map_key(x->hash)) < 0 || hmget(map, map_key(x->hash)) != b)
                FAIL("block %d is not in the map", b);
        }
    }
    if (on_list != 0) FAIL("%d blocks are on lists that do not match their state", on_list);
    if (registered != hmlen(p->map)) FAIL("map holds %td entries, %d blocks registered", hmlen(p->map), registered);
    return 0;
}
