// build/serve's cross-request reuse, reuse "lsh" and "semshare" (kv/reuse.h says what each approximates):
// the engine's store of earlier prompts, the lookup under a request's own threshold and n-gram overlap, a
// hit's prefill through the KVReuseWork and its move into the request's paged sequence, and the insert of a
// miss's prompt K/V gathered from the pool. All of it runs on the engine thread, which alone touches the
// store, the work and the pool; handlers see counters only (reuse_account_locked, reuse_publish_locked).
//
// Why a hit gets a sequence salt of its own: part of its K/V was computed in the reference's context, so
// exact prefix sharing must never find its blocks. Why only misses are stored: their K/V is computed in full,
// so every stored prompt is exact and approximations never compound (a hit's identical prompt is already
// there). Why a hit's last prompt token goes through the batched decode although the prefill computed it:
// its logits give the first output token, and the decode computes them as a request without reuse would,
// from the K/V now in the pool (an identical prompt then samples exactly what a full prefill samples).
#include <float.h>
#include <string.h>

#include <xxhash.h>

#include "serve.h"

const char *const reuse_method_names[REUSE_METHODS] = {"prefix", "lsh", "semshare", "none"};

int reuse_init(Engine *e, const EngineConfig *cfg, char *err) {
    const Model *m = e->model;
    kv_reuse_store_config_default(&e->store_cfg);
    // Requests bring their own threshold and overlap (reuse_find applies them), so the store's own lookup
    // only has to find the bucket's best candidate: it takes any positive cosine and skips the overlap check.
    e->store_cfg.threshold = FLT_MIN;
    e->store_cfg.min_overlap = 0.0f;
    e->store_cfg.budget_bytes = cfg->reuse_budget;
    const int *calib = cfg->calib;
    size_t n_calib = cfg->n_calib;
    int *vocab = NULL;
    if (!calib || n_calib == 0) { // no calibration text: centre on every symbol once
        vocab = common_calloc((size_t)m->cfg.vocab_size, sizeof(int));
        for (int i = 0; i < m->cfg.vocab_size; i++) vocab[i] = i;
        calib = vocab, n_calib = (size_t)m->cfg.vocab_size;
    }
    int rc = decode_reuse_store_init(&e->store, m, &e->store_cfg, calib, n_calib, err);
    common_free(vocab);
    if (rc != 0) return -1;
    kv_semshare_config_default(&e->semshare);
    e->semshare.deep_keep = 1.0f; // no deep-layer pruning: move_prompt reads work row p as position p
    kv_reuse_work_init(&e->rw, m, e->context);
    e->map = common_calloc((size_t)e->context, sizeof(int));
    e->row_k = common_calloc((size_t)model_kv_dim(&m->cfg), sizeof(float));
    e->row_v = common_calloc((size_t)model_kv_dim(&m->cfg), sizeof(float));
    return 0;
}

void reuse_free(Engine *e) {
    kv_reuse_store_free(e->store);
    e->store = NULL;
    if (e->rw.cap) kv_reuse_work_free(&e->rw);
    common_free(e->map);
    common_free(e->row_k);
    common_free(e->row_v);
    e->map = NULL, e->row_k = e->row_v = NULL;
}

// The stored prompt r reuses: of the candidates of its scope whose LSH signature is within the store's
// radius of its own, the most similar whose centred cosine reaches r->threshold and whose n-gram overlap
// with r's prompt reaches r->min_overlap (kv_reuse_lookup's rule with the request's numbers). The store's
// lookup puts the bucket's most similar candidate at the head of its LRU list (NULL when none has a positive
// cosine, and then no threshold in (0, 1] can pass); from the head the entries' LRU links reach them all.
// (So the lookup refreshes that candidate's LRU place even when the request's rule rejects it.) Sets r's
// similarity and rejected count.
static const KVReuseEntry *reuse_find(Engine *e, Req *r) {
    KVReuseStats before, after;
    kv_reuse_stats(e->store, &before);
    float first;
    const KVReuseEntry *head = kv_reuse_lookup(e->store, r->scope, r->prompt, r->n_prompt, &first);
    if (!head) {
        kv_reuse_stats(e->store, &after);
        r->rejected = (int)(after.rejected - before.rejected);
        r->has_similarity = first > -2.0f, r->similarity = first;
        return NULL;
    }
    int C = e->model->cfg.n_embd;
    float mean[C];
    kv_reuse_embed(e->store, r->prompt, r->n_prompt, 1, mean);
    uint64_t sig = kv_reuse_signature(e->store, mean);
    const KVReuseEntry *best = NULL;
    double best_sim = -2.0, best_rejected = -2.0;
    for (const KVReuseEntry *c = head; c; c = c->next) {
        if (c->scope != r->scope || __builtin_popcountll(c->sig ^ sig) > e->store_cfg.radius) continue;
        double cs = kv_reuse_cosine(mean, c->mean, C);
        if (cs < r->threshold ||
            (r->min_overlap > 0.0f && kv_reuse_overlap(c->tokens, c->n, r->prompt, r->n_prompt) < r->min_overlap)) {
            r->rejected++;
            if (cs > best_rejected) best_rejected = cs;
        } else if (cs > best_sim) {
            best_sim = cs, best = c;
        }
    }
    r->has_similarity = 1; // the head at least was compared
    r->similarity = (float)(best ? best_sim : best_rejected);
    return best;
}

// Moves positions 0..n-2 of the work's K/V (keys rotated to their positions, as the pool keeps them) into
// r's sequence, layer by layer for each position as kv_paged_append wants.
static int move_prompt(Engine *e, Req *r, char *err) {
    const ModelConfig *c = &e->model->cfg;
    int NKV = c->n_kv_head, HD = model_head_dim(c), cap = e->rw.cap;
    for (int p = 0; p < r->n_prompt - 1; p++)
        for (int l = 0; l < c->n_layer; l++) {
            for (int g = 0; g < NKV; g++) {
                size_t src = (((size_t)l * NKV + g) * cap + p) * HD;
                memcpy(e->row_k + (size_t)g * HD, e->rw.k + src, (size_t)HD * sizeof(float));
                memcpy(e->row_v + (size_t)g * HD, e->rw.v + src, (size_t)HD * sizeof(float));
            }
            if (kv_paged_append(e->pool, &r->seq, l, p, r->prompt[p], e->row_k, e->row_v, err) != 0) return -1;
        }
    return 0;
}

int reuse_begin(Engine *e, Req *r, char *err) {
    const Model *m = e->model;
    int n = r->n_prompt;
    const KVReuseEntry *ref = reuse_find(e, r);
    r->reuse_hit = ref != NULL;
    if (!ref) { // computed by the batched decode like a prefix request, then stored (engine.c)
        r->seq.salt = r->salt;
        int reused = kv_paged_begin(e->pool, &r->seq, r->prompt, n, KV_PRIORITY_DEFAULT, err);
        if (reused < 0) return -1;
        r->reused = r->pos = r->reuse_reused = reused;
        r->store_after = 1;
        return 0;
    }
    r->ref_hash = XXH64(ref->tokens, (size_t)ref->n * sizeof(int), 0);
    r->ref_tokens = ref->n;
    KVReuseCost cost = {0};
    if (r->reuse == REUSE_LSH) {
        kv_reuse_prefill_lsh(m, &e->rw, ref, r->prompt, n, 1, &cost);
    } else {
        decode_semshare_map(m, &e->semshare, ref->tokens, ref->n, r->prompt, n, e->map);
        kv_reuse_prefill_semshare(m, &e->rw, ref, e->map, &e->semshare, r->prompt, n, &cost);
    }
    int L = m->cfg.n_layer, recomputed = (int)((cost.layer_tokens + L - 1) / L);
    r->reuse_reused = n - recomputed;
    r->seq.salt = serve_private_salt(e);
    int begun = kv_paged_begin(e->pool, &r->seq, r->prompt, n, KV_PRIORITY_DEFAULT, err); // 0: a salt of its own
    if (begun < 0) return -1;
    r->reused = begun;
    if (move_prompt(e, r, err) != 0) return -1;
    r->pos = n - 1;
    return 0;
}

void reuse_insert(Engine *e, Req *r) {
    const ModelConfig *c = &e->model->cfg;
    int n = r->n_prompt, B = e->block, NKV = c->n_kv_head, HD = model_head_dim(c), cap = e->rw.cap;
    for (int l = 0; l < c->n_layer; l++) // the work's layout (L, NKV, cap, HD), a block's rows at a time
        for (int g = 0; g < NKV; g++) {
            size_t lane = ((size_t)l * NKV + g) * cap * HD;
            for (int p = 0; p < n; p += B) {
                int b = r->seq.table[p / B], rows = n - p < B ? n - p : B;
                kv_pool_read(e->pool, 0, b, l, g, rows, e->rw.k + lane + (size_t)p * HD); // decoded if not fp32
                kv_pool_read(e->pool, 1, b, l, g, rows, e->rw.v + lane + (size_t)p * HD);
            }
        }
    char err[ERR_LEN];
    if (kv_reuse_insert(e->store, r->scope, r->prompt, n, e->rw.k, e->rw.v, cap, err) != 0) e->store_skipped++;
}

int64_t reuse_clear(Engine *e) {
    KVReuseStats st;
    kv_reuse_stats(e->store, &st);
    kv_reuse_clear(e->store);
    return st.entries;
}

void reuse_publish_locked(Engine *e) {
    kv_reuse_stats(e->store, &e->store_snap);
    e->store_skipped_snap = e->store_skipped;
}

void reuse_account_locked(Engine *e, const Req *r, Tenant *t) {
    if (r->reuse != REUSE_LSH && r->reuse != REUSE_SEMSHARE) return;
    ReuseCounters *cs[2] = {&e->reuse, t ? &t->reuse : NULL};
    for (int i = 0; i < 2 && cs[i]; i++) {
        ReuseCounters *c = cs[i];
        c->lookups++;
        c->hits += r->reuse_hit;
        c->misses += !r->reuse_hit;
        c->rejected += r->rejected;
        if (r->reuse_hit) c->reused_tokens += r->reuse_reused, c->recomputed_tokens += r->n_prompt - r->reuse_reused;
    }
}
