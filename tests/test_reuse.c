// Reuse across requests (kv/reuse.h): the store's LSH, cosine and n-gram confirmation, LRU budget and tenant
// scopes; the prefill engine against the decode step; lsh and semshare reuse against full recomputation;
// the workload never letting unrelated prompts hit; one-line errors for bad configs.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "../kv/reuse.h"

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
    cr_assert_eq(kv_reuse_store_init(&s, m, sc, calib, 2000, err), 0, "%s", err);
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
    decode_state_init(&ds, &m.cfg, T + 4);
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
    kv_semshare_map(&m, &ss, a, T, a, T, map);
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
    kv_semshare_map(&m, &ss, a, T, b, T, map);
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
    for (int i = 0; i < 6; i++) expect_one_line(kv_reuse_store_init(&s, &m, &bad[i], NULL, 0, err), err);
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
    c2 = cfg, c2.store.budget_bytes = 100; // smaller than one request
    expect_one_line(kv_eval_reuse(&m, "lsh", tok, 400, &c2, &r, err), err);
    model_free(&m);
}
