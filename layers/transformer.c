// The model wiring, written once over the op table: forward and backward of the whole decoder stack.
// Parameters live in one allocation, activations in one, gradients of activations in one; nothing is
// allocated inside a training step.
#include "model.h"

#include <math.h>
#include <string.h>

int model_head_dim(const ModelConfig *cfg) { return cfg->n_embd / cfg->n_head; }
int model_kv_dim(const ModelConfig *cfg) { return cfg->n_kv_head * model_head_dim(cfg); }
int model_default_hidden(int n_embd) { return ((8 * n_embd / 3) + 31) / 32 * 32; }

int model_config_validate(const ModelConfig *c, char *err) {
    if (c->vocab_size < 1 || c->vocab_size > 256) return err_set(err, "vocab_size %d is outside 1..256", c->vocab_size), -1;
    if (c->n_layer < 1 || c->n_layer > 256) return err_set(err, "n_layer %d is outside 1..256", c->n_layer), -1;
    if (c->n_head < 1 || c->n_head > 1024) return err_set(err, "n_head %d is outside 1..1024", c->n_head), -1;
    if (c->n_embd < 2 || c->n_embd > 65536) return err_set(err, "n_embd %d is outside 2..65536", c->n_embd), -1;
    if (c->n_embd % c->n_head != 0)
        return err_set(err, "n_head must divide n_embd: n_embd %d is not a multiple of n_head %d", c->n_embd, c->n_head), -1;
    int hd = c->n_embd / c->n_head;
    if (hd % 2 != 0 || hd > 1024)
        return err_set(err, "head dimension n_embd/n_head = %d must be even and at most 1024 (RoPE rotates pairs)", hd), -1;
    if (c->n_kv_head < 1 || c->n_head % c->n_kv_head != 0)
        return err_set(err, "the key/value head count must divide n_head: %d does not divide %d", c->n_kv_head, c->n_head), -1;
    if (c->n_hidden < 1 || c->n_hidden > 1 << 20) return err_set(err, "n_hidden %d is outside 1..1048576", c->n_hidden), -1;
    if (c->block_size < 1 || c->block_size > 1 << 16) return err_set(err, "block_size %d is outside 1..65536", c->block_size), -1;
    if (!(c->rope_theta > 1.0f) || !isfinite(c->rope_theta)) return err_set(err, "rope_theta %g must be > 1", c->rope_theta), -1;
    if (!(c->norm_eps > 0.0f) || !(c->norm_eps < 1.0f)) return err_set(err, "norm_eps %g must be in (0, 1)", c->norm_eps), -1;
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f)) return err_set(err, "dropout %g must be in [0, 1)", c->dropout), -1;
    return 0;
}

void model_param_sizes(const ModelConfig *c, size_t s[NUM_PARAM_TENSORS]) {
    size_t V = c->vocab_size, L = c->n_layer, C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden;
    s[0] = V * C;       // wte
    s[1] = L * C;       // attn_norm
    s[2] = L * C * C;   // wq
    s[3] = L * KVC * C; // wk
    s[4] = L * KVC * C; // wv
    s[5] = L * C * C;   // wo
    s[6] = L * C;       // mlp_norm
    s[7] = L * H * C;   // w1
    s[8] = L * H * C;   // w3
    s[9] = L * C * H;   // w2
    s[10] = C;          // final_norm
}

size_t model_param_count(const ModelConfig *c) {
    size_t s[NUM_PARAM_TENSORS], n = 0;
    model_param_sizes(c, s);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += s[i];
    return n;
}

static void point_tensors(float **fields[], const size_t *sizes, int count, float *memory) {
    for (int i = 0; i < count; i++) {
        *fields[i] = memory;
        memory += sizes[i];
    }
}

void model_param_point(ParamTensors *t, float *memory, const ModelConfig *c) {
    size_t s[NUM_PARAM_TENSORS];
    model_param_sizes(c, s);
    float **f[NUM_PARAM_TENSORS] = {&t->wte, &t->attn_norm, &t->wq, &t->wk, &t->wv, &t->wo,
                                    &t->mlp_norm, &t->w1, &t->w3, &t->w2, &t->final_norm};
    point_tensors(f, s, NUM_PARAM_TENSORS, memory);
}

int model_param_is_decayed(int i) { return !(i == 1 || i == 6 || i == 10); }

const char *model_param_name(int i) {
    static const char *const names[NUM_PARAM_TENSORS] = {"wte", "attn_norm", "wq", "wk", "wv", "wo",
                                                         "mlp_norm", "w1", "w3", "w2", "final_norm"};
    CHECK(i >= 0 && i < NUM_PARAM_TENSORS);
    return names[i];
}

int model_params_describe_nonfinite(const ModelConfig *c, const float *params, char *what, size_t len) {
    size_t s[NUM_PARAM_TENSORS];
    model_param_sizes(c, s);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        for (size_t j = 0; j < s[i]; j++) {
            if (!isfinite(params[j])) {
                snprintf(what, len, "tensor %s holds %g at element %zu", model_param_name(i), (double)params[j], j);
                return 1;
            }
        }
        params += s[i];
    }
    return 0;
}

void model_init(Model *m, const ModelConfig *cfg, const Ops *ops) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    m->ops = ops;
    m->n_params = model_param_count(cfg);
    m->params_memory = ops->mem_alloc(m->n_params * sizeof(float));
    model_param_point(&m->params, m->params_memory, cfg);
    m->mean_loss = -1.0f;
    rng_init(&m->dropout_rng, 0);
}

static void free_acts(Model *m) {
    const Ops *op = m->ops;
    op->mem_free(m->acts_memory);
    op->mem_free(m->grad_acts_memory);
    op->mem_free(m->grads_memory);
    op->mem_free(m->tokens_dev);
    op->mem_free(m->targets_dev);
    common_free(m->losses_host);
    m->acts_memory = m->grad_acts_memory = m->grads_memory = m->losses_host = NULL;
    m->tokens_dev = m->targets_dev = NULL;
    m->act_B = m->act_T = 0;
}

void model_free(Model *m) {
    if (m->ops) {
        free_acts(m);
        m->ops->mem_free(m->params_memory);
    }
    memset(m, 0, sizeof(*m));
}

void model_params_download(const Model *m, float *dst) {
    m->ops->mem_download(dst, m->params_memory, m->n_params * sizeof(float));
}

void model_params_upload(Model *m, const float *src) {
    m->ops->mem_upload(m->params_memory, src, m->n_params * sizeof(float));
}

void model_to_backend(Model *m, const Ops *ops) {
    if (ops == m->ops) return;
    free_acts(m);
    float *host = common_calloc(m->n_params, sizeof(float));
    model_params_download(m, host);
    m->ops->mem_free(m->params_memory);
    m->ops = ops;
    m->params_memory = ops->mem_alloc(m->n_params * sizeof(float));
    model_param_point(&m->params, m->params_memory, &m->cfg);
    model_params_upload(m, host);
    common_free(host);
}

void model_init_weights(Model *m, uint64_t seed) {
    const ModelConfig *c = &m->cfg;
    size_t s[NUM_PARAM_TENSORS];
    model_param_sizes(c, s);
    Rng rng;
    rng_init(&rng, seed);
    // drawn on the host in one fixed order, so every backend starts from the same weights
    float *host = m->ops->on_device ? common_calloc(m->n_params, sizeof(float)) : m->params_memory;
    float *p = host;
    float resid_scale = 1.0f / sqrtf(2.0f * c->n_layer);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        int is_norm = !model_param_is_decayed(i);
        float std = (i == 5 || i == 9) ? 0.02f * resid_scale : 0.02f;
        for (size_t j = 0; j < s[i]; j++) p[j] = is_norm ? 1.0f : std * rng_normal(&rng);
        p += s[i];
    }
    if (host != m->params_memory) {
        model_params_upload(m, host);
        common_free(host);
    }
}

void model_act_counts(const ModelConfig *c, int B, int T, double a[NUM_ACT_TENSORS],
                      double g[NUM_GRAD_ACT_TENSORS]) {
    double L = c->n_layer, C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, V = c->vocab_size;
    double NH = c->n_head, BT = (double)B * T, TT = (double)T * T, drop = c->dropout > 0.0f;
    double acts[NUM_ACT_TENSORS] = {
        (L + 1) * BT * C, L * BT * C, L * BT, L * BT * C, L * BT * KVC, L * BT * KVC, L * B * NH * TT,
        L * BT * C, L * BT * C, drop * L * BT * C, L * BT * C, L * BT * C, L * BT, L * BT * H, L * BT * H,
        L * BT * H, L * BT * C, drop * L * BT * C, BT * C, BT, BT * V, BT * V, BT};
    double grads[NUM_GRAD_ACT_TENSORS] = {BT * C, BT * C, BT * C, BT * C, BT * C, BT * KVC, BT * KVC,
                                          BT * H, BT * H, BT * H, BT * V, B * NH * TT};
    memcpy(a, acts, sizeof acts);
    memcpy(g, grads, sizeof grads);
}

double model_train_act_bytes(const ModelConfig *c, int B, int T) {
    double a[NUM_ACT_TENSORS], g[NUM_GRAD_ACT_TENSORS];
    model_act_counts(c, B, T, a, g);
    double n = 0.0;
    for (int i = 0; i < NUM_ACT_TENSORS; i++) n += a[i];
    for (int i = 0; i < NUM_GRAD_ACT_TENSORS; i++) n += g[i];
    return n * sizeof(float);
}

double model_inference_act_bytes(const ModelConfig *c, int B, int T) {
    double a[NUM_ACT_TENSORS], g[NUM_GRAD_ACT_TENSORS];
    model_act_counts(c, B, T, a, g);
    double n = 0.0;
    for (int i = 0; i < NUM_ACT_TENSORS; i++) n += a[i];
    return n * sizeof(float);
}

// Element counts as sizes; the callers sized the run first (train/), so a count past 2^53 is a bug.
static void counts_to_sizes(const double *x, size_t *out, int count) {
    for (int i = 0; i < count; i++) {
        CHECK(x[i] >= 0.0 && x[i] < 9007199254740992.0);
        out[i] = (size_t)x[i];
    }
}

static void alloc_acts(Model *m, int B, int T, int with_grads) {
    if (m->acts_memory && B <= m->act_B && T <= m->act_T && (m->grads_memory || !with_grads)) return;
    free_acts(m);
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    size_t BT = (size_t)B * T;
    double ad[NUM_ACT_TENSORS], gd[NUM_GRAD_ACT_TENSORS];
    model_act_counts(c, B, T, ad, gd);
    size_t a[NUM_ACT_TENSORS];
    counts_to_sizes(ad, a, NUM_ACT_TENSORS);
    ActTensors *t = &m->acts;
    float **af[NUM_ACT_TENSORS] = {&t->resid, &t->ln1, &t->ln1_rstd, &t->q, &t->k, &t->v, &t->att, &t->atty,
                                   &t->attproj, &t->attdrop, &t->resid_mid, &t->ln2, &t->ln2_rstd, &t->h1,
                                   &t->h3, &t->hg, &t->mlp, &t->mlpdrop, &t->lnf, &t->lnf_rstd, &t->logits,
                                   &t->probs, &t->losses};
    size_t n = 0;
    for (int i = 0; i < NUM_ACT_TENSORS; i++) n += a[i];
    m->acts_memory = op->mem_alloc(n * sizeof(float));
    point_tensors(af, a, NUM_ACT_TENSORS, m->acts_memory);
    m->act_B = B;
    m->act_T = T;
    if (op->on_device) {
        m->tokens_dev = op->mem_alloc(BT * sizeof(int));
        m->targets_dev = op->mem_alloc(BT * sizeof(int));
        m->losses_host = common_calloc(BT, sizeof(float));
    }
    if (!with_grads) return;

    size_t g[NUM_GRAD_ACT_TENSORS];
    counts_to_sizes(gd, g, NUM_GRAD_ACT_TENSORS);
    GradActs *d = &m->grad_acts;
    float **gf[NUM_GRAD_ACT_TENSORS] = {&d->dx, &d->dln, &d->dbranch, &d->datty, &d->dq, &d->dk, &d->dv,
                                        &d->dhg, &d->dh1, &d->dh3, &d->dlogits, &d->scratch};
    n = 0;
    for (int i = 0; i < NUM_GRAD_ACT_TENSORS; i++) n += g[i];
    m->grad_acts_memory = op->mem_alloc(n * sizeof(float));
    point_tensors(gf, g, NUM_GRAD_ACT_TENSORS, m->grad_acts_memory);

    m->grads_memory = op->mem_alloc(m->n_params * sizeof(float));
    model_param_point(&m->grads, m->grads_memory, c);
}

void model_alloc_acts(Model *m, int B, int T) { alloc_acts(m, B, T, 1); }
void model_alloc_inference_acts(Model *m, int B, int T) { alloc_acts(m, B, T, 0); }

void model_forward(Model *m, const int *tokens, const int *targets, int B, int T, int train) {
    CHECK(m->acts_memory && B <= m->act_B && T <= m->act_T && T <= m->cfg.block_size);
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params;
    const ActTensors *a = &m->acts;
    int L = c->n_layer, C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, V = c->vocab_size;
    int NH = c->n_head, NKV = c->n_kv_head, HD = model_head_dim(c), BT = B * T;
    size_t BTC = (size_t)BT * C, BTKV = (size_t)BT * KVC, BTH = (size_t)BT * H;
    m->dropout_active = train && c->dropout > 0.0f;
    if (op->on_device) { // the ops read tokens and targets in the backend's memory
        op->mem_upload(m->tokens_dev, tokens, (size_t)BT * sizeof(int));
        tokens = m->tokens_dev;
        if (targets) {
            op->mem_upload(m->targets_dev, targets, (size_t)BT * sizeof(int));
            targets = m->targets_dev;
        }
    }

    op->encoder_forward(a->resid, tokens, p->wte, B, T, C);
    for (int l = 0; l < L; l++) {
        float *x = a->resid + l * BTC, *ln1 = a->ln1 + l * BTC, *q = a->q + l * BTC;
        float *k = a->k + l * BTKV, *v = a->v + l * BTKV, *atty = a->atty + l * BTC;
        float *attproj = a->attproj + l * BTC, *mid = a->resid_mid + l * BTC, *ln2 = a->ln2 + l * BTC;
        float *h1 = a->h1 + l * BTH, *h3 = a->h3 + l * BTH, *hg = a->hg + l * BTH, *mlp = a->mlp + l * BTC;
        float *attdrop = NULL, *mlpdrop = NULL;
        if (m->dropout_active) {
            attdrop = a->attdrop + l * BTC;
            mlpdrop = a->mlpdrop + l * BTC;
            op->dropout_mask(attdrop, BTC, c->dropout, &m->dropout_rng);
            op->dropout_mask(mlpdrop, BTC, c->dropout, &m->dropout_rng);
        }
        op->rmsnorm_forward(ln1, a->ln1_rstd + (size_t)l * BT, x, p->attn_norm + (size_t)l * C, BT, C, c->norm_eps);
        op->matmul_forward(q, ln1, p->wq + (size_t)l * C * C, BT, C, C);
        op->matmul_forward(k, ln1, p->wk + (size_t)l * KVC * C, BT, C, KVC);
        op->matmul_forward(v, ln1, p->wv + (size_t)l * KVC * C, BT, C, KVC);
        op->rope_forward(q, B, T, NH, HD, 0, c->rope_theta);
        op->rope_forward(k, B, T, NKV, HD, 0, c->rope_theta);
        op->attention_forward(atty, a->att + (size_t)l * B * NH * T * T, q, k, v, B, T, NH, NKV, HD);
        op->matmul_forward(attproj, atty, p->wo + (size_t)l * C * C, BT, C, C);
        op->residual_forward(mid, x, attproj, attdrop, BTC);
        op->rmsnorm_forward(ln2, a->ln2_rstd + (size_t)l * BT, mid, p->mlp_norm + (size_t)l * C, BT, C, c->norm_eps);
        op->matmul_forward(h1, ln2, p->w1 + (size_t)l * H * C, BT, C, H);
        op->matmul_forward(h3, ln2, p->w3 + (size_t)l * H * C, BT, C, H);
        op->swiglu_forward(hg, h1, h3, BTH);
        op->matmul_forward(mlp, hg, p->w2 + (size_t)l * C * H, BT, H, C);
        op->residual_forward(a->resid + (l + 1) * BTC, mid, mlp, mlpdrop, BTC);
    }
    op->rmsnorm_forward(a->lnf, a->lnf_rstd, a->resid + L * BTC, p->final_norm, BT, C, c->norm_eps);
    op->matmul_forward(a->logits, a->lnf, p->wte, BT, C, V); // tied output projection
    op->crossentropy_forward(targets ? a->losses : NULL, a->probs, a->logits, targets, BT, V);
    m->mean_loss = -1.0f;
    if (targets) {
        const float *losses = a->losses;
        if (op->on_device) {
            op->mem_download(m->losses_host, a->losses, (size_t)BT * sizeof(float));
            losses = m->losses_host;
        }
        double sum = 0.0;
        for (int i = 0; i < BT; i++) sum += losses[i];
        m->mean_loss = (float)(sum / BT);
    }
}

void model_zero_grad(Model *m) {
    if (m->grads_memory) m->ops->fill_zero(m->grads_memory, m->n_params);
}

void model_backward(Model *m, const int *tokens, const int *targets, int B, int T) {
    CHECK(m->grads_memory && m->mean_loss >= 0.0f);
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params, *g = &m->grads;
    const ActTensors *a = &m->acts;
    const GradActs *d = &m->grad_acts;
    int L = c->n_layer, C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, V = c->vocab_size;
    int NH = c->n_head, NKV = c->n_kv_head, HD = model_head_dim(c), BT = B * T;
    size_t BTC = (size_t)BT * C, BTKV = (size_t)BT * KVC, BTH = (size_t)BT * H;
    if (op->on_device) { // the forward uploaded these same tokens and targets
        tokens = m->tokens_dev;
        targets = m->targets_dev;
    }

    // loss = mean over the B*T positions
    op->crossentropy_backward(d->dlogits, a->probs, targets, 1.0f / BT, BT, V);
    op->fill_zero(d->dln, BTC);
    op->matmul_backward(d->dln, g->wte, d->dlogits, a->lnf, p->wte, BT, C, V);
    op->fill_zero(d->dx, BTC);
    op->rmsnorm_backward(d->dx, g->final_norm, d->dln, a->resid + L * BTC, p->final_norm, a->lnf_rstd, BT, C);

    for (int l = L - 1; l >= 0; l--) {
        const float *x = a->resid + l * BTC, *ln1 = a->ln1 + l * BTC, *q = a->q + l * BTC;
        const float *k = a->k + l * BTKV, *v = a->v + l * BTKV, *atty = a->atty + l * BTC;
        const float *mid = a->resid_mid + l * BTC, *ln2 = a->ln2 + l * BTC;
        const float *h1 = a->h1 + l * BTH, *h3 = a->h3 + l * BTH, *hg = a->hg + l * BTH;
        size_t lC = (size_t)l * C, lCC = (size_t)l * C * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;

        // MLP branch: resid[l+1] = mid + dropout(w2 @ swiglu(w1 ln2, w3 ln2))
        const float *dmlp = d->dx;
        if (m->dropout_active) {
            op->dropout_apply(d->dbranch, d->dx, a->mlpdrop + l * BTC, BTC);
            dmlp = d->dbranch;
        }
        op->fill_zero(d->dhg, BTH);
        op->matmul_backward(d->dhg, g->w2 + lHC, dmlp, hg, p->w2 + lHC, BT, H, C);
        op->fill_zero(d->dh1, BTH);
        op->fill_zero(d->dh3, BTH);
        op->swiglu_backward(d->dh1, d->dh3, d->dhg, h1, h3, BTH);
        op->fill_zero(d->dln, BTC);
        op->matmul_backward(d->dln, g->w1 + lHC, d->dh1, ln2, p->w1 + lHC, BT, C, H);
        op->matmul_backward(d->dln, g->w3 + lHC, d->dh3, ln2, p->w3 + lHC, BT, C, H);
        op->rmsnorm_backward(d->dx, g->mlp_norm + lC, d->dln, mid, p->mlp_norm + lC, a->ln2_rstd + (size_t)l * BT, BT, C);

        // attention branch: mid = resid[l] + dropout(wo @ attention(rope(wq ln1), rope(wk ln1), wv ln1))
        const float *dproj = d->dx;
        if (m->dropout_active) {
            op->dropout_apply(d->dbranch, d->dx, a->attdrop + l * BTC, BTC);
            dproj = d->dbranch;
        }
        op->fill_zero(d->datty, BTC);
        op->matmul_backward(d->datty, g->wo + lCC, dproj, atty, p->wo + lCC, BT, C, C);
        op->fill_zero(d->dq, BTC);
        op->fill_zero(d->dk, BTKV);
        op->fill_zero(d->dv, BTKV);
        op->attention_backward(d->dq, d->dk, d->dv, d->scratch, d->datty, a->att + (size_t)l * B * NH * T * T, q, k,
                               v, B, T, NH, NKV, HD);
        op->rope_backward(d->dq, B, T, NH, HD, 0, c->rope_theta);
        op->rope_backward(d->dk, B, T, NKV, HD, 0, c->rope_theta);
        op->fill_zero(d->dln, BTC);
        op->matmul_backward(d->dln, g->wq + lCC, d->dq, ln1, p->wq + lCC, BT, C, C);
        op->matmul_backward(d->dln, g->wk + lKC, d->dk, ln1, p->wk + lKC, BT, C, KVC);
        op->matmul_backward(d->dln, g->wv + lKC, d->dv, ln1, p->wv + lKC, BT, C, KVC);
        op->rmsnorm_backward(d->dx, g->attn_norm + lC, d->dln, x, p->attn_norm + lC, a->ln1_rstd + (size_t)l * BT, BT, C);
    }
    op->encoder_backward(g->wte, d->dx, tokens, B, T, C);
}
