// The reuse prefill engine (decode/reuse.h): the prompt's active rows go through decode_forward with one
// store that, at each layer, writes the rows' keys and values into the work cache and lets only some of
// them go on (reuse_select), then attends for those that did (reuse_attend). Why a batched layer-by-layer prefill instead of the token-by-token
// decode step: SemShareKV decides per layer which tokens go on (a token continues to layer l+1 only if it
// ran layer l), which needs the whole prompt at each layer; and the full recomputation it is compared with
// runs on the same engine with every token active, so time to first token compares like with like.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../layers/cpu_ops.h"
#include "reuse.h"

void kv_reuse_work_init(KVReuseWork *w, const Model *m, int cap) {
    const ModelConfig *c = &m->cfg;
    size_t KVC = model_kv_dim(c), n = (size_t)cap;
    *w = (KVReuseWork){.cap = cap};
    w->k = common_calloc(c->n_layer * KVC * n, sizeof(float));
    w->v = common_calloc(c->n_layer * KVC * n, sizeof(float));
    w->att = common_calloc(n * c->n_head * n, sizeof(float));
    w->keep = common_calloc(n, sizeof(int));
    w->pos = common_calloc(n, sizeof(int));
    w->rows = common_calloc(c->n_layer, sizeof(int));
    w->row_pos = common_calloc(c->n_layer * n, sizeof(int));
    w->votes = common_calloc(c->n_layer * n, sizeof(float));
    decode_state_init(&w->ds, c, cap, cap);
}

void kv_reuse_work_free(KVReuseWork *w) {
    float *f[] = {w->k, w->v, w->att, w->votes};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) common_free(f[i]);
    common_free(w->keep);
    common_free(w->pos);
    common_free(w->rows);
    common_free(w->row_pos);
    decode_state_free(&w->ds);
    memset(w, 0, sizeof(*w));
}

size_t kv_reuse_work_bytes(const Model *m, const KVReuseWork *w) {
    size_t rows = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) rows += (size_t)w->rows[l];
    return rows * 2 * model_kv_dim(&m->cfg) * sizeof(float);
}

// Lane of (layer, kv head): (cap, HD) rows.
static float *lane(const Model *m, const KVReuseWork *w, float *base, int l, int g) {
    return base + ((size_t)l * m->cfg.n_kv_head + g) * w->cap * model_head_dim(&m->cfg);
}

// Rotates rows (na, nh * HD) of x, row r to position pos[r], one call per run of consecutive positions.
static void rope_rows(const Model *m, float *x, const int *pos, int na, int nh) {
    int HD = model_head_dim(&m->cfg);
    for (int r = 0, e; r < na; r = e) {
        for (e = r + 1; e < na && pos[e] == pos[e - 1] + 1; e++) {}
        m->ops->rope_forward(x + (size_t)r * nh * HD, 1, e - r, nh, HD, pos[r], m->cfg.rope_theta);
    }
}

// Per token and layer, 2 x multiply-adds: K and V projections; the rest of the layer without attention;
// attention over `ctx` keys.
static double flops_kv(const ModelConfig *c) { return 4.0 * model_kv_dim(c) * c->n_embd; }
static double flops_rest(const ModelConfig *c) { return 4.0 * c->n_embd * c->n_embd + 6.0 * c->n_hidden * c->n_embd; }
static double flops_att(const ModelConfig *c, int ctx) { return 4.0 * c->n_embd * ctx; }

typedef struct {
    float dev;
    int row;
} DevRow;

static int dev_desc(const void *a, const void *b) {
    const DevRow *x = a, *y = b;
    return x->dev < y->dev ? 1 : x->dev > y->dev ? -1 : x->row - y->row;
}

static int ascending(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

// SnapKV-style votes at layer l: the attention probabilities (mean over query heads) that the active rows
// among the prompt's `window` newest tokens paid each position. Only rows that ran the layer have a query
// there; the last token always has. Read right after the attention, before the next layer reuses w->att.
static void vote(const Model *m, KVReuseWork *w, const int *pos, int l, int na, int n, int window) {
    int NH = m->cfg.n_head;
    float *v = w->votes + (size_t)l * w->cap;
    for (int r = na - 1; r >= 0 && pos[r] >= n - window; r--) { // positions ascend: the window is at the end
        int Tc = pos[r] + 1;
        const float *att = w->att + (size_t)r * NH * w->cap; // (NH, Tc) probabilities of row r
        for (int h = 0; h < NH; h++)
            for (int j = 0; j < Tc; j++) v[j] += att[(size_t)h * Tc + j] / NH;
    }
}

// The store of one prefill: the prompt has n tokens; at layer l only keep_n[l] of the active rows go on.
typedef struct {
    KVReuseWork *w;
    const int *keep_n;
    int n, window;
    double flops;
    long long layer_tokens;
} ReusePrefill;

// At layer l every active row's K and V are written to the cache at its position; only keep_n[l] of the rows
// (the largest squared distance between the fresh values and the cached ones, the last token always) go on
// through attention and the MLP.
static int reuse_select(KVStore *st, const Model *m, DecodeState *s, int l, int na) {
    ReusePrefill *rp = st->ctx;
    KVReuseWork *w = rp->w;
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, KVC = model_kv_dim(c), NKV = c->n_kv_head, HD = model_head_dim(c);
    CHECK(na >= 1 && s->pos[na - 1] == rp->n - 1);
    rp->flops += na * flops_kv(c);
    int kn = rp->keep_n[l] < na ? rp->keep_n[l] : na;
    if (kn < na) { // deviation against what the cache holds (reused rows), before overwriting it
        DevRow *dr = common_calloc((size_t)na, sizeof(DevRow));
        for (int r = 0; r < na; r++) {
            double d = 0.0;
            for (int g = 0; g < NKV; g++) {
                const float *old = lane(m, w, w->v, l, g) + (size_t)s->pos[r] * HD;
                const float *nw = s->v + (size_t)r * KVC + g * HD;
                for (int i = 0; i < HD; i++) d += (double)(nw[i] - old[i]) * (nw[i] - old[i]);
            }
            dr[r] = (DevRow){r == na - 1 ? INFINITY : (float)d, r};
        }
        qsort(dr, (size_t)na, sizeof(DevRow), dev_desc);
        memset(w->keep, 0, (size_t)na * sizeof(int));
        for (int i = 0; i < kn; i++) w->keep[dr[i].row] = 1;
        common_free(dr);
    }
    rope_rows(m, s->k, s->pos, na, NKV);
    for (int r = 0; r < na; r++)
        for (int g = 0; g < NKV; g++) {
            size_t at = (size_t)s->pos[r] * HD, src = (size_t)r * KVC + g * HD;
            memcpy(lane(m, w, w->k, l, g) + at, s->k + src, HD * sizeof(float));
            memcpy(lane(m, w, w->v, l, g) + at, s->v + src, HD * sizeof(float));
        }
    if (kn == na) return na;
    int o = 0; // compact the rows that go on
    for (int r = 0; r < na; r++) {
        if (!w->keep[r]) continue;
        if (o != r) {
            memcpy(s->x + (size_t)o * C, s->x + (size_t)r * C, C * sizeof(float));
            memcpy(s->xn + (size_t)o * C, s->xn + (size_t)r * C, C * sizeof(float));
            s->pos[o] = s->pos[r];
            s->tokens[o] = s->tokens[r];
        }
        o++;
    }
    return o;
}

// Attention of the rows that went on, in parallel, over the cache up to each row's position; with a window
// the rows among the prompt's newest also vote (w->votes) for the positions they attend to, for pruning.
static int reuse_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int na, char *err) {
    (void)err;
    ReusePrefill *rp = st->ctx;
    KVReuseWork *w = rp->w;
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, NH = c->n_head, NKV = c->n_kv_head, HD = model_head_dim(c), cap = w->cap;
    CHECK(row0 == 0);
    rope_rows(m, s->q, s->pos, na, NH);
    const float *kl = lane(m, w, w->k, l, 0), *vl = lane(m, w, w->v, l, 0);
#pragma omp parallel for schedule(dynamic, 4)
    for (int r = 0; r < na; r++)
        m->ops->attention_decode(s->atty + (size_t)r * C, w->att + (size_t)r * NH * cap, s->q + (size_t)r * C, kl,
                                 vl, s->pos[r] + 1, (size_t)cap * HD, NH, NKV, HD);
    if (rp->window > 0) vote(m, w, s->pos, l, na, rp->n, rp->window);
    rp->layer_tokens += na;
    for (int r = 0; r < na; r++) rp->flops += flops_rest(c) + flops_att(c, s->pos[r] + 1);
    return 0;
}

static const KVStoreOps reuse_prefill_ops = {.select_rows = reuse_select, .attend = reuse_attend};

// The layers over the active rows: positions pos[0..na) ascending, the last being n-1. Leaves the last
// token's logits in w->ds.logits and every layer holding rows 0..n-1 at their positions.
static void run_layers(const Model *m, KVReuseWork *w, const int *tokens, const int *pos, int na, int n,
                       const int *keep_n, int window, KVReuseCost *cost) {
    const ModelConfig *c = &m->cfg;
    CHECK(na >= 1 && pos[na - 1] == n - 1 && n <= w->cap);
    int *tok = common_calloc((size_t)na, sizeof(int));
    for (int r = 0; r < na; r++) tok[r] = tokens[pos[r]];
    ReusePrefill rp = {.w = w, .keep_n = keep_n, .n = n, .window = window};
    KVStore st = {&reuse_prefill_ops, &rp};
    KVStore *stores[] = {&st};
    CHECK(decode_forward(m, &w->ds, stores, 1, tok, pos, na, DECODE_LOGITS_LAST, NULL) >= 1);
    common_free(tok);
    w->n = n;
    for (int l = 0; l < c->n_layer; l++) {
        w->rows[l] = n;
        for (int i = 0; i < n; i++) w->row_pos[(size_t)l * w->cap + i] = i;
    }
    if (cost) {
        cost->layer_tokens += rp.layer_tokens;
        cost->layer_tokens_full += (long long)n * c->n_layer;
        cost->flops += rp.flops;
        cost->flops_full += c->n_layer * (n * (flops_kv(c) + flops_rest(c)) + flops_att(c, 1) * 0.5 * n * (n + 1));
    }
}

static void prefill_all_layers(const Model *m, KVReuseWork *w, const int *tokens, const int *pos, int na, int n,
                               KVReuseCost *cost) {
    int keep_n[m->cfg.n_layer];
    for (int l = 0; l < m->cfg.n_layer; l++) keep_n[l] = n;
    run_layers(m, w, tokens, pos, na, n, keep_n, 0, cost);
}

void kv_reuse_prefill_full(const Model *m, KVReuseWork *w, const int *tokens, int n, KVReuseCost *cost) {
    CHECK(n >= 1 && n <= w->cap);
    for (int i = 0; i < n; i++) w->pos[i] = i;
    prefill_all_layers(m, w, tokens, w->pos, n, n, cost);
}

void kv_reuse_prefill_lsh(const Model *m, KVReuseWork *w, const KVReuseEntry *e, const int *tokens, int n,
                          int recompute_diff, KVReuseCost *cost) {
    CHECK(n >= 1 && n <= w->cap);
    int HD = model_head_dim(&m->cfg), P = e->n < n ? e->n : n, na = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) // the reference's KV at the same positions, every layer
        for (int g = 0; g < m->cfg.n_kv_head; g++) {
            size_t src = ((size_t)l * m->cfg.n_kv_head + g) * e->n * HD;
            memcpy(lane(m, w, w->k, l, g), e->k + src, (size_t)P * HD * sizeof(float));
            memcpy(lane(m, w, w->v, l, g), e->v + src, (size_t)P * HD * sizeof(float));
        }
    for (int i = 0; i < n; i++)
        if (i >= P || i == n - 1 || (recompute_diff && tokens[i] != e->tokens[i])) w->pos[na++] = i;
    prefill_all_layers(m, w, tokens, w->pos, na, n, cost);
}

// Positions (ascending, into kept) layer l keeps of n: the first `sink` and the newest `recent`, then the
// most voted of the rest (ties: the earlier), up to `keep`.
static void select_kept(const float *votes, int n, int keep, int sink, int recent, int *kept) {
    DevRow *cand = common_calloc((size_t)n, sizeof(DevRow));
    int nk = 0, nc = 0;
    for (int j = 0; j < n; j++) {
        if (j < sink || j >= n - recent) kept[nk++] = j;
        else cand[nc++] = (DevRow){votes[j], j};
    }
    CHECK(nk <= keep);
    qsort(cand, (size_t)nc, sizeof(DevRow), dev_desc);
    for (int i = 0; nk < keep; i++) kept[nk++] = cand[i].row;
    common_free(cand);
    qsort(kept, (size_t)keep, sizeof(int), ascending);
}

// The deep-layer pruning after a semshare prefill: each layer keeps kv_semshare_keep_counts(...)[l] of the
// prompt's rows, moved to the front of its lanes in position order (keys stay rotated to their positions,
// so attention over the kept rows needs no mask), and w->rows / w->row_pos say which.
static void prune_layers(const Model *m, KVReuseWork *w, const KVSemShareConfig *sc, int n) {
    const ModelConfig *c = &m->cfg;
    int HD = model_head_dim(c), keep[c->n_layer];
    kv_semshare_keep_counts(sc, c->n_layer, n, keep);
    for (int l = 0; l < c->n_layer; l++) {
        if (keep[l] >= n) continue;
        int *kept = w->row_pos + (size_t)l * w->cap;
        select_kept(w->votes + (size_t)l * w->cap, n, keep[l], sc->deep_sink, sc->deep_recent, kept);
        for (int g = 0; g < c->n_kv_head; g++) {
            float *kl = lane(m, w, w->k, l, g), *vl = lane(m, w, w->v, l, g);
            for (int i = 0; i < keep[l]; i++) // kept[i] >= i: moving forward in order never overwrites a source
                if (kept[i] != i) {
                    memcpy(kl + (size_t)i * HD, kl + (size_t)kept[i] * HD, HD * sizeof(float));
                    memcpy(vl + (size_t)i * HD, vl + (size_t)kept[i] * HD, HD * sizeof(float));
                }
        }
        w->rows[l] = keep[l];
    }
}

void kv_reuse_prefill_semshare(const Model *m, KVReuseWork *w, const KVReuseEntry *e, const int *map,
                               const KVSemShareConfig *sc, const int *tokens, int n, KVReuseCost *cost) {
    CHECK(n >= 1 && n <= w->cap);
    const ModelConfig *c = &m->cfg;
    int HD = model_head_dim(c), NKV = c->n_kv_head, KVC = model_kv_dim(c);
    for (int i = 0; i < n; i++) CHECK(map[i] >= 0 && map[i] < e->n);
    for (int l = 1; l < c->n_layer; l++) { // layer 0 is recomputed in full: its KV is not loaded
        for (int i = 0; i < n; i++) // gather the mapped rows token-major into kk (keys) and vv (values)
            for (int g = 0; g < NKV; g++) {
                size_t src = (((size_t)l * NKV + g) * e->n + map[i]) * HD, dst = (size_t)i * KVC + g * HD;
                memcpy(w->ds.k + dst, e->k + src, HD * sizeof(float));
                memcpy(w->ds.v + dst, e->v + src, HD * sizeof(float));
            }
        for (int i = 0, j; i < n; i = j) { // re-rotate keys from position map[i] to i, one call per shift run
            int shift = i - map[i];
            for (j = i + 1; j < n && j - map[j] == shift; j++) {}
            if (shift != 0) m->ops->rope_forward(w->ds.k + (size_t)i * KVC, j - i, 1, NKV, HD, shift, c->rope_theta);
        }
        for (int i = 0; i < n; i++)
            for (int g = 0; g < NKV; g++) {
                size_t src = (size_t)i * KVC + g * HD;
                memcpy(lane(m, w, w->k, l, g) + (size_t)i * HD, w->ds.k + src, HD * sizeof(float));
                memcpy(lane(m, w, w->v, l, g) + (size_t)i * HD, w->ds.v + src, HD * sizeof(float));
            }
    }
    int keep_n[c->n_layer];
    keep_n[0] = n;
    double r = sc->recompute;
    for (int l = 1; l < c->n_layer; l++, r *= sc->layer_decay) keep_n[l] = (int)fmax(1.0, lround(r * n));
    for (int i = 0; i < n; i++) w->pos[i] = i;
    int prune = sc->deep_keep < 1.0f;
    if (prune) memset(w->votes, 0, (size_t)c->n_layer * w->cap * sizeof(float));
    run_layers(m, w, tokens, w->pos, n, n, keep_n, prune ? sc->deep_window : 0, cost);
    if (prune) prune_layers(m, w, sc, n);
}

// The decode step over the work cache: keys rotated on entry, appended as the layer's next row (row pos
// unless the layer was pruned), attention over the rows the layer holds.
static int work_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int n, char *err) {
    (void)err;
    KVReuseWork *w = st->ctx;
    const ModelConfig *c = &m->cfg;
    int HD = model_head_dim(c), row = w->rows[l], pos = s->pos[row0];
    CHECK(row0 == 0 && n == 1);
    m->ops->rope_forward(s->k, 1, 1, c->n_kv_head, HD, pos, c->rope_theta);
    for (int g = 0; g < c->n_kv_head; g++) {
        memcpy(lane(m, w, w->k, l, g) + (size_t)row * HD, s->k + g * HD, HD * sizeof(float));
        memcpy(lane(m, w, w->v, l, g) + (size_t)row * HD, s->v + g * HD, HD * sizeof(float));
    }
    w->row_pos[(size_t)l * w->cap + row] = pos;
    w->rows[l] = row + 1;
    m->ops->rope_forward(s->q, 1, 1, c->n_head, HD, pos, c->rope_theta);
    m->ops->attention_decode(s->atty, s->att, s->q, lane(m, w, w->k, l, 0), lane(m, w, w->v, l, 0), row + 1,
                             (size_t)w->cap * HD, c->n_head, c->n_kv_head, HD);
    return 0;
}

static const KVStoreOps work_ops = {.attend = work_attend};

int kv_reuse_decode(const Model *m, KVReuseWork *w, int token) {
    if (w->n >= w->cap) return -1;
    KVStore st = {&work_ops, w};
    KVStore *stores[] = {&st};
    CHECK(decode_forward(m, &w->ds, stores, 1, &token, &w->n, 1, DECODE_LOGITS_ALL, NULL) == 1);
    w->n++;
    return 0;
}

// --- the model side of the store ----------------------------------------------------------------------

int decode_reuse_store_init(KVReuseStore **out, const Model *m, const KVReuseStoreConfig *cfg, const int *calib,
                            size_t n_calib, char *err) {
    if (m->ops->on_device) {
        err_set(err, "reuse: runs on the CPU backend only");
        return -1;
    }
    KVShape shape = decode_kv_shape(&m->cfg, m->cfg.block_size);
    return kv_reuse_store_init(out, m->params.wte, m->cfg.vocab_size, m->cfg.n_embd, &shape, cfg, calib, n_calib, err);
}

// Rows (n, D): unit content vectors (the token's embedding plus decay^d times its d-th predecessor's, d <=
// window), then sqrt(pos_weight / F) * [cos(t w_f), sin(t w_f)] for the F = head_dim/2 RoPE frequencies, so
// a dot product of two rows is cos(content) + pos_weight * mean_f cos((i - j) w_f).
static void match_features(const Model *m, const KVSemShareConfig *sc, const int *tok, int n, float *f, int D) {
    int C = m->cfg.n_embd, HD = model_head_dim(&m->cfg), F = HD / 2;
    float ps = sqrtf(sc->pos_weight / (float)F);
    for (int t = 0; t < n; t++) {
        float *row = f + (size_t)t * D;
        memset(row, 0, (size_t)D * sizeof(float));
        float w = 1.0f;
        for (int d = 0; d <= sc->window && d <= t; d++, w *= sc->decay) {
            const float *e = m->params.wte + (size_t)tok[t - d] * C;
            for (int i = 0; i < C; i++) row[i] += w * e[i];
        }
        double nn = 0.0;
        for (int i = 0; i < C; i++) nn += (double)row[i] * row[i];
        float inv = nn > 0.0 ? (float)(1.0 / sqrt(nn)) : 0.0f;
        for (int i = 0; i < C; i++) row[i] *= inv;
        for (int i = 0; i < F; i++) {
            double ang = rope_angle(t, i, HD, m->cfg.rope_theta);
            row[C + 2 * i] = ps * (float)cos(ang);
            row[C + 2 * i + 1] = ps * (float)sin(ang);
        }
    }
}

void decode_semshare_map(const Model *m, const KVSemShareConfig *sc, const int *ref, int n_ref, const int *tokens,
                     int n, int *map) {
    int D = m->cfg.n_embd + model_head_dim(&m->cfg);
    float *fr = common_calloc((size_t)n_ref * D, sizeof(float)), *fn = common_calloc((size_t)n * D, sizeof(float));
    float *score = common_calloc((size_t)n * n_ref, sizeof(float));
    match_features(m, sc, ref, n_ref, fr, D);
    match_features(m, sc, tokens, n, fn, D);
    m->ops->matmul_forward(score, fn, fr, n, D, n_ref); // (n, n_ref) = fn @ fr^T
    for (int i = 0; i < n; i++) {
        const float *row = score + (size_t)i * n_ref;
        int best = 0;
        for (int j = 1; j < n_ref; j++)
            if (row[j] > row[best]) best = j;
        map[i] = best;
    }
    common_free(fr);
    common_free(fn);
    common_free(score);
}
