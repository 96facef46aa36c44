// Reuse across requests (kv/reuse.h says what is approximated): the prefill engine both methods run on, and
// the workload that measures them. Why a batched layer-by-layer prefill instead of the token-by-token
// decode step: SemShareKV decides per layer which tokens go on (a token continues to layer l+1 only if it
// ran layer l), which needs the whole prompt at each layer; and the full recomputation it is compared with
// runs on the same engine with every token active, so time to first token compares like with like.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kv/reuse.h"

void kv_reuse_work_init(KVReuseWork *w, const Model *m, int cap) {
    const ModelConfig *c = &m->cfg;
    size_t C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, n = (size_t)cap;
    *w = (KVReuseWork){.cap = cap};
    w->k = common_calloc(c->n_layer * KVC * n, sizeof(float));
    w->v = common_calloc(c->n_layer * KVC * n, sizeof(float));
    float **rowsC[] = {&w->x, &w->xn, &w->q, &w->atty, &w->proj}, **rowsH[] = {&w->h1, &w->h3, &w->hg};
    for (int i = 0; i < 5; i++) *rowsC[i] = common_calloc(n * C, sizeof(float));
    for (int i = 0; i < 3; i++) *rowsH[i] = common_calloc(n * H, sizeof(float));
    w->kk = common_calloc(n * KVC, sizeof(float)), w->vv = common_calloc(n * KVC, sizeof(float));
    w->rstd = common_calloc(n, sizeof(float));
    w->att = common_calloc(n * c->n_head * n, sizeof(float));
    w->pos = common_calloc(n, sizeof(int));
    w->keep = common_calloc(n, sizeof(int));
    w->rows = common_calloc(c->n_layer, sizeof(int));
    w->row_pos = common_calloc(c->n_layer * n, sizeof(int));
    w->votes = common_calloc(c->n_layer * n, sizeof(float));
    decode_state_init(&w->ds, c, cap);
}

void kv_reuse_work_free(KVReuseWork *w) {
    float *f[] = {w->k, w->v, w->x, w->xn, w->q, w->atty, w->proj, w->h1, w->h3, w->hg, w->kk, w->vv, w->rstd,
                  w->att, w->votes};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) common_free(f[i]);
    common_free(w->pos), common_free(w->keep), common_free(w->rows), common_free(w->row_pos);
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
static void vote(const Model *m, KVReuseWork *w, int l, int na, int n, int window) {
    int NH = m->cfg.n_head;
    float *v = w->votes + (size_t)l * w->cap;
    for (int r = na - 1; r >= 0 && w->pos[r] >= n - window; r--) { // positions ascend: the window is at the end
        int Tc = w->pos[r] + 1;
        const float *att = w->att + (size_t)r * NH * w->cap; // (NH, Tc) probabilities of row r
        for (int h = 0; h < NH; h++)
            for (int j = 0; j < Tc; j++) v[j] += att[(size_t)h * Tc + j] / NH;
    }
}

// The layers over the active rows: positions w->pos[0..na) ascending, the last being n-1, hidden states in
// w->x. At layer l every active row projects K and V (written to the cache at its position); only keep_n[l]
// of them (the largest squared distance between the fresh values and the cached ones, the last token always)
// go on through attention and the MLP. With window > 0 the rows among the prompt's `window` newest tokens
// also vote (w->votes) for the positions they attend to, for pruning. Leaves the last token's logits in
// w->ds.logits and every layer holding rows 0..n-1 at their positions.
static void run_layers(const Model *m, KVReuseWork *w, int na, int n, const int *keep_n, int window,
                       KVReuseCost *cost) {
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params;
    int C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, NH = c->n_head, NKV = c->n_kv_head;
    int HD = model_head_dim(c), cap = w->cap;
    CHECK(na >= 1 && w->pos[na - 1] == n - 1 && n <= cap);
    double flops = 0.0;
    long long lt = 0;
    for (int l = 0; l < c->n_layer; l++) {
        size_t lC = (size_t)l * C, lCC = lC * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;
        op->rmsnorm_forward(w->xn, w->rstd, w->x, p->attn_norm + lC, na, C, c->norm_eps);
        op->matmul_forward(w->kk, w->xn, p->wk + lKC, na, C, KVC);
        op->matmul_forward(w->vv, w->xn, p->wv + lKC, na, C, KVC);
        flops += na * flops_kv(c);
        int kn = keep_n[l] < na ? keep_n[l] : na;
        if (kn < na) { // deviation against what the cache holds (reused rows), before overwriting it
            DevRow *dr = common_calloc((size_t)na, sizeof(DevRow));
            for (int r = 0; r < na; r++) {
                double d = 0.0;
                for (int g = 0; g < NKV; g++) {
                    const float *old = lane(m, w, w->v, l, g) + (size_t)w->pos[r] * HD;
                    const float *nw = w->vv + (size_t)r * KVC + g * HD;
                    for (int i = 0; i < HD; i++) d += (double)(nw[i] - old[i]) * (nw[i] - old[i]);
                }
                dr[r] = (DevRow){r == na - 1 ? INFINITY : (float)d, r};
            }
            qsort(dr, (size_t)na, sizeof(DevRow), dev_desc);
            memset(w->keep, 0, (size_t)na * sizeof(int));
            for (int i = 0; i < kn; i++) w->keep[dr[i].row] = 1;
            common_free(dr);
        }
        rope_rows(m, w->kk, w->pos, na, NKV);
        for (int r = 0; r < na; r++)
            for (int g = 0; g < NKV; g++) {
                size_t at = (size_t)w->pos[r] * HD, src = (size_t)r * KVC + g * HD;
                memcpy(lane(m, w, w->k, l, g) + at, w->kk + src, HD * sizeof(float));
                memcpy(lane(m, w, w->v, l, g) + at, w->vv + src, HD * sizeof(float));
            }
        if (kn < na) { // compact the rows that go on
            int o = 0;
            for (int r = 0; r < na; r++) {
                if (!w->keep[r]) continue;
                if (o != r) {
                    memcpy(w->x + (size_t)o * C, w->x + (size_t)r * C, C * sizeof(float));
                    memcpy(w->xn + (size_t)o * C, w->xn + (size_t)r * C, C * sizeof(float));
                    w->pos[o] = w->pos[r];
                }
                o++;
            }
            na = o;
        }
        op->matmul_forward(w->q, w->xn, p->wq + lCC, na, C, C);
        rope_rows(m, w->q, w->pos, na, NH);
        const float *kl = lane(m, w, w->k, l, 0), *vl = lane(m, w, w->v, l, 0);
#pragma omp parallel for schedule(dynamic, 4)
        for (int r = 0; r < na; r++)
            op->attention_decode(w->atty + (size_t)r * C, w->att + (size_t)r * NH * cap, w->q + (size_t)r * C, kl,
                                 vl, w->pos[r] + 1, (size_t)cap * HD, NH, NKV, HD);
        if (window > 0) vote(m, w, l, na, n, window);
        op->matmul_forward(w->proj, w->atty, p->wo + lCC, na, C, C);
        op->residual_forward(w->x, w->x, w->proj, NULL, (size_t)na * C);
        op->rmsnorm_forward(w->xn, w->rstd, w->x, p->mlp_norm + lC, na, C, c->norm_eps);
        op->matmul_forward(w->h1, w->xn, p->w1 + lHC, na, C, H);
        op->matmul_forward(w->h3, w->xn, p->w3 + lHC, na, C, H);
        op->swiglu_forward(w->hg, w->h1, w->h3, (size_t)na * H);
        op->matmul_forward(w->proj, w->hg, p->w2 + lHC, na, H, C);
        op->residual_forward(w->x, w->x, w->proj, NULL, (size_t)na * C);
        lt += na;
        for (int r = 0; r < na; r++) flops += flops_rest(c) + flops_att(c, w->pos[r] + 1);
    }
    float rstd;
    op->rmsnorm_forward(w->xn, &rstd, w->x + (size_t)(na - 1) * C, p->final_norm, 1, C, c->norm_eps);
    op->matmul_forward(w->ds.logits, w->xn, p->wte, 1, C, c->vocab_size);
    w->n = n;
    for (int l = 0; l < c->n_layer; l++) {
        w->rows[l] = n;
        for (int i = 0; i < n; i++) w->row_pos[(size_t)l * cap + i] = i;
    }
    if (cost) {
        cost->layer_tokens += lt;
        cost->layer_tokens_full += (long long)n * c->n_layer;
        cost->flops += flops;
        cost->flops_full += c->n_layer * (n * (flops_kv(c) + flops_rest(c)) + flops_att(c, 1) * 0.5 * n * (n + 1));
    }
}

// Rows of the listed positions get their tokens' embeddings.
static void embed_rows(const Model *m, KVReuseWork *w, const int *tokens, int na) {
    int C = m->cfg.n_embd;
    for (int r = 0; r < na; r++)
        m->ops->encoder_forward(w->x + (size_t)r * C, &tokens[w->pos[r]], m->params.wte, 1, 1, C);
}

static void prefill_all_layers(const Model *m, KVReuseWork *w, const int *tokens, int na, int n, KVReuseCost *cost) {
    int keep_n[m->cfg.n_layer];
    for (int l = 0; l < m->cfg.n_layer; l++) keep_n[l] = n;
    embed_rows(m, w, tokens, na);
    run_layers(m, w, na, n, keep_n, 0, cost);
}

void kv_reuse_prefill_full(const Model *m, KVReuseWork *w, const int *tokens, int n, KVReuseCost *cost) {
    CHECK(n >= 1 && n <= w->cap);
    for (int i = 0; i < n; i++) w->pos[i] = i;
    prefill_all_layers(m, w, tokens, n, n, cost);
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
    prefill_all_layers(m, w, tokens, na, n, cost);
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
                memcpy(w->kk + dst, e->k + src, HD * sizeof(float));
                memcpy(w->vv + dst, e->v + src, HD * sizeof(float));
            }
        for (int i = 0, j; i < n; i = j) { // re-rotate keys from position map[i] to i, one call per shift run
            int shift = i - map[i];
            for (j = i + 1; j < n && j - map[j] == shift; j++) {}
            if (shift != 0) m->ops->rope_forward(w->kk + (size_t)i * KVC, j - i, 1, NKV, HD, shift, c->rope_theta);
        }
        for (int i = 0; i < n; i++)
            for (int g = 0; g < NKV; g++) {
                size_t src = (size_t)i * KVC + g * HD;
                memcpy(lane(m, w, w->k, l, g) + (size_t)i * HD, w->kk + src, HD * sizeof(float));
                memcpy(lane(m, w, w->v, l, g) + (size_t)i * HD, w->vv + src, HD * sizeof(float));
            }
    }
    int keep_n[c->n_layer];
    keep_n[0] = n;
    double r = sc->recompute;
    for (int l = 1; l < c->n_layer; l++, r *= sc->layer_decay) keep_n[l] = (int)fmax(1.0, lround(r * n));
    for (int i = 0; i < n; i++) w->pos[i] = i;
    embed_rows(m, w, tokens, n);
    int prune = sc->deep_keep < 1.0f;
    if (prune) memset(w->votes, 0, (size_t)c->n_layer * w->cap * sizeof(float));
    run_layers(m, w, n, n, keep_n, prune ? sc->deep_window : 0, cost);
    if (prune) prune_layers(m, w, sc, n);
}

// The decode step over the work cache: keys rotated on entry, appended as the layer's next row (row pos
// unless the layer was pruned), attention over the rows the layer holds.
static int attend_work(void *ctx, const Model *m, DecodeState *s, int l, int pos) {
    KVReuseWork *w = ctx;
    const ModelConfig *c = &m->cfg;
    int HD = model_head_dim(c), row = w->rows[l];
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

int kv_reuse_decode(const Model *m, KVReuseWork *w, int token) {
    if (w->n >= w->cap) return -1;
    CHECK(model_decode_step_with(m, &w->ds, token, w->n, attend_work, w) == 0);
    w->n++;
    return 0;
}

// --- the workload -------------------------------------------------------------------------------------

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

// KL(p || q) of the softmaxes of two logit vectors, in nats.
static double kl_logits(const float *p, const float *q, int V) {
    double mp = p[argmax(p, V)], mq = q[argmax(q, V)], zp = 0.0, zq = 0.0, kl = 0.0;
    for (int i = 0; i < V; i++) zp += exp(p[i] - mp), zq += exp(q[i] - mq);
    for (int i = 0; i < V; i++) {
        double lp = p[i] - mp - log(zp), lq = q[i] - mq - log(zq);
        kl += exp(lp) * (lp - lq);
    }
    return fmax(kl, 0.0);
}

// The second prompt of a pair of class cls, from the first (a) and an unrelated window (u).
static void make_second(int cls, const int *a, const int *u, int T, const int *tokens, size_t n, int edits, Rng *rng,
                        int *b) {
    int h = T / 2;
    if (cls == KV_REUSE_REORDER) {
        memcpy(b, a + h, (size_t)(T - h) * sizeof(int));
        memcpy(b + T - h, a, (size_t)h * sizeof(int));
        return;
    }
    memcpy(b, cls == KV_REUSE_UNRELATED ? u : a, (size_t)T * sizeof(int));
    for (int e = 0; cls == KV_REUSE_EDIT && e < edits; e++) { // a token from elsewhere in the text, not the same
        int at = (int)rng_below(rng, (uint64_t)T), tries = 0;
        do b[at] = tokens[rng_below(rng, n)];
        while (b[at] == a[at] && ++tries < 100);
    }
}

int kv_eval_reuse(const Model *m, const char *method, const int *tokens, size_t n, const KVReuseConfig *cfg,
                  KVReuseResult *out, char *err) {
    int lsh = strcmp(method, "lsh") == 0, sem = strcmp(method, "semshare") == 0;
    if (!lsh && !sem) return err_set(err, "bad --reuse '%s': valid methods are lsh, semshare", method), -1;
    int T = cfg->context, P = cfg->pairs, G = cfg->gen, V = m->cfg.vocab_size;
    if (T < 2 || T > 8192) return err_set(err, "--eval reuse: --context must be 2..8192 (got %d)", T), -1;
    if (P < 1 || G < 1 || G > 4096 || cfg->edits < 1 || cfg->edits > T)
        return err_set(err, "--eval reuse: need --streams >= 1, 1..4096 generated tokens and 1..context edits"), -1;
    if (n / (size_t)(5 * P) < (size_t)T)
        return err_set(err, "--eval reuse: the text has %zu tokens, fewer than %d windows of %d need", n, 5 * P, T), -1;
    if (kv_semshare_config_validate(&cfg->semshare, err) != 0) return -1;
    KVReuseStore *store;
    if (kv_reuse_store_init(&store, m, &cfg->store, cfg->calib ? cfg->calib : tokens, cfg->calib ? cfg->n_calib : n,
                            err) != 0)
        return -1;
    int cap = T + G, rc = 0;
    KVReuseWork wf, wr;
    kv_reuse_work_init(&wf, m, cap);
    kv_reuse_work_init(&wr, m, cap);
    float *ref = common_calloc((size_t)G * V, sizeof(float)), *ma = common_calloc(m->cfg.n_embd * 4, sizeof(float));
    float *mb = ma + m->cfg.n_embd, *ra = mb + m->cfg.n_embd, *rb = ra + m->cfg.n_embd;
    int *gen = common_calloc((size_t)G, sizeof(int)), *b = common_calloc((size_t)T, sizeof(int));
    int *map = common_calloc((size_t)T, sizeof(int));
    size_t stride = n / (size_t)(5 * P);
    Rng rng;
    rng_init(&rng, cfg->seed);
    *out = (KVReuseResult){0};
    out->n_layer = m->cfg.n_layer < KV_REUSE_MAX_LAYERS ? m->cfg.n_layer : KV_REUSE_MAX_LAYERS;
    KVReuseCost cost[KV_REUSE_CLASSES] = {{0}};
    for (int p = 0; p < P && rc == 0; p++)
        for (int cls = 0; cls < KV_REUSE_CLASSES && rc == 0; cls++) {
            KVReuseClassResult *r = &out->cls[cls];
            const int *a = tokens + (size_t)(5 * p + cls) * stride, *u = tokens + (size_t)(5 * p + 4) * stride;
            make_second(cls, a, u, T, tokens, n, cfg->edits, &rng, b);
            kv_reuse_embed(store, a, T, 1, ma), kv_reuse_embed(store, b, T, 1, mb);
            kv_reuse_embed(store, a, T, 0, ra), kv_reuse_embed(store, b, T, 0, rb);
            double sim = kv_reuse_cosine(ma, mb, m->cfg.n_embd);
            r->sim_min = r->pairs ? fmin(r->sim_min, sim) : sim;
            r->sim_max = r->pairs ? fmax(r->sim_max, sim) : sim;
            r->sim_mean += sim / P;
            r->raw_sim_mean += kv_reuse_cosine(ra, rb, m->cfg.n_embd) / P;
            r->pairs++;
            kv_reuse_prefill_full(m, &wr, a, T, NULL); // the first request, processed normally and stored
            if ((rc = kv_reuse_insert(store, 0, a, T, wr.k, wr.v, cap, err)) != 0) break;
            double t0 = common_now();
            kv_reuse_prefill_full(m, &wf, b, T, NULL); // the second, recomputed in full: the reference
            r->ttft_full_ms += 1e3 * (common_now() - t0) / P;
            for (int s = 0; s < G; s++) {
                if (s > 0) CHECK(kv_reuse_decode(m, &wf, gen[s - 1]) == 0);
                memcpy(ref + (size_t)s * V, wf.ds.logits, (size_t)V * sizeof(float));
                gen[s] = argmax(wf.ds.logits, V);
            }
            t0 = common_now(); // the second with reuse: lookup, KV loading, the partial prefill, any pruning
            const KVReuseEntry *e = kv_reuse_lookup(store, 0, b, T, NULL);
            if (e && lsh) kv_reuse_prefill_lsh(m, &wr, e, b, T, cfg->lsh_recompute, &cost[cls]);
            else if (e) {
                kv_semshare_map(m, &cfg->semshare, e->tokens, e->n, b, T, map);
                kv_reuse_prefill_semshare(m, &wr, e, map, &cfg->semshare, b, T, &cost[cls]);
            } else kv_reuse_prefill_full(m, &wr, b, T, &cost[cls]);
            r->ttft_ms += 1e3 * (common_now() - t0) / P;
            r->kv_bytes += (double)kv_reuse_work_bytes(m, &wr) / P; // before decode appends to it
            r->kv_bytes_full += (double)T * m->cfg.n_layer * 2 * model_kv_dim(&m->cfg) * sizeof(float) / P;
            for (int l = 0; l < out->n_layer; l++) r->kept[l] += (double)wr.rows[l] / P;
            if (e && sem) {
                int same = 0;
                for (int i = 0; i < T; i++) same += e->tokens[map[i]] == b[i];
                r->same_token += (double)same / T;
            }
            r->hits += e != NULL;
            int agree = 0;
            for (int s = 0; s < G; s++) { // teacher-forced on the reference's greedy tokens
                if (s > 0) CHECK(kv_reuse_decode(m, &wr, gen[s - 1]) == 0);
                double kl = kl_logits(ref + (size_t)s * V, wr.ds.logits, V);
                if (s == 0) r->kl_last += kl / P;
                r->kl_gen += kl / ((double)P * G);
                agree += argmax(wr.ds.logits, V) == gen[s];
            }
            r->top1 += (double)agree / ((double)P * G);
            r->greedy_match += (agree == G) / (double)P;
        }
    for (int cls = 0; cls < KV_REUSE_CLASSES; cls++) {
        KVReuseClassResult *r = &out->cls[cls];
        if (r->hits && sem) r->same_token /= r->hits;
        r->layer_tokens_skipped = 1.0 - (double)cost[cls].layer_tokens / (double)cost[cls].layer_tokens_full;
        r->flops_skipped = 1.0 - cost[cls].flops / cost[cls].flops_full;
    }
    kv_reuse_stats(store, &out->store);
    out->entry_bytes = out->store.entries ? out->store.bytes / out->store.entries : 0;
    common_free(ref), common_free(ma), common_free(gen), common_free(b), common_free(map);
    kv_reuse_work_free(&wf);
    kv_reuse_work_free(&wr);
    kv_reuse_store_free(store);
    return rc;
}

void kv_reuse_print_json(const char *method, const KVReuseConfig *cfg, const KVReuseResult *r) {
    const KVReuseStats *s = &r->store;
    const KVSemShareConfig *sc = &cfg->semshare;
    printf("{\"task\": \"reuse\", \"reuse\": \"%s\", \"context\": %d, \"pairs\": %d, \"gen\": %d, \"edits\": %d, "
           "\"threshold\": %.6g, \"min_overlap\": %.6g, \"planes\": %d, \"radius\": %d, \"lsh_recompute\": %d, "
           "\"semshare\": {\"window\": %d, \"decay\": %.6g, \"pos_weight\": %.6g, \"recompute\": %.6g, "
           "\"layer_decay\": %.6g, \"deep_keep\": %.6g, \"deep_sink\": %d, \"deep_recent\": %d, \"deep_window\": %d}, "
           "\"entry_bytes\": %zu, \"store\": {\"lookups\": %lld, \"hits\": %lld, "
           "\"misses\": %lld, \"rejected\": %lld, \"rejected_overlap\": %lld, \"evictions\": %lld, \"entries\": %d, "
           "\"bytes\": %zu}, \"classes\": {",
           method, cfg->context, cfg->pairs, cfg->gen, cfg->edits, cfg->store.threshold, cfg->store.min_overlap,
           cfg->store.planes, cfg->store.radius, cfg->lsh_recompute, sc->window, sc->decay, sc->pos_weight,
           sc->recompute, sc->layer_decay, sc->deep_keep, sc->deep_sink, sc->deep_recent, sc->deep_window,
           r->entry_bytes, s->lookups, s->hits, s->misses, s->rejected,
           s->rejected_overlap, s->evictions, s->entries, s->bytes);
    for (int i = 0; i < KV_REUSE_CLASSES; i++) {
        const KVReuseClassResult *c = &r->cls[i];
        printf("%s\"%s\": {\"pairs\": %d, \"hits\": %d, \"sim_mean\": %.4f, \"sim_min\": %.4f, \"sim_max\": %.4f, "
               "\"raw_sim_mean\": %.4f, \"same_token\": %.4f, \"layer_tokens_skipped\": %.4f, \"flops_skipped\": %.4f, "
               "\"ttft_ms\": %.4g, \"ttft_full_ms\": %.4g, \"kl_last\": %.4g, \"kl_gen\": %.4g, \"top1\": %.4f, "
               "\"greedy_match\": %.4f, \"kv_bytes\": %.0f, \"kv_bytes_full\": %.0f, \"kv_bytes_kept\": %.4f, "
               "\"kept_per_layer\": [",
               i ? ", " : "", kv_reuse_class_names[i], c->pairs, c->hits, c->sim_mean, c->sim_min, c->sim_max,
               c->raw_sim_mean, c->same_token, c->layer_tokens_skipped, c->flops_skipped, c->ttft_ms, c->ttft_full_ms,
               c->kl_last, c->kl_gen, c->top1, c->greedy_match, c->kv_bytes, c->kv_bytes_full,
               c->kv_bytes_full > 0 ? c->kv_bytes / c->kv_bytes_full : 0.0);
        for (int l = 0; l < r->n_layer; l++) printf("%s%.6g", l ? ", " : "", c->kept[l]);
        printf("]}");
    }
    printf("}}\n");
}
