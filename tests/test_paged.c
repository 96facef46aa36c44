// The paged KV pool: attention through a block table equals contiguous attention; prefix sharing by chained
// hash (only an exact prefix matches, a hit is confirmed by tokens); copy-on-write; cached blocks reused
// until LRU eviction, lowest priority first; exhaustion is an error, not a crash; the numbers it reports.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>
#include <stb/stb_ds.h>
#include <xxhash.h>

#include "../decode/step.h"
#include "../kv/paged.h"
#include "../layers/cpu_ops.h"

enum { L = 2, NKV = 2, HD = 4, ROW = NKV * HD };

static KVPool *make_pool(int block, int n_blocks) {
    KVShape shape = {L, 4, NKV, HD, 1024, 10000.0f, 0};
    KVPool *p;
    char err[ERR_LEN];
    cr_assert_eq(kv_pool_init(&p, &shape, block, n_blocks, err), 0, "%s", err);
    return p;
}

static void check_pool(const KVPool *p) {
    char err[ERR_LEN] = "";
    cr_assert_eq(kv_pool_validate(p, err), 0, "%s", err);
}

// The rows a token gets: a function of (layer, pos, token), as a real model's K/V are of the prefix.
static void rows(float *k, float *v, int layer, int pos, int token) {
    for (int i = 0; i < ROW; i++) {
        k[i] = (float)(1000 * layer + pos) + 0.001f * i + 0.1f * (float)(token % 97);
        v[i] = -k[i];
    }
}

// Appends tokens[from..to) to seq for every layer.
static int feed(KVPool *p, KVSeq *s, const int *tokens, int from, int to) {
    float k[ROW], v[ROW];
    char err[ERR_LEN];
    for (int t = from; t < to; t++)
        for (int l = 0; l < L; l++) {
            rows(k, v, l, t, tokens[t]);
            if (kv_paged_append(p, s, l, t, tokens[t], k, v, err) != 0) return -1;
        }
    return 0;
}

// seq's rows read back through its table equal what feed wrote for tokens.
static void check_rows(const KVPool *p, const KVSeq *s, const int *tokens) {
    float k[ROW], v[ROW];
    for (int t = 0; t < s->n_tokens; t++) {
        int b = s->table[t / p->block], slot = t % p->block;
        cr_assert_eq(p->tokens[b * p->block + slot], tokens[t], "token at %d", t);
        for (int l = 0; l < L; l++) {
            rows(k, v, l, t, tokens[t]);
            for (int g = 0; g < NKV; g++) {
                cr_assert(!memcmp(kv_pool_k(p, b, l, g) + slot * HD, k + g * HD, sizeof(float) * HD), "k %d,%d", t, l);
                cr_assert(!memcmp(kv_pool_v(p, b, l, g) + slot * HD, v + g * HD, sizeof(float) * HD), "v %d,%d", t, l);
            }
        }
    }
}

static int begin(KVPool *p, KVSeq *s, const int *tokens, int n, int priority) {
    char err[ERR_LEN];
    int r = kv_paged_begin(p, s, tokens, n, priority, err);
    cr_assert(r >= 0, "%s", err);
    return r;
}

// ---- attention -------------------------------------------------------------------------------------------

Test(paged, attention_equals_contiguous) {
    int shapes[][3] = {{4, 4, 8}, {4, 2, 8}, {8, 1, 16}}; // MHA, GQA, MQA
    int blocks[] = {1, 3, 7, 16}, lens[] = {1, 5, 37, 64};
    Rng rng;
    rng_init(&rng, 7);
    for (int si = 0; si < 3; si++)
        for (int bi = 0; bi < 4; bi++)
            for (int li = 0; li < 4; li++) {
                int NH = shapes[si][0], nkv = shapes[si][1], hd = shapes[si][2], B = blocks[bi], Tc = lens[li];
                KVShape shape = {2, NH, nkv, hd, 1024, 10000.0f, 0};
                KVPool *p;
                char err[ERR_LEN];
                cr_assert_eq(kv_pool_init(&p, &shape, B, 64 / B + 2, err), 0, "%s", err);
                KVSeq s = {0};
                begin(p, &s, NULL, 0, KV_PRIORITY_DEFAULT);
                float *kc = calloc((size_t)2 * nkv * Tc * hd, sizeof(float)), *vc = kc + (size_t)nkv * Tc * hd;
                float k[16 * 16], v[16 * 16], q[8 * 16], out[8 * 16], ref[8 * 16];
                float *att = calloc((size_t)2 * NH * Tc, sizeof(float)), *att_ref = att + (size_t)NH * Tc;
                for (int t = 0; t < Tc; t++)
                    for (int l = 0; l < 2; l++) {
                        for (int i = 0; i < nkv * hd; i++) k[i] = rng_normal(&rng), v[i] = rng_normal(&rng);
                        cr_assert_eq(kv_paged_append(p, &s, l, t, t, k, v, err), 0, "%s", err);
                        if (l == 1) // contiguous head-major copy of layer 1: (nkv, Tc, hd)
                            for (int g = 0; g < nkv; g++) {
                                memcpy(kc + ((size_t)g * Tc + t) * hd, k + g * hd, sizeof(float) * hd);
                                memcpy(vc + ((size_t)g * Tc + t) * hd, v + g * hd, sizeof(float) * hd);
                            }
                    }
                for (int i = 0; i < NH * hd; i++) q[i] = rng_normal(&rng);
                attention_decode_paged(out, att, q, p, &s, 1, NH, nkv, hd);
                attention_decode_cpu(ref, att_ref, q, kc, vc, Tc, (size_t)Tc * hd, NH, nkv, hd);
                for (int i = 0; i < NH * hd; i++)
                    cr_assert(fabsf(out[i] - ref[i]) <= 1e-6f, "out[%d] %g vs %g (NH %d NKV %d B %d Tc %d)", i,
                              out[i], ref[i], NH, nkv, B, Tc);
                for (int i = 0; i < NH * Tc; i++)
                    cr_assert(fabsf(att[i] - att_ref[i]) <= 1e-6f, "att[%d] (B %d Tc %d)", i, B, Tc);
                free(kc), free(att);
                kv_paged_end(p, &s);
                check_pool(p);
                kv_pool_free(p);
            }
}

// ---- prefix sharing ----------------------------------------------------------------------------------------

Test(paged, prefix_shares_exact_blocks_only) {
    KVPool *p = make_pool(4, 16);
    int a[14] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
    KVSeq sa = {0}, sb = {0}, sc = {0}, sd = {0};
    cr_assert_eq(begin(p, &sa, a, 14, 35), 0);
    cr_assert_eq(feed(p, &sa, a, 0, 14), 0);
    // the same 3-block prefix: those blocks are shared
    cr_assert_eq(begin(p, &sb, a, 14, 35), 12);
    cr_assert_eq(sb.n_tokens, 12);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sb.table[i], sa.table[i]);
        cr_assert_eq(p->blocks[sa.table[i]].ref, 2);
    }
    cr_assert_eq(feed(p, &sb, a, 12, 14), 0);
    cr_assert_neq(sb.table[3], sa.table[3]); // the partial block is each sequence's own
    check_rows(p, &sb, a);
    // a prompt of exactly 3 blocks reuses 2: its last token must be computed
    cr_assert_eq(begin(p, &sd, a, 12, 35), 8);
    // a different token in block 2 shares block 1 only; block 3 (equal tokens) has another chained hash
    int c[14];
    memcpy(c, a, sizeof(c));
    c[5] = 99;
    cr_assert_eq(begin(p, &sc, c, 14, 35), 4);
    cr_assert_eq(sc.table[0], sa.table[0]);
    cr_assert_eq(feed(p, &sc, c, 4, 14), 0);
    cr_assert_neq(sc.table[2], sa.table[2]);
    cr_assert(p->blocks[sc.table[2]].hashed && p->blocks[sc.table[2]].registered);
    cr_assert_neq(p->blocks[sc.table[2]].hash, p->blocks[sa.table[2]].hash);
    check_rows(p, &sc, c);
    // block 0's hash is XXH64 of its tokens with seed 0; block 1's seed is block 0's hash
    uint64_t h0 = XXH64(a, 4 * sizeof(int), 0);
    cr_assert_eq(p->blocks[sa.table[0]].hash, h0);
    cr_assert_eq(p->blocks[sa.table[1]].hash, XXH64(a + 4, 4 * sizeof(int), h0));
    KVPagedStats st;
    kv_pool_stats(p, &st);
    cr_assert(st.requests == 4 && st.query_blocks == 3 + 3 + 2 + 3 && st.hit_blocks == 3 + 2 + 1);
    cr_assert_eq(st.prefill_saved, 24);
    cr_assert_float_eq(st.hit_rate, 6.0 / 11.0, 1e-12);
    check_pool(p);
    kv_paged_end(p, &sa), kv_paged_end(p, &sb), kv_paged_end(p, &sc), kv_paged_end(p, &sd);
    check_pool(p);
    kv_pool_free(p);
}

Test(paged, salt_separates_tenants) {
    KVPool *p = make_pool(4, 8);
    int a[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    KVSeq s1 = {.salt = 1}, s2 = {.salt = 2}, s3 = {.salt = 1};
    begin(p, &s1, a, 9, 35);
    cr_assert_eq(feed(p, &s1, a, 0, 9), 0);
    cr_assert_eq(begin(p, &s2, a, 9, 35), 0);
    cr_assert_eq(begin(p, &s3, a, 9, 35), 8);
    kv_paged_end(p, &s1), kv_paged_end(p, &s2), kv_paged_end(p, &s3);
    check_pool(p);
    kv_pool_free(p);
}

Test(paged, copy_on_write_keeps_the_other_sequence) {
    KVPool *p = make_pool(4, 8);
    int a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, d[8] = {1, 2, 3, 4, 5, 6, 70, 80};
    KVSeq sa = {0}, sd = {0};
    begin(p, &sa, a, 6, 35);
    cr_assert_eq(feed(p, &sa, a, 0, 6), 0);
    kv_paged_fork(p, &sd, &sa);
    cr_assert(sd.n_tokens == 6 && p->blocks[sa.table[1]].ref == 2 && p->blocks[sa.table[0]].ref == 2);
    int shared = sa.table[1];
    cr_assert_eq(feed(p, &sd, d, 6, 8), 0); // writes into the shared partial block: copied first
    cr_assert_neq(sd.table[1], shared);
    cr_assert_eq(sd.table[0], sa.table[0]);
    cr_assert(p->blocks[shared].ref == 1 && p->blocks[shared].n == 2);
    cr_assert_eq(p->cow, 1);
    check_rows(p, &sa, a);
    check_rows(p, &sd, d);
    cr_assert_eq(feed(p, &sa, a, 6, 8), 0); // now private: written in place
    cr_assert(sa.table[1] == shared && p->cow == 1);
    check_rows(p, &sa, a);
    check_rows(p, &sd, d);
    check_pool(p);
    kv_paged_end(p, &sa), kv_paged_end(p, &sd);
    check_pool(p);
    kv_pool_free(p);
}

// ---- cached blocks, LRU and priority -----------------------------------------------------------------------

Test(paged, cached_blocks_hit_until_evicted) {
    KVPool *p = make_pool(4, 4);
    int a[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, c[12] = {21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
    KVSeq s = {0};
    begin(p, &s, a, 9, 35);
    cr_assert_eq(feed(p, &s, a, 0, 9), 0);
    int b0 = s.table[0], b1 = s.table[1];
    kv_paged_end(p, &s);
    KVPagedStats st;
    kv_pool_stats(p, &st);
    cr_assert(st.blocks_cached == 2 && st.blocks_free == 2 && st.blocks_used == 0);
    check_pool(p);
    // the same prompt after end(): the cached blocks are hit
    cr_assert_eq(begin(p, &s, a, 9, 35), 8);
    cr_assert(s.table[0] == b0 && s.table[1] == b1);
    cr_assert_eq(feed(p, &s, a, 8, 9), 0);
    check_rows(p, &s, a);
    kv_paged_end(p, &s);
    kv_pool_stats(p, &st);
    cr_assert(st.prefill_saved == 8 && st.hit_blocks == 2 && st.evictions == 0);
    // 3 blocks for another prompt: 2 free ones, then one eviction: the tail of the request goes first
    begin(p, &s, c, 12, 35);
    cr_assert_eq(feed(p, &s, c, 0, 12), 0);
    kv_pool_stats(p, &st);
    cr_assert(st.evictions == 1 && p->blocks[b1].state == KV_BLOCK_USED && p->blocks[b0].state == KV_BLOCK_CACHED);
    kv_paged_end(p, &s);
    cr_assert_eq(begin(p, &s, a, 9, 35), 4);
    kv_paged_end(p, &s);
    // c again (8 of its 12 tokens hit) then another request: c's evicted tail, then a's head, go
    cr_assert_eq(begin(p, &s, c, 12, 35), 8);
    cr_assert_eq(feed(p, &s, c, 8, 12), 0);
    int e[4] = {50, 51, 52, 53};
    KVSeq s2 = {0};
    begin(p, &s2, e, 4, 35);
    cr_assert_eq(feed(p, &s2, e, 0, 4), 0);
    kv_paged_end(p, &s), kv_paged_end(p, &s2);
    cr_assert_eq(p->evictions, 3);
    cr_assert_eq(begin(p, &s, a, 9, 35), 0);
    kv_paged_end(p, &s);
    check_pool(p);
    kv_pool_free(p);
}

Test(paged, priority_orders_eviction) {
    KVPool *p = make_pool(2, 4);
    int lo[3] = {1, 2, 3}, hi[3] = {4, 5, 6}, x[6] = {7, 8, 9, 10, 11, 12};
    KVSeq sl = {0}, sh = {0}, sx = {0};
    begin(p, &sl, lo, 3, 10);
    begin(p, &sh, hi, 3, 90);
    cr_assert_eq(feed(p, &sl, lo, 0, 3), 0);
    cr_assert_eq(feed(p, &sh, hi, 0, 3), 0);
    kv_paged_end(p, &sh); // released first: plain LRU would evict it first
    kv_paged_end(p, &sl);
    check_pool(p);
    begin(p, &sx, x, 6, 35);
    cr_assert_eq(feed(p, &sx, x, 0, 6), 0); // 2 free blocks, then 1 eviction: the low-priority block
    kv_paged_end(p, &sx);
    cr_assert_eq(p->evictions, 1);
    cr_assert_eq(begin(p, &sh, hi, 3, 90), 2);
    cr_assert_eq(begin(p, &sl, lo, 3, 10), 0);
    kv_paged_end(p, &sh), kv_paged_end(p, &sl);
    char err[ERR_LEN] = "";
    cr_assert_eq(kv_paged_begin(p, &sl, lo, 3, KV_PRIORITY_MAX + 1, err), -1);
    cr_assert(strstr(err, "priority"), "%s", err);
    check_pool(p);
    kv_pool_free(p);
}

// ---- errors ------------------------------------------------------------------------------------------------

Test(paged, exhaustion_is_an_error_and_leaves_the_pool_consistent) {
    KVPool *p = make_pool(2, 2);
    int a[6] = {1, 2, 3, 4, 5, 6};
    KVSeq s = {0}, f = {0};
    begin(p, &s, a, 6, 35);
    cr_assert_eq(feed(p, &s, a, 0, 4), 0);
    float k[ROW] = {0}, v[ROW] = {0};
    char err[ERR_LEN] = "";
    cr_assert_eq(kv_paged_append(p, &s, 0, 4, a[4], k, v, err), -1);
    cr_assert(strstr(err, "pool exhausted"), "%s", err);
    cr_assert(s.n_tokens == 4 && arrlen(s.table) == 2);
    check_pool(p);
    kv_paged_end(p, &s);
    // a fork that must copy its shared partial block with no block left fails the same way
    cr_assert_eq(begin(p, &s, a, 3, 35), 2); // block [1 2] is still cached
    cr_assert_eq(feed(p, &s, a, 2, 3), 0);   // evicts the cached [3 4]
    kv_paged_fork(p, &f, &s);
    err[0] = 0;
    cr_assert_eq(kv_paged_append(p, &f, 0, 3, a[3], k, v, err), -1);
    cr_assert(strstr(err, "pool exhausted") && f.n_tokens == 3 && p->cow == 0, "%s", err);
    check_pool(p);
    kv_paged_end(p, &f);
    cr_assert_eq(feed(p, &s, a, 3, 4), 0); // the other sequence goes on
    check_rows(p, &s, a);
    kv_paged_end(p, &s);
    check_pool(p);
    kv_pool_free(p);
}

Test(paged, bad_pool_arguments) {
    KVShape shape = {L, 4, NKV, HD, 1024, 10000.0f, 0};
    KVPool *p;
    char err[ERR_LEN];
    cr_assert_eq(kv_pool_init(&p, &shape, 0, 8, err), -1);
    cr_assert(strstr(err, "block size"), "%s", err);
    cr_assert_eq(kv_pool_init(&p, &shape, KV_BLOCK_MAX + 1, 8, err), -1);
    cr_assert_eq(kv_pool_init(&p, &shape, 16, 0, err), -1);
    cr_assert(strstr(err, "at least one block") && p == NULL, "%s", err);
}

static uint64_t hash_constant(const int *tokens, int n, uint64_t seed) { return 42; }

Test(paged, hash_collision_is_confirmed_by_tokens) {
    KVPool *p = make_pool(4, 8);
    p->hash = hash_constant; // every block collides
    int a[5] = {1, 2, 3, 4, 5}, b[5] = {9, 9, 9, 9, 5};
    KVSeq sa = {0}, sb = {0};
    begin(p, &sa, a, 5, 35);
    cr_assert_eq(feed(p, &sa, a, 0, 5), 0);
    cr_assert_eq(begin(p, &sb, b, 5, 35), 0); // the hash matches, the tokens do not
    cr_assert_eq(feed(p, &sb, b, 0, 5), 0);
    cr_assert(p->blocks[sa.table[0]].registered && !p->blocks[sb.table[0]].registered);
    check_rows(p, &sb, b);
    kv_paged_end(p, &sb);
    KVSeq sc = {0};
    cr_assert_eq(begin(p, &sc, a, 5, 35), 4); // the registered owner is still found
    kv_paged_end(p, &sc), kv_paged_end(p, &sa);
    check_pool(p);
    kv_pool_free(p);
}

// ---- reporting ---------------------------------------------------------------------------------------------

Test(paged, fragmentation_and_utilisation) {
    KVPool *p = make_pool(16, 10);
    int t[40];
    for (int i = 0; i < 40; i++) t[i] = i;
    KVSeq s = {0};
    begin(p, &s, t, 40, 35);
    cr_assert_eq(feed(p, &s, t, 0, 40), 0);
    KVPagedStats st;
    kv_pool_stats(p, &st);
    cr_assert(st.blocks_total == 10 && st.blocks_used == 3 && st.blocks_free == 7 && st.blocks_cached == 0);
    cr_assert(st.slots_allocated == 48 && st.tokens_held == 40);
    cr_assert_float_eq(st.fragmentation, 8.0 / 48.0, 1e-12);
    cr_assert_float_eq(st.utilisation, 0.3, 1e-12);
    cr_assert_eq(st.bytes_used, (size_t)3 * 2 * L * NKV * 16 * HD * sizeof(float));
    size_t fixed = sizeof(KVPool) + (size_t)10 * 2 * L * NKV * 16 * HD * sizeof(float) +
                   (size_t)10 * (16 * sizeof(int) + sizeof(KVBlock));
    cr_assert(st.bytes > fixed && st.bytes < fixed + 4096, "map of 2 entries: %zu bytes", st.bytes - fixed);
    kv_paged_end(p, &s);
    kv_pool_stats(p, &st);
    cr_assert(st.blocks_used == 0 && st.blocks_cached == 2 && st.fragmentation == 0.0);
    kv_pool_free(p);
}

// ---- random operations keep every invariant ----------------------------------------------------------------

Test(paged, random_operations_keep_invariants) {
    enum { NS = 4, MAXT = 24 };
    KVPool *p = make_pool(3, 12);
    Rng rng;
    rng_init(&rng, 123);
    KVSeq s[NS] = {{0}};
    int toks[NS][MAXT], live[NS] = {0};
    char err[ERR_LEN];
    for (int step = 0; step < 3000; step++) {
        int i = (int)rng_below(&rng, NS), op = (int)rng_below(&rng, 10);
        if (!live[i]) {
            int n = 1 + (int)rng_below(&rng, 12);
            for (int t = 0; t < MAXT; t++) toks[i][t] = (int)rng_below(&rng, t < 6 ? 2 : 3); // shared prefixes
            int r = kv_paged_begin(p, &s[i], toks[i], n, (int)rng_below(&rng, 101), err);
            cr_assert(r >= 0 && r < n && r % 3 == 0);
            live[i] = 1;
            if (feed(p, &s[i], toks[i], r, n) != 0) kv_paged_end(p, &s[i]), live[i] = 0;
        } else if (op == 0 || s[i].n_tokens == MAXT) {
            kv_paged_end(p, &s[i]), live[i] = 0;
        } else if (op == 1) {
            int j = (i + 1) % NS;
            if (!live[j]) memcpy(toks[j], toks[i], sizeof(toks[i])), kv_paged_fork(p, &s[j], &s[i]), live[j] = 1;
        } else if (feed(p, &s[i], toks[i], s[i].n_tokens, s[i].n_tokens + 1) != 0) {
            kv_paged_end(p, &s[i]), live[i] = 0;
        }
        check_pool(p);
        for (int j = 0; j < NS; j++)
            if (live[j]) check_rows(p, &s[j], toks[j]);
    }
    KVPagedStats st;
    kv_pool_stats(p, &st);
    cr_assert(st.hit_blocks > 0 && st.evictions > 0 && st.cow > 0, "hits %ld evictions %ld cow %ld",
              (long)st.hit_blocks, (long)st.evictions, (long)st.cow);
    for (int j = 0; j < NS; j++) kv_paged_end(p, &s[j]);
    kv_pool_stats(p, &st);
    cr_assert_eq(st.blocks_used, 0);
    kv_pool_free(p);
}
