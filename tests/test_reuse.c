// Reuse across requests (kv/reuse.h): the store's LSH, cosine and n-gram confirmation, LRU budget and tenant
// scopes; the prefill engine against the decode step; lsh and semshare reuse against full recomputation;
// semshare's deep-layer pruning (off: bit-identical; on: the configured counts, votes by attention, decode
// over the kept rows only); the workload never letting unrelated prompts hit; one-line errors for bad configs.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "../infer/kvreuse.h"

enum { V = 32, T = 40 };

static void tiny_model(Model *m, int n_layer, int n_kv_head) {
    ModelConfig cfg = {.vocab_size = V, .n_layer = n_layer, .n_head = 4, .n_kv_head = n_kv_head, .n_embd = 32,
                       .n_hidden = 48, .block_size = 64, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    model_init(m, &cfg, &ops_cpu);
    model_init_weights(m, 42);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] *= 3.0f; // sharper attention, larger logits
}

static void random_tokens(int *t, int n, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    for (int i = 0; i < n; i++) t[i] = (int)rng_below(&rng, V);
}

static KVReuseStore *new_store(const Model *m, KVReuseStoreConfig *sc) {
    int calib[2000];
    random_tokens(calib, 2000, 99);
    KVReuseStore *s;
    char err[ERR_LEN];
    cr_assert_eq(decode_reuse_store_init(&s, m, sc, calib, 2000, err), 0, "%s", err);
    return s;
}

static float max_abs_diff(const float *a, const float *b, int n, float *max_abs) {
    float d = 0.0f;
    for (int i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i])), *max_abs = fmaxf(*max_abs, fabsf(b[i]));
    return d;
}

static void free_all(Model *m, KVReuseStore *s, KVReuseWork *w, KVReuseWork *f) {
    kv_reuse_work_free(w);
    if (f) kv_reuse_work_free(f);
    kv_reuse_store_free(s);
    model_free(m);
}

static void store_prompt(const Model *m, KVReuseStore *s, KVReuseWork *w, uint64_t scope, const int *tok, int n) {
    char err[ERR_LEN];
    kv_reuse_prefill_full(m, w, tok, n, NULL);
    cr_assert_eq(kv_reuse_insert(s, scope, tok, n, w->k, w->v, w->cap, err), 0, "%s", err);
}

Test(reuse, signature_deterministic_and_identical_prompts_collide) {
    Model m;
    tiny_model(&m, 2, 2);
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    KVReuseStore *s1 = new_store(&m, &sc), *s2 = new_store(&m, &sc);
    int a[T], b[T];
    random_tokens(a, T, 1);
    memcpy(b, a, sizeof(a));
    float ma[32], mb[32];
    kv_reuse_embed(s1, a, T, 1, ma);
    kv_reuse_embed(s2, b, T, 1, mb);
    uint64_t sig = kv_reuse_signature(s1, ma);
    cr_assert_eq(sig, kv_reuse_signature(s2, mb), "same seed, same prompt: same signature");
    cr_assert_eq(sig >> sc.planes, 0, "only %d bits", sc.planes);
    cr_assert_float_eq(kv_reuse_cosine(ma, mb, 32), 1.0, 1e-9);
    KVReuseWork w;
    kv_reuse_work_init(&w, &m, T);
    store_prompt(&m, s1, &w, 0, a, T);
    float sim;
    cr_assert_not_null(kv_reuse_lookup(s1, 0, b, T, &sim), "an identical prompt hits");
    cr_assert_float_eq(sim, 1.0f, 1e-6f);
    kv_reuse_work_free(&w);
    kv_reuse_store_free(s1);
    kv_reuse_store_free(s2);
    model_free(&m);
}

// One hyperplane: two buckets, so most prompts collide; the exact cosine must still turn a dissimilar one
// away, and a shuffle of the stored prompt (same mean embedding, cosine 1) passes the cosine but not the
// 4-gram overlap unless that check is off (Sim-LLM's rule).
Test(reuse, cosine_and_overlap_reject_bucket_collisions) {
    Model m;
    tiny_model(&m, 2, 2);
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    sc.planes = 1;
    KVReuseStore *s = new_store(&m, &sc);
    KVReuseWork w;
    kv_reuse_work_init(&w, &m, T);
    int a[T], b[T];
    random_tokens(a, T, 2);
    store_prompt(&m, s, &w, 0, a, T);
    float ma[32], mb[32];
    kv_reuse_embed(s, a, T, 1, ma);
    int found = 0;
    for (uint64_t seed = 100; seed < 200 && !found; seed++) {
        random_tokens(b, T, seed);
        kv_reuse_embed(s, b, T, 1, mb);
        found = kv_reuse_signature(s, mb) == kv_reuse_signature(s, ma) && kv_reuse_cosine(ma, mb, 32) < 0.8;
    }
    cr_assert(found, "no bucket collision found");
    float sim;
    cr_assert_null(kv_reuse_lookup(s, 0, b, T, &sim));
    cr_assert_lt(sim, 0.8f);
    KVReuseStats st;
    kv_reuse_stats(s, &st);
    cr_assert_eq(st.rejected, 1);
    cr_assert_eq(st.misses, 1);
    Rng rng; // shuffle a
    rng_init(&rng, 3);
    memcpy(b, a, sizeof(a));
    for (int i = T - 1; i > 0; i--) {
        int j = (int)rng_below(&rng, (uint64_t)i + 1), t = b[i];
        b[i] = b[j], b[j] = t;
    }
    cr_assert_lt(kv_reuse_overlap(a, T, b, T), 0.5);
    cr_assert_null(kv_reuse_lookup(s, 0, b, T, &sim));
    cr_assert_float_eq(sim, 1.0f, 1e-5f);
    kv_reuse_stats(s, &st);
    cr_assert_eq(st.rejected_overlap, 1);
    kv_reuse_store_free(s);
    sc.min_overlap = 0.0f;
    s = new_store(&m, &sc);
    store_prompt(&m, s, &w, 0, a, T);
    cr_assert_not_null(kv_reuse_lookup(s, 0, b, T, NULL), "cosine-only: the shuffle hits");
    free_all(&m, s, &w, NULL);
}

Test(reuse, lru_eviction_under_byte_budget) {
    Model m;
    tiny_model(&m, 2, 2);
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    KVReuseStore *s = new_store(&m, &sc);
    KVReuseWork w;
    kv_reuse_work_init(&w, &m, T);
    int p[3][T];
    for (int i = 0; i < 3; i++) random_tokens(p[i], T, 10 + i);
    store_prompt(&m, s, &w, 0, p[0], T);
    KVReuseStats st;
    kv_reuse_stats(s, &st);
    size_t one = st.bytes; // every entry here has the same size
    kv_reuse_store_free(s);
    sc.budget_bytes = 2 * one + one / 2;
    s = new_store(&m, &sc);
    store_prompt(&m, s, &w, 0, p[0], T);
    store_prompt(&m, s, &w, 0, p[1], T);
    cr_assert_not_null(kv_reuse_lookup(s, 0, p[0], T, NULL)); // p[0] is now the most recent
    store_prompt(&m, s, &w, 0, p[2], T);                         // evicts p[1]
    kv_reuse_stats(s, &st);
    cr_assert_eq(st.evictions, 1);
    cr_assert_eq(st.entries, 2);
    cr_assert_leq(st.bytes, sc.budget_bytes);
    cr_assert_null(kv_reuse_lookup(s, 0, p[1], T, NULL));
    cr_assert_not_null(kv_reuse_lookup(s, 0, p[0], T, NULL));
    cr_assert_not_null(kv_reuse_lookup(s, 0, p[2], T, NULL));
    kv_reuse_store_free(s);
    sc.budget_bytes = one - 1; // one entry alone is too big: a clear error
    s = new_store(&m, &sc);
    char err[ERR_LEN] = "";
    kv_reuse_prefill_full(&m, &w, p[0], T, NULL);
    cr_assert_eq(kv_reuse_insert(s, 0, p[0], T, w.k, w.v, w.cap, err), -1);
    cr_assert(strstr(err, "budget") && !strchr(err, '\n'), "%s", err);
    free_all(&m, s, &w, NULL);
}

Test(reuse, tenant_scopes_never_see_each_other) {
    Model m;
    tiny_model(&m, 2, 2);
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    KVReuseStore *s = new_store(&m, &sc);
    KVReuseWork w;
    kv_reuse_work_init(&w, &m, T);
    int a[T];
    random_tokens(a, T, 4);
    store_prompt(&m, s, &w, 1, a, T);
    cr_assert_null(kv_reuse_lookup(s, 2, a, T, NULL), "scope 2 must not see scope 1's request");
    const KVReuseEntry *e = kv_reuse_lookup(s, 1, a, T, NULL);
    cr_assert(e && e->scope == 1);
    store_prompt(&m, s, &w, 2, a, T);
    e = kv_reuse_lookup(s, 2, a, T, NULL);
    cr_assert(e && e->scope == 2);
    KVReuseStats st;
    kv_reuse_stats(s, &st);
    cr_assert_eq(st.entries, 2);
    cr_assert_eq(st.hits, 2);
    cr_assert_eq(st.misses, 1);
    free_all(&m, s, &w, NULL);
}

// The batched engine with every token active equals the decode step through a full cache, token by token.
Test(reuse, engine_full_prefill_matches_decode_step) {
    Model m;
    tiny_model(&m, 3, 2);
    int a[T];
    random_tokens(a, T, 5);
    KVShape shape = {3, 4, 2, 8, T + 4, 10000.0f, 0};
    KVCache *kv;
    char err[ERR_LEN];
    cr_assert_eq(kv_full_init(&kv, &shape, err), 0, "%s", err);
    DecodeState ds;
    decode_state_init(&ds, &m.cfg, 1, T + 4);
    for (int t = 0; t < T; t++) cr_assert_eq(model_decode_step(&m, &ds, kv, a[t], t), 0);
    KVReuseWork w;
    kv_reuse_work_init(&w, &m, T + 4);
    kv_reuse_prefill_full(&m, &w, a, T, NULL);
    float mx = 0.0f;
    for (int g = 0; g < 4; g++) { // and the steps after the prompt through the work cache
        if (g > 0) {
            cr_assert_eq(model_decode_step(&m, &ds, kv, a[g], T + g - 1), 0);
            cr_assert_eq(kv_reuse_decode(&m, &w, a[g]), 0);
        }
        float d = max_abs_diff(w.ds.logits, ds.logits, V, &mx);
        cr_assert_leq(d, 1e-5f * fmaxf(mx, 1.0f), "step %d: |diff| %g (max |logit| %g)", g, d, mx);
    }
    cr_assert_gt(mx, 1.0f);
    kv_reuse_work_free(&w);
    decode_state_free(&ds);
    kv_cache_free(kv);
    model_free(&m);
}

// An identical prompt through lsh reuse computes only its last token, and gets the recomputation's logits
// (within float rounding of the different batch shapes: 1e-5 of the largest logit).
Test(reuse, lsh_identical_prompt_matches_recompute) {
    Model m;
    tiny_model(&m, 3, 2);
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    KVReuseStore *s = new_store(&m, &sc);
    KVReuseWork w, f;
    kv_reuse_work_init(&w, &m, T + 4);
    kv_reuse_work_init(&f, &m, T + 4);
    int a[T];
    random_tokens(a, T, 6);
    store_prompt(&m, s, &w, 0, a, T);
    kv_reuse_prefill_full(&m, &f, a, T, NULL);
    const KVReuseEntry *e = kv_reuse_lookup(s, 0, a, T, NULL);
    cr_assert_not_null(e);
    KVReuseCost cost = {0};
    kv_reuse_prefill_lsh(&m, &w, e, a, T, 1, &cost);
    cr_assert_eq(cost.layer_tokens, 3, "only the last token runs, in each of 3 layers");
    cr_assert_eq(cost.layer_tokens_full, 3 * T);
    float mx = 0.0f;
    for (int g = 0; g < 4; g++) {
        if (g > 0) {
            cr_assert_eq(kv_reuse_decode(&m, &w, a[g]), 0);
            cr_assert_eq(kv_reuse_decode(&m, &f, a[g]), 0);
        }
        float d = max_abs_diff(w.ds.logits, f.ds.logits, V, &mx);
        cr_assert_leq(d, 1e-5f * fmaxf(mx, 1.0f), "step %d: |diff| %g", g, d);
    }
    free_all(&m, s, &w, &f);
}

// semshare on an identical prompt: every token maps to itself, and the result is the recomputation's.
Test(reuse, semshare_identical_maps_to_self) {
    Model m;
    tiny_model(&m, 3, 2);
    KVSemShareConfig ss;
    kv_semshare_config_default(&ss);
    int a[T], map[T];
    random_tokens(a, T, 7);
    a[20] = a[10], a[21] = a[11], a[22] = a[12]; // a repeated trigram: position must break the tie
    decode_semshare_map(&m, &ss, a, T, a, T, map);
    for (int i = 0; i < T; i++) cr_assert_eq(map[i], i, "token %d mapped to %d", i, map[i]);
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    KVReuseStore *s = new_store(&m, &sc);
    KVReuseWork w, f;
    kv_reuse_work_init(&w, &m, T);
    kv_reuse_work_init(&f, &m, T);
    store_prompt(&m, s, &w, 0, a, T);
    kv_reuse_prefill_full(&m, &f, a, T, NULL);
    const KVReuseEntry *e = kv_reuse_lookup(s, 0, a, T, NULL);
    cr_assert_not_null(e);
    KVReuseCost cost = {0};
    kv_reuse_prefill_semshare(&m, &w, e, map, &ss, a, T, &cost);
    cr_assert_lt(cost.layer_tokens, cost.layer_tokens_full);
    cr_assert_lt(cost.flops, cost.flops_full);
    float mx = 0.0f, d = max_abs_diff(w.ds.logits, f.ds.logits, V, &mx);
    cr_assert_leq(d, 1e-5f * fmaxf(mx, 1.0f), "|diff| %g", d);
    free_all(&m, s, &w, &f);
}

// Rearranged keys must be re-rotated to their new positions. With the attention output of layers 0 and 1
// zeroed, layer 2's keys and values (before RoPE) depend only on the token, so for a reordered prompt whose
// tokens map to tokens of the same id, layer 2's reused rows (every token but the last: layer 1 keeps only
// it, and a token reaches layer 2 only through layer 1) must equal the recomputation's; keys left at their
// old positions would not. (Layer 1's rows are all recomputed: every token ran layer 0 and projects its
// K/V there to measure its deviation.)
Test(reuse, semshare_rerotates_keys_to_new_positions) {
    Model m;
    tiny_model(&m, 3, 2);
    memset(m.params.wo, 0, (size_t)2 * 32 * 32 * sizeof(float)); // layers 0 and 1: attention output projection
    KVSemShareConfig ss;
    kv_semshare_config_default(&ss);
    ss.window = 0; // content = the token's own embedding: the best match has the same id
    ss.recompute = 0.0f;
    int a[T], b[T], map[T];
    random_tokens(a, T, 8);
    memcpy(b, a + T / 2, (T / 2) * sizeof(int));
    memcpy(b + T / 2, a, (T / 2) * sizeof(int));
    decode_semshare_map(&m, &ss, a, T, b, T, map);
    int moved = 0;
    for (int i = 0; i < T; i++) {
        cr_assert_eq(a[map[i]], b[i]);
        moved += map[i] != i;
    }
    cr_assert_gt(moved, T / 2);
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    KVReuseStore *s = new_store(&m, &sc);
    KVReuseWork w, f;
    kv_reuse_work_init(&w, &m, T);
    kv_reuse_work_init(&f, &m, T);
    store_prompt(&m, s, &w, 0, a, T);
    const KVReuseEntry *e = kv_reuse_lookup(s, 0, b, T, NULL);
    cr_assert_not_null(e, "reordered halves: same mean embedding, 4-grams all but the seams");
    kv_reuse_prefill_full(&m, &f, b, T, NULL);
    KVReuseCost cost = {0};
    kv_reuse_prefill_semshare(&m, &w, e, map, &ss, b, T, &cost);
    cr_assert_eq(cost.layer_tokens, T + 2, "layer 0 in full, layers 1 and 2 only the last token");
    // layer 2's cache, (NKV, cap, HD) after two layers': every row equals what recomputation put there
    size_t lane = (size_t)2 * T * 8;
    float mk = 0.0f, dk = max_abs_diff(w.k + 2 * lane, f.k + 2 * lane, (int)lane, &mk);
    float mv = 0.0f, dv = max_abs_diff(w.v + 2 * lane, f.v + 2 * lane, (int)lane, &mv);
    cr_assert_leq(dk, 1e-5f * mk, "layer 2 keys: |diff| %g (max |k| %g)", dk, mk);
    cr_assert_leq(dv, 1e-5f * mv, "layer 2 values: |diff| %g (max |v| %g)", dv, mv);
    float mx = 0.0f, d = max_abs_diff(w.ds.logits, f.ds.logits, V, &mx);
    cr_assert_leq(d, 1e-5f * fmaxf(mx, 1.0f), "|diff| %g (max |logit| %g)", d, mx);
    free_all(&m, s, &w, &f);
}

// The workload end to end on random text: identical prompts always hit and match, unrelated ones never hit.
Test(reuse, workload_unrelated_never_hit) {
    Model m;
    tiny_model(&m, 2, 4);
    enum { N = 5 * 3 * 32 };
    int tok[N];
    random_tokens(tok, N, 11);
    const char *methods[2] = {"lsh", "semshare"};
    for (int k = 0; k < 2; k++) {
        KVReuseConfig cfg;
        kv_reuse_config_default(&cfg, &m);
        cfg.context = 32, cfg.pairs = 3, cfg.gen = 4, cfg.store.radius = 4; // a wide probe: more candidates
        KVReuseResult r;
        char err[ERR_LEN];
        cr_assert_eq(kv_eval_reuse(&m, methods[k], tok, N, &cfg, &r, err), 0, "%s", err);
        cr_assert_eq(r.cls[KV_REUSE_UNRELATED].hits, 0, "%s: an unrelated prompt hit", methods[k]);
        cr_assert_eq(r.cls[KV_REUSE_IDENTICAL].hits, 3);
        cr_assert_lt(r.cls[KV_REUSE_IDENTICAL].kl_gen, 1e-6);
        cr_assert_float_eq(r.cls[KV_REUSE_IDENTICAL].greedy_match, 1.0, 1e-9);
        cr_assert_gt(r.cls[KV_REUSE_IDENTICAL].layer_tokens_skipped, 0.3);
        cr_assert_float_eq(r.cls[KV_REUSE_UNRELATED].layer_tokens_skipped, 0.0, 1e-12);
    }
    model_free(&m);
}

// --- semshare deep-layer pruning ------------------------------------------------------------------------

// A store holding a's full prefill, looked up with b (a permissive store: one bucket, no n-gram check).
static const KVReuseEntry *stored_entry(const Model *m, KVReuseStore **s, const int *a, const int *b) {
    KVReuseStoreConfig sc;
    kv_reuse_store_config_default(&sc);
    sc.planes = 1, sc.radius = 1, sc.threshold = 0.01f, sc.min_overlap = 0.0f;
    *s = new_store(m, &sc);
    KVReuseWork w;
    kv_reuse_work_init(&w, m, T);
    store_prompt(m, *s, &w, 0, a, T);
    kv_reuse_work_free(&w);
    const KVReuseEntry *e = kv_reuse_lookup(*s, 0, b, T, NULL);
    cr_assert_not_null(e);
    return e;
}

// a edited at a few positions, some in the newest tokens, so that several rows of the vote window run deep.
static void edited(const int *a, int *b) {
    memcpy(b, a, T * sizeof(int));
    int at[] = {5, 20, T - 6, T - 3};
    for (int i = 0; i < 4; i++) b[at[i]] = (a[at[i]] + 7) % V;
}

static void prune_config(KVSemShareConfig *ss) {
    kv_semshare_config_default(ss);
    ss->deep_keep = 0.3f, ss->deep_sink = 2, ss->deep_recent = 4, ss->deep_window = 8;
}

static size_t lane_floats(const KVReuseWork *w, int l, int g) { return ((size_t)l * 2 + g) * w->cap * 8; } // NKV 2, HD 8

static int bitwise_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

// Today's decode over a work cache (row = position, attention over rows 0..pos), kept here as the reference
// that pruning off must reproduce bit for bit.
static int attend_unpruned(void *ctx, const Model *m, DecodeState *s, int l, int pos) {
    KVReuseWork *w = ctx;
    int NKV = m->cfg.n_kv_head, HD = model_head_dim(&m->cfg);
    m->ops->rope_forward(s->k, 1, 1, NKV, HD, pos, m->cfg.rope_theta);
    for (int g = 0; g < NKV; g++) {
        memcpy(w->k + lane_floats(w, l, g) + (size_t)pos * HD, s->k + g * HD, HD * sizeof(float));
        memcpy(w->v + lane_floats(w, l, g) + (size_t)pos * HD, s->v + g * HD, HD * sizeof(float));
    }
    m->ops->rope_forward(s->q, 1, 1, m->cfg.n_head, HD, pos, m->cfg.rope_theta);
    m->ops->attention_decode(s->atty, s->att, s->q, w->k + lane_floats(w, l, 0), w->v + lane_floats(w, l, 0), pos + 1,
                             (size_t)w->cap * HD, m->cfg.n_head, NKV, HD);
    return 0;
}

// Pruning off (the default) changes nothing: the prefill's logits and cache do not depend on the other deep
// knobs, every layer holds every position at its row, and decode equals today's attention bit for bit.
Test(reuse, semshare_prune_off_is_bit_identical) {
    Model m;
    tiny_model(&m, 3, 2);
    int a[T], b[T], map[T];
    random_tokens(a, T, 21);
    edited(a, b);
    KVReuseStore *s;
    const KVReuseEntry *e = stored_entry(&m, &s, a, b);
    KVSemShareConfig ss, other;
    kv_semshare_config_default(&ss);
    cr_assert_eq(ss.deep_keep, 1.0f, "pruning is off by default");
    other = ss, other.deep_sink = 0, other.deep_recent = 1, other.deep_window = T;
    decode_semshare_map(&m, &ss, a, T, b, T, map);
    KVReuseWork w, t;
    kv_reuse_work_init(&w, &m, T + 4);
    kv_reuse_work_init(&t, &m, T + 4);
    kv_reuse_prefill_semshare(&m, &w, e, map, &ss, b, T, NULL);
    kv_reuse_prefill_semshare(&m, &t, e, map, &other, b, T, NULL);
    size_t all = (size_t)3 * 2 * (T + 4) * 8;
    cr_assert(bitwise_equal(w.ds.logits, t.ds.logits, V) && bitwise_equal(w.k, t.k, all) && bitwise_equal(w.v, t.v, all));
    cr_assert_eq(kv_reuse_work_bytes(&m, &w), (size_t)3 * T * 2 * 16 * sizeof(float));
    for (int l = 0; l < 3; l++) {
        cr_assert_eq(w.rows[l], T);
        for (int i = 0; i < T; i++) cr_assert_eq(w.row_pos[l * w.cap + i], i);
    }
    for (int g = 1; g < 4; g++) { // t decodes through today's attention, w through kv_reuse_decode
        cr_assert_eq(kv_reuse_decode(&m, &w, a[g]), 0);
        cr_assert_eq(model_decode_step_with(&m, &t.ds, a[g], t.n, attend_unpruned, &t), 0);
        t.n++;
        cr_assert(bitwise_equal(w.ds.logits, t.ds.logits, V), "step %d: logits differ", g);
        for (int l = 0; l < 3; l++) cr_assert_eq(w.rows[l], w.n);
    }
    cr_assert(bitwise_equal(w.k, t.k, all) && bitwise_equal(w.v, t.v, all));
    free_all(&m, s, &w, &t);
}

// The schedule: exponential decay from every token at layer 0 to deep_keep at the last, never below the
// protected sink + recent tokens, non-increasing with depth; all tokens when off.
Test(reuse, semshare_keep_counts_follow_the_schedule) {
    KVSemShareConfig ss;
    kv_semshare_config_default(&ss);
    int keep[6];
    kv_semshare_keep_counts(&ss, 4, 256, keep);
    for (int l = 0; l < 4; l++) cr_assert_eq(keep[l], 256, "off: layer %d keeps %d", l, keep[l]);
    ss.deep_keep = 0.5f; // 256 * 0.5^(l/3): 256, 203.2, 161.3, 128
    kv_semshare_keep_counts(&ss, 4, 256, keep);
    int want[4] = {256, 203, 161, 128};
    for (int l = 0; l < 4; l++) cr_assert_eq(keep[l], want[l], "layer %d keeps %d", l, keep[l]);
    ss.deep_keep = 0.01f; // the floor: 4 sink + 16 recent
    kv_semshare_keep_counts(&ss, 6, 256, keep);
    cr_assert_eq(keep[0], 256);
    for (int l = 1; l < 6; l++) {
        cr_assert_leq(keep[l], keep[l - 1], "layer %d keeps more than layer %d", l, l - 1);
        cr_assert_geq(keep[l], 20);
    }
    cr_assert_eq(keep[5], 20);
    kv_semshare_keep_counts(&ss, 4, 12, keep); // a prompt shorter than the protected tokens keeps them all
    for (int l = 0; l < 4; l++) cr_assert_eq(keep[l], 12);
    kv_semshare_keep_counts(&ss, 1, 100, keep); // one layer: it is the last, deep_keep applies
    cr_assert_eq(keep[0], 20);
}

// Pruning on: each layer holds the scheduled count of prompt rows, in position order, the sink and newest
// among them, each row bit for bit the unpruned cache's row at that position; the bytes held drop to match.
Test(reuse, semshare_prune_keeps_configured_rows) {
    Model m;
    tiny_model(&m, 3, 2);
    int a[T], b[T], map[T], keep[3];
    random_tokens(a, T, 22);
    edited(a, b);
    KVReuseStore *s;
    const KVReuseEntry *e = stored_entry(&m, &s, a, b);
    KVSemShareConfig ss, off;
    prune_config(&ss);
    off = ss, off.deep_keep = 1.0f;
    decode_semshare_map(&m, &ss, a, T, b, T, map);
    kv_semshare_keep_counts(&ss, 3, T, keep);
    cr_assert(keep[0] == T && keep[1] == 22 && keep[2] == 12, "40 * 0.3^(l/2): 40, 21.9, 12");
    KVReuseWork w, f;
    kv_reuse_work_init(&w, &m, T + 4);
    kv_reuse_work_init(&f, &m, T + 4);
    kv_reuse_prefill_semshare(&m, &w, e, map, &ss, b, T, NULL);
    kv_reuse_prefill_semshare(&m, &f, e, map, &off, b, T, NULL);
    cr_assert(bitwise_equal(w.ds.logits, f.ds.logits, V), "pruning runs after the prefill: same first logits");
    size_t held = 0;
    for (int l = 0; l < 3; l++) {
        cr_assert_eq(w.rows[l], keep[l], "layer %d holds %d rows", l, w.rows[l]);
        const int *rp = w.row_pos + l * w.cap;
        for (int i = 1; i < w.rows[l]; i++) cr_assert_lt(rp[i - 1], rp[i], "layer %d: positions ascend", l);
        for (int i = 0; i < 2; i++) cr_assert_eq(rp[i], i, "layer %d keeps sink %d", l, i);
        for (int i = 0; i < 4; i++) cr_assert_eq(rp[w.rows[l] - 4 + i], T - 4 + i, "layer %d keeps the newest", l);
        for (int g = 0; g < 2; g++)
            for (int i = 0; i < w.rows[l]; i++) {
                size_t at = lane_floats(&w, l, g) + (size_t)i * 8, src = lane_floats(&f, l, g) + (size_t)rp[i] * 8;
                cr_assert(bitwise_equal(w.k + at, f.k + src, 8) && bitwise_equal(w.v + at, f.v + src, 8),
                          "layer %d head %d row %d is not position %d's", l, g, i, rp[i]);
            }
        held += (size_t)keep[l];
    }
    cr_assert_eq(kv_reuse_work_bytes(&m, &w), held * 2 * 16 * sizeof(float));
    cr_assert_lt(kv_reuse_work_bytes(&m, &w), kv_reuse_work_bytes(&m, &f));
    free_all(&m, s, &w, &f);
}

// Independent reference: naive attention (double sums, explicit mask) over an unpruned cache (row =
// position), allowed per layer only the prompt positions the pruned work kept, and every decoded position.
typedef struct {
    KVReuseWork *full;
    unsigned char allowed[3][T + 4];
} NaiveMasked;

static int attend_naive_masked(void *ctx, const Model *m, DecodeState *s, int l, int pos) {
    NaiveMasked *nm = ctx;
    KVReuseWork *w = nm->full;
    int NH = m->cfg.n_head, NKV = m->cfg.n_kv_head, HD = model_head_dim(&m->cfg);
    m->ops->rope_forward(s->k, 1, 1, NKV, HD, pos, m->cfg.rope_theta);
    m->ops->rope_forward(s->q, 1, 1, NH, HD, pos, m->cfg.rope_theta);
    for (int g = 0; g < NKV; g++) {
        memcpy(w->k + lane_floats(w, l, g) + (size_t)pos * HD, s->k + g * HD, HD * sizeof(float));
        memcpy(w->v + lane_floats(w, l, g) + (size_t)pos * HD, s->v + g * HD, HD * sizeof(float));
    }
    nm->allowed[l][pos] = 1;
    for (int h = 0; h < NH; h++) {
        int g = h / (NH / NKV);
        const float *K = w->k + lane_floats(w, l, g), *Vv = w->v + lane_floats(w, l, g), *q = s->q + h * HD;
        double score[T + 4], mx = -INFINITY, z = 0.0, out[8] = {0};
        for (int j = 0; j <= pos; j++) {
            if (!nm->allowed[l][j]) continue;
            double d = 0.0;
            for (int i = 0; i < HD; i++) d += (double)q[i] * K[(size_t)j * HD + i];
            score[j] = d / sqrt((double)HD);
            mx = fmax(mx, score[j]);
        }
        for (int j = 0; j <= pos; j++)
            if (nm->allowed[l][j]) z += exp(score[j] - mx);
        for (int j = 0; j <= pos; j++)
            if (nm->allowed[l][j])
                for (int i = 0; i < HD; i++) out[i] += exp(score[j] - mx) / z * Vv[(size_t)j * HD + i];
        for (int i = 0; i < HD; i++) s->atty[h * HD + i] = (float)out[i];
    }
    return 0;
}

// Decode never reads a pruned row: with every row past what each layer holds set to NaN, the logits stay
// finite and equal the naive masked reference's; and the mask matters (unpruned decode differs).
Test(reuse, semshare_prune_decode_reads_only_kept_rows) {
    Model m;
    tiny_model(&m, 3, 2);
    int a[T], b[T], map[T];
    random_tokens(a, T, 23);
    edited(a, b);
    KVReuseStore *s;
    const KVReuseEntry *e = stored_entry(&m, &s, a, b);
    KVSemShareConfig ss, off;
    prune_config(&ss);
    off = ss, off.deep_keep = 1.0f;
    decode_semshare_map(&m, &ss, a, T, b, T, map);
    int keep[3];
    kv_semshare_keep_counts(&ss, 3, T, keep);
    KVReuseWork w, f, u;
    kv_reuse_work_init(&w, &m, T + 4);
    kv_reuse_work_init(&f, &m, T + 4);
    kv_reuse_work_init(&u, &m, T + 4);
    kv_reuse_prefill_semshare(&m, &w, e, map, &ss, b, T, NULL);
    kv_reuse_prefill_semshare(&m, &f, e, map, &off, b, T, NULL);
    kv_reuse_prefill_semshare(&m, &u, e, map, &off, b, T, NULL);
    NaiveMasked nm = {.full = &f};
    for (int l = 0; l < 3; l++) {
        for (int i = 0; i < w.rows[l]; i++) nm.allowed[l][w.row_pos[l * w.cap + i]] = 1;
        for (int g = 0; g < 2; g++)
            for (size_t i = (size_t)w.rows[l] * 8; i < (size_t)w.cap * 8; i++)
                w.k[lane_floats(&w, l, g) + i] = w.v[lane_floats(&w, l, g) + i] = NAN;
    }
    DecodeState ds;
    decode_state_init(&ds, &m.cfg, 1, T + 4);
    float changed = 0.0f;
    for (int g = 1; g < 4; g++) {
        cr_assert_eq(kv_reuse_decode(&m, &w, a[g]), 0);
        cr_assert_eq(kv_reuse_decode(&m, &u, a[g]), 0);
        cr_assert_eq(model_decode_step_with(&m, &ds, a[g], T + g - 1, attend_naive_masked, &nm), 0);
        for (int i = 0; i < V; i++) cr_assert(isfinite(w.ds.logits[i]), "step %d: logit %d is %g", g, i, w.ds.logits[i]);
        float mx = 0.0f, d = max_abs_diff(w.ds.logits, ds.logits, V, &mx), mu = 0.0f;
        cr_assert_leq(d, 1e-5f * fmaxf(mx, 1.0f), "step %d: |diff| %g vs the naive masked reference", g, d);
        changed = fmaxf(changed, max_abs_diff(w.ds.logits, u.ds.logits, V, &mu));
        for (int l = 0; l < 3; l++) cr_assert_eq(w.rows[l], keep[l] + g, "decoded rows append to the kept ones");
    }
    cr_assert_gt(changed, 1e-3f, "pruning did not change decode: the test would not see a wrong mask");
    decode_state_free(&ds);
    kv_reuse_work_free(&u);
    free_all(&m, s, &w, &f);
}

// Which tokens: with one voter (the last token; an identical prompt, so its state is the recomputation's),
// every kept unprotected position drew at least as much of its attention (mean over heads, at that layer)
// as every pruned one. The reference attention comes from the decode step over a full prefill.
typedef struct {
    KVReuseWork *w;
    float votes[3][T];
} Capture;

static int attend_capture(void *ctx, const Model *m, DecodeState *s, int l, int pos) {
    Capture *c = ctx;
    attend_unpruned(c->w, m, s, l, pos);
    int NH = m->cfg.n_head;
    for (int j = 0; j <= pos; j++) {
        c->votes[l][j] = 0.0f;
        for (int h = 0; h < NH; h++) c->votes[l][j] += s->att[h * (pos + 1) + j] / NH;
    }
    return 0;
}

Test(reuse, semshare_prune_keeps_the_most_attended) {
    Model m;
    tiny_model(&m, 3, 2);
    int a[T], map[T], keep[3];
    random_tokens(a, T, 24);
    KVReuseStore *s;
    const KVReuseEntry *e = stored_entry(&m, &s, a, a);
    KVSemShareConfig ss;
    prune_config(&ss);
    ss.deep_window = 1;
    decode_semshare_map(&m, &ss, a, T, a, T, map);
    kv_semshare_keep_counts(&ss, 3, T, keep);
    KVReuseWork w, f; // cap > T: a vote read with the wrong row stride would show
    kv_reuse_work_init(&w, &m, T + 4);
    kv_reuse_work_init(&f, &m, T + 4);
    kv_reuse_prefill_semshare(&m, &w, e, map, &ss, a, T, NULL);
    kv_reuse_prefill_full(&m, &f, a, T - 1, NULL);
    Capture cap = {.w = &f};
    cr_assert_eq(model_decode_step_with(&m, &f.ds, a[T - 1], T - 1, attend_capture, &cap), 0);
    for (int l = 1; l < 3; l++) {
        unsigned char kept[T] = {0};
        for (int i = 0; i < w.rows[l]; i++) kept[w.row_pos[l * w.cap + i]] = 1;
        float min_kept = INFINITY, max_pruned = -INFINITY;
        for (int j = 2; j < T - 4; j++) { // the unprotected positions
            if (kept[j]) min_kept = fminf(min_kept, cap.votes[l][j]);
            else max_pruned = fmaxf(max_pruned, cap.votes[l][j]);
        }
        cr_assert_eq(w.rows[l], keep[l]);
        cr_assert_geq(min_kept, max_pruned - 1e-5f, "layer %d: kept a token with attention %g, pruned one with %g", l,
                      min_kept, max_pruned);
    }
    free_all(&m, s, &w, &f);
}

// The workload reports what pruning holds: bytes after the prefill and per-layer kept tokens for the hits;
// misses (full prefill) keep everything; the first token is unaffected (pruning follows the prefill).
Test(reuse, workload_reports_pruned_bytes) {
    Model m;
    tiny_model(&m, 3, 2);
    enum { N = 5 * 3 * 32 };
    int tok[N], keep[3];
    random_tokens(tok, N, 25);
    KVReuseConfig cfg;
    kv_reuse_config_default(&cfg, &m);
    cfg.context = 32, cfg.pairs = 3, cfg.gen = 4, cfg.store.radius = 4;
    prune_config(&cfg.semshare);
    kv_semshare_keep_counts(&cfg.semshare, 3, 32, keep);
    KVReuseResult r;
    char err[ERR_LEN];
    cr_assert_eq(kv_eval_reuse(&m, "semshare", tok, N, &cfg, &r, err), 0, "%s", err);
    cr_assert_eq(r.n_layer, 3);
    const KVReuseClassResult *id = &r.cls[KV_REUSE_IDENTICAL], *un = &r.cls[KV_REUSE_UNRELATED];
    cr_assert_eq(id->hits, 3);
    double full = 32.0 * 3 * 2 * 16 * sizeof(float);
    cr_assert_float_eq(id->kv_bytes_full, full, 1e-6);
    cr_assert_float_eq(id->kv_bytes, (keep[0] + keep[1] + keep[2]) * 2.0 * 16 * sizeof(float), 1e-6);
    cr_assert_lt(id->kv_bytes, 0.8 * full);
    for (int l = 0; l < 3; l++) {
        cr_assert_float_eq(id->kept[l], keep[l], 1e-9);
        cr_assert_float_eq(un->kept[l], 32.0, 1e-9);
    }
    cr_assert_eq(un->hits, 0);
    cr_assert_float_eq(un->kv_bytes, full, 1e-6);
    cr_assert_lt(id->kl_last, 1e-6);
    model_free(&m);
}

static void expect_one_line(int rc, const char *err) {
    cr_assert_eq(rc, -1);
    cr_assert(err[0] && !strchr(err, '\n'), "error '%s' is not one line", err);
}

Test(reuse, bad_configs_rejected_with_one_line) {
    Model m;
    tiny_model(&m, 2, 2);
    KVReuseStore *s;
    char err[ERR_LEN];
    KVReuseStoreConfig bad[6];
    for (int i = 0; i < 6; i++) kv_reuse_store_config_default(&bad[i]);
    bad[0].planes = 0, bad[1].planes = 65, bad[2].threshold = 1.5f, bad[3].threshold = NAN, bad[4].radius = 17;
    bad[5].budget_bytes = 0;
    for (int i = 0; i < 6; i++) expect_one_line(decode_reuse_store_init(&s, &m, &bad[i], NULL, 0, err), err);
    int tok[400];
    random_tokens(tok, 400, 12);
    KVReuseConfig cfg, c2;
    KVReuseResult r;
    kv_reuse_config_default(&cfg, &m);
    cfg.context = 16, cfg.pairs = 2, cfg.gen = 2;
    expect_one_line(kv_eval_reuse(&m, "prefix", tok, 400, &cfg, &r, err), err);
    cr_assert(strstr(err, "lsh, semshare"), "%s", err);
    c2 = cfg, c2.context = 1;
    expect_one_line(kv_eval_reuse(&m, "lsh", tok, 400, &c2, &r, err), err);
    c2 = cfg, c2.pairs = 20; // 100 windows of 16 do not fit in 400 tokens
    expect_one_line(kv_eval_reuse(&m, "lsh", tok, 400, &c2, &r, err), err);
    c2 = cfg, c2.store.threshold = 0.0f;
    expect_one_line(kv_eval_reuse(&m, "lsh", tok, 400, &c2, &r, err), err);
    c2 = cfg, c2.semshare.recompute = 2.0f;
    expect_one_line(kv_eval_reuse(&m, "semshare", tok, 400, &c2, &r, err), err);
    KVSemShareConfig bad_ss[6];
    for (int i = 0; i < 6; i++) kv_semshare_config_default(&bad_ss[i]);
    bad_ss[0].deep_keep = 0.0f, bad_ss[1].deep_keep = 1.5f, bad_ss[2].deep_keep = NAN, bad_ss[3].deep_sink = -1;
    bad_ss[4].deep_recent = 0, bad_ss[5].deep_window = 0;
    for (int i = 0; i < 6; i++) {
        expect_one_line(kv_semshare_config_validate(&bad_ss[i], err), err);
        c2 = cfg, c2.semshare = bad_ss[i];
        expect_one_line(kv_eval_reuse(&m, "semshare", tok, 400, &c2, &r, err), err);
    }
    c2 = cfg, c2.store.budget_bytes = 100; // smaller than one request
    expect_one_line(kv_eval_reuse(&m, "lsh", tok, 400, &c2, &r, err), err);
    model_free(&m);
}
