// The store of earlier requests behind reuse:lsh and reuse:semshare (what is approximated: kv/reuse.h), and
// SemShareKV's fuzzy token mapping. Why a linear scan over signatures instead of a hash map of buckets: a
// store holds tens of requests (each is the whole KV of a prompt), and a scan also gives Hamming-radius
// probing for free; the signature still decides which entries are candidates.
#include "reuse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"


struct KVReuseStore {
    const float *wte;         // (vocab, C) the model's token embeddings (borrowed)
    int vocab, C, L, NKV, HD;
    KVReuseStoreConfig cfg;
    float *planes;            // (planes, C) N(0, 1) hyperplane normals
    float *center;            // (C)
    KVReuseEntry *head, *tail; // most / least recently used
    KVReuseStats st;
};

void kv_reuse_store_config_default(KVReuseStoreConfig *cfg) {
    *cfg = (KVReuseStoreConfig){.planes = 16, .radius = 0, .threshold = 0.8f, .min_overlap = 0.5f,
                                .budget_bytes = (size_t)64 << 20, .seed = 1234};
}

int kv_reuse_store_init(KVReuseStore **out, const float *wte, int vocab, int width, const KVShape *shape,
                        const KVReuseStoreConfig *cfg, const int *calib, size_t n_calib, char *err) {
    if (cfg->planes < 1 || cfg->planes > 64)
        return err_set(err, "reuse: LSH hyperplanes must be 1..64 (got %d)", cfg->planes), -1;
    if (cfg->radius < 0 || cfg->radius > cfg->planes)
        return err_set(err, "reuse: LSH probe radius must be 0..%d (got %d)", cfg->planes, cfg->radius), -1;
    if (!(cfg->threshold > 0.0f && cfg->threshold <= 1.0f))
        return err_set(err, "reuse: --threshold must be in (0, 1] (got %g)", cfg->threshold), -1;
    if (!(cfg->min_overlap >= 0.0f && cfg->min_overlap <= 1.0f))
        return err_set(err, "reuse: the n-gram overlap must be in [0, 1] (got %g)", cfg->min_overlap), -1;
    if (cfg->budget_bytes == 0) return err_set(err, "reuse: the store's byte budget must be > 0"), -1;
    KVReuseStore *s = common_calloc(1, sizeof(*s));
    *s = (KVReuseStore){.wte = wte, .vocab = vocab, .C = width, .L = shape->n_layer, .NKV = shape->n_kv_head,
                        .HD = shape->head_dim, .cfg = *cfg};
    s->planes = common_calloc((size_t)cfg->planes * s->C, sizeof(float));
    s->center = common_calloc((size_t)s->C, sizeof(float));
    Rng rng;
    rng_init(&rng, cfg->seed);
    for (size_t i = 0; i < (size_t)cfg->planes * s->C; i++) s->planes[i] = rng_normal(&rng);
    if (calib && n_calib > 0) {
        for (size_t t = 0; t < n_calib; t++) {
            CHECK(calib[t] >= 0 && calib[t] < vocab);
            const float *row = wte + (size_t)calib[t] * s->C;
            for (int i = 0; i < s->C; i++) s->center[i] += row[i];
        }
        for (int i = 0; i < s->C; i++) s->center[i] /= (float)n_calib;
    }
    *out = s;
    return 0;
}

static void entry_free(KVReuseEntry *e) {
    common_free(e->mean);
    common_free(e->tokens);
    common_free(e->k);
    common_free(e->v);
    common_free(e);
}

static void lru_unlink(KVReuseStore *s, KVReuseEntry *e) {
    if (e->prev) e->prev->next = e->next;
    else s->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(KVReuseStore *s, KVReuseEntry *e) {
    e->prev = NULL;
    e->next = s->head;
    if (s->head) s->head->prev = e;
    s->head = e;
    if (!s->tail) s->tail = e;
}

static void entry_drop(KVReuseStore *s, KVReuseEntry *e) {
    lru_unlink(s, e);
    s->st.bytes -= e->bytes;
    s->st.entries--;
    entry_free(e);
}

void kv_reuse_clear(KVReuseStore *s) {
    while (s->head) entry_drop(s, s->head);
}

void kv_reuse_store_free(KVReuseStore *s) {
    if (!s) return;
    kv_reuse_clear(s);
    common_free(s->planes);
    common_free(s->center);
    common_free(s);
}

void kv_reuse_embed(const KVReuseStore *s, const int *tokens, int n, int centred, float *mean) {
    CHECK(n > 0);
    const float *wte = s->wte;
    double acc[s->C];
    memset(acc, 0, sizeof(acc));
    for (int t = 0; t < n; t++) {
        CHECK(tokens[t] >= 0 && tokens[t] < s->vocab);
        const float *row = wte + (size_t)tokens[t] * s->C;
        for (int i = 0; i < s->C; i++) acc[i] += row[i];
    }
    for (int i = 0; i < s->C; i++) mean[i] = (float)(acc[i] / n) - (centred ? s->center[i] : 0.0f);
}

uint64_t kv_reuse_signature(const KVReuseStore *s, const float *mean) {
    uint64_t sig = 0;
    for (int p = 0; p < s->cfg.planes; p++) {
        const float *h = s->planes + (size_t)p * s->C;
        double dot = 0.0;
        for (int i = 0; i < s->C; i++) dot += (double)h[i] * mean[i];
        if (dot >= 0.0) sig |= (uint64_t)1 << p;
    }
    return sig;
}

double kv_reuse_cosine(const float *a, const float *b, int n) {
    double ab = 0.0, aa = 0.0, bb = 0.0;
    for (int i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return aa > 0.0 && bb > 0.0 ? ab / sqrt(aa * bb) : 0.0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

// Sorted codes of the n - g + 1 g-grams of tokens (g = min(KV_REUSE_GRAM, n)).
static int grams(const int *tokens, int n, uint64_t *codes) {
    int g = n < KV_REUSE_GRAM ? n : KV_REUSE_GRAM, k = n - g + 1;
    for (int i = 0; i < k; i++) {
        uint64_t h = 0;
        for (int j = 0; j < g; j++) h = (h ^ (uint32_t)tokens[i + j]) * 0x100000001b3ull + 0x9e3779b97f4a7c15ull;
        codes[i] = h;
    }
    qsort(codes, (size_t)k, sizeof(uint64_t), cmp_u64);
    return k;
}

double kv_reuse_overlap(const int *ref, int n_ref, const int *tokens, int n) {
    uint64_t *a = common_calloc((size_t)n, sizeof(uint64_t)), *b = common_calloc((size_t)n_ref, sizeof(uint64_t));
    int na = grams(tokens, n, a), nb = grams(ref, n_ref, b), both = 0;
    for (int i = 0, j = 0; i < na && j < nb;) { // multiset intersection of two sorted lists
        if (a[i] == b[j]) both++, i++, j++;
        else if (a[i] < b[j]) i++;
        else j++;
    }
    common_free(a);
    common_free(b);
    return (double)both / na;
}

const KVReuseEntry *kv_reuse_lookup(KVReuseStore *s, uint64_t scope, const int *tokens, int n, float *sim) {
    float mean[s->C];
    kv_reuse_embed(s, tokens, n, 1, mean);
    uint64_t sig = kv_reuse_signature(s, mean);
    KVReuseEntry *best = NULL;
    double best_sim = -2.0, best_rejected = -2.0;
    s->st.lookups++;
    for (KVReuseEntry *e = s->head; e; e = e->next) {
        if (e->scope != scope || __builtin_popcountll(e->sig ^ sig) > s->cfg.radius) continue;
        double cs = kv_reuse_cosine(mean, e->mean, s->C);
        if (cs < s->cfg.threshold) {
            s->st.rejected++;
            best_rejected = fmax(best_rejected, cs);
        } else if (s->cfg.min_overlap > 0.0f && kv_reuse_overlap(e->tokens, e->n, tokens, n) < s->cfg.min_overlap) {
            s->st.rejected_overlap++;
            best_rejected = fmax(best_rejected, cs);
        } else if (cs > best_sim) {
            best_sim = cs, best = e;
        }
    }
    if (sim) *sim = (float)(best ? best_sim : best_rejected);
    if (!best) return s->st.misses++, NULL;
    s->st.hits++;
    lru_unlink(s, best);
    lru_push_front(s, best);
    return best;
}

int kv_reuse_insert(KVReuseStore *s, uint64_t scope, const int *tokens, int n, const float *k, const float *v,
                    int cap, char *err) {
    CHECK(n > 0 && n <= cap);
    for (KVReuseEntry *e = s->head; e; e = e->next)
        if (e->scope == scope && e->n == n && memcmp(e->tokens, tokens, (size_t)n * sizeof(int)) == 0) {
            lru_unlink(s, e); // the same request again: its KV is the same, only refresh it
            lru_push_front(s, e);
            return 0;
        }
    size_t rows = (size_t)s->L * s->NKV * n, row_floats = (size_t)s->HD;
    size_t bytes = sizeof(KVReuseEntry) + (size_t)s->C * sizeof(float) + (size_t)n * sizeof(int) +
                   2 * rows * row_floats * sizeof(float);
    if (bytes > s->cfg.budget_bytes)
        return err_set(err, "reuse: one request's KV (%zu bytes) exceeds the store budget of %zu bytes", bytes,
                       s->cfg.budget_bytes), -1;
    while (s->st.bytes + bytes > s->cfg.budget_bytes) {
        entry_drop(s, s->tail);
        s->st.evictions++;
    }
    KVReuseEntry *e = common_calloc(1, sizeof(*e));
    e->scope = scope;
    e->n = n;
    e->bytes = bytes;
    e->mean = common_calloc((size_t)s->C, sizeof(float));
    kv_reuse_embed(s, tokens, n, 1, e->mean);
    e->sig = kv_reuse_signature(s, e->mean);
    e->tokens = common_calloc((size_t)n, sizeof(int));
    memcpy(e->tokens, tokens, (size_t)n * sizeof(int));
    e->k = common_calloc(rows * row_floats, sizeof(float));
    e->v = common_calloc(rows * row_floats, sizeof(float));
    for (size_t lg = 0; lg < (size_t)s->L * s->NKV; lg++) { // (layer, head) lanes: first n rows of cap
        memcpy(e->k + lg * n * row_floats, k + lg * cap * row_floats, (size_t)n * row_floats * sizeof(float));
        memcpy(e->v + lg * n * row_floats, v + lg * cap * row_floats, (size_t)n * row_floats * sizeof(float));
    }
    lru_push_front(s, e);
    s->st.bytes += bytes;
    s->st.entries++;
    s->st.inserts++;
    return 0;
}

void kv_reuse_stats(const KVReuseStore *s, KVReuseStats *st) { *st = s->st; }

// --- SemShareKV: fuzzy token matching ------------------------------------------------------------------

// Deep-layer pruning is off (deep_keep = 1) because it costs fidelity at our scale: on recall-mha (4 layers,
// 256-token prompts, 32 pairs per class) the identical class, exact without it, falls to top-1 0.992 and
// greedy match 0.875 at deep_keep 0.75 (13% of the prompt's KV bytes saved), 0.986 / 0.781 at 0.5 (27%
// saved). The paper's memory savings are at thousands of tokens; it reports little benefit under ~700.
void kv_semshare_config_default(KVSemShareConfig *cfg) {
    *cfg = (KVSemShareConfig){.window = 4, .decay = 0.7f, .pos_weight = 0.1f, .recompute = 0.3f,
                              .layer_decay = 0.5f, .deep_keep = 1.0f, .deep_sink = 4, .deep_recent = 16,
                              .deep_window = 16};
}

int kv_semshare_config_validate(const KVSemShareConfig *c, char *err) {
    if (c->window < 0 || c->window > 64) return err_set(err, "semshare: window must be 0..64 (got %d)", c->window), -1;
    if (!(c->decay >= 0.0f && c->decay <= 1.0f)) return err_set(err, "semshare: decay must be in [0, 1]"), -1;
    if (!(c->pos_weight >= 0.0f && c->pos_weight <= 100.0f))
        return err_set(err, "semshare: pos_weight must be in [0, 100]"), -1;
    if (!(c->recompute >= 0.0f && c->recompute <= 1.0f) || !(c->layer_decay >= 0.0f && c->layer_decay <= 1.0f))
        return err_set(err, "semshare: recompute and layer_decay must be in [0, 1]"), -1;
    if (!(c->deep_keep > 0.0f && c->deep_keep <= 1.0f))
        return err_set(err, "semshare: deep_keep must be in (0, 1] (1 = no pruning; got %g)", c->deep_keep), -1;
    if (c->deep_sink < 0 || c->deep_recent < 1 || c->deep_window < 1 || c->deep_sink > (1 << 20) ||
        c->deep_recent > (1 << 20) || c->deep_window > (1 << 20))
        return err_set(err, "semshare: deep_sink must be >= 0, deep_recent and deep_window >= 1 (got %d, %d, %d)",
                       c->deep_sink, c->deep_recent, c->deep_window), -1;
    return 0;
}

// Exponential decay from every token at layer 0 to deep_keep at the last layer: the paper's best schedule.
// The protected floor keeps the count from dropping below the tokens that must stay whatever their votes.
void kv_semshare_keep_counts(const KVSemShareConfig *c, int n_layer, int n, int *keep) {
    int protect = c->deep_sink + c->deep_recent < n ? c->deep_sink + c->deep_recent : n;
    for (int l = 0; l < n_layer; l++) {
        if (!(c->deep_keep < 1.0f)) { // off (NaN too, as in the prefill; the validator rejects it)
            keep[l] = n;
            continue;
        }
        double f = pow(c->deep_keep, n_layer > 1 ? (double)l / (n_layer - 1) : 1.0);
        long k = lround(f * n);
        keep[l] = k < protect ? protect : k > n ? n : (int)k;
    }
}
