// The model's memory: the config checks, the parameter layout (one allocation, ParamTensors order), the weights'
// initialisation, moves between backends, and the activation buffers a pass needs (one allocation for the
// activations, one for their gradients), sized before any step so that nothing is allocated inside one. The
// passes themselves are transformer.c.
#include "model.h"

#include <math.h>
#include <string.h>

int model_head_dim(const ModelConfig *cfg) { return cfg->n_embd / cfg->n_head; }
int model_kv_dim(const ModelConfig *cfg) { return cfg->n_kv_head * model_head_dim(cfg); }
int model_default_hidden(int n_embd) { return ((8 * n_embd / 3) + 31) / 32 * 32; }

int model_config_validate(const ModelConfig *c, char *err) {
    // Character models have at most 256 symbols (the checkpoint format keeps that bound); imported BPE models
    // (checkpoints/gguf.c) have tens of thousands.
    if (c->vocab_size < 1 || c->vocab_size > 1 << 20) return err_set(err, "vocab_size %d is outside 1..1048576", c->vocab_size), -1;
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

void model_act_counts(const ModelConfig *c, int B, int T, ModelAttention attn, double a[NUM_ACT_TENSORS],
                      double g[NUM_GRAD_ACT_TENSORS]) {
    double L = c->n_layer, C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, V = c->vocab_size;
    double NH = c->n_head, BT = (double)B * T, drop = c->dropout > 0.0f;
    double TT = attn == MODEL_ATTENTION_FLASH ? (double)T : (double)T * T; // per head: lse or probabilities
    double scratch = attn == MODEL_ATTENTION_FLASH ? 0.0 : B * NH * TT;
    double acts[NUM_ACT_TENSORS] = {
        (L + 1) * BT * C, L * BT * C, L * BT, L * BT * C, L * BT * KVC, L * BT * KVC, L * B * NH * TT,
        L * BT * C, L * BT * C, drop * L * BT * C, L * BT * C, L * BT * C, L * BT, L * BT * H, L * BT * H,
        L * BT * H, L * BT * C, drop * L * BT * C, BT * C, BT, BT * V, BT * V, BT};
    double grads[NUM_GRAD_ACT_TENSORS] = {3 * BT * C,  2 * BT * C,  drop * 2 * BT * C, drop * 2 * BT * C,
                                          2 * BT * H,  2 * BT * H,  2 * BT * C,        2 * BT * KVC,
                                          2 * BT * KVC, BT * C,     BT * C,            BT * C,
                                          BT * H,      BT * V,      scratch,           5.0 * B * C};
    memcpy(a, acts, sizeof acts);
    memcpy(g, grads, sizeof grads);
}

// Bytes of the activations, and with grads their gradients, that alloc_acts allocates.
static double act_bytes(const ModelConfig *c, int B, int T, ModelAttention attn, int grads) {
    double a[NUM_ACT_TENSORS], g[NUM_GRAD_ACT_TENSORS], n = 0.0;
    model_act_counts(c, B, T, attn, a, g);
    for (int i = 0; i < NUM_ACT_TENSORS; i++) n += grads && i == ACT_PROBS ? 0.0 : a[i]; // probs share dlogits
    for (int i = 0; grads && i < NUM_GRAD_ACT_TENSORS; i++) n += g[i];
    return n * sizeof(float);
}

double model_train_act_bytes(const ModelConfig *c, int B, int T, ModelAttention attn) { return act_bytes(c, B, T, attn, 1); }
double model_inference_act_bytes(const ModelConfig *c, int B, int T, ModelAttention attn) { return act_bytes(c, B, T, attn, 0); }

// Element counts as sizes; the callers sized the run first (train/), so a count past 2^53 is a bug.
static void counts_to_sizes(const double *x, size_t *out, int count) {
    for (int i = 0; i < count; i++) {
        CHECK(x[i] >= 0.0 && x[i] < 9007199254740992.0);
        out[i] = (size_t)x[i];
    }
}

static void alloc_acts(Model *m, int B, int T, int with_grads) {
    int flash = m->attention == MODEL_ATTENTION_FLASH;
    if (m->acts_memory && B <= m->act_B && T <= m->act_T && (m->grads_memory || !with_grads) && flash == m->act_flash)
        return;
    free_acts(m);
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    size_t BT = (size_t)B * T;
    double ad[NUM_ACT_TENSORS], gd[NUM_GRAD_ACT_TENSORS];
    model_act_counts(c, B, T, m->attention, ad, gd);
    size_t a[NUM_ACT_TENSORS];
    counts_to_sizes(ad, a, NUM_ACT_TENSORS);
    if (with_grads) a[ACT_PROBS] = 0; // a training model's scoring forward writes them into dlogits (below)
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
    m->act_flash = flash;
    if (op->on_device) {
        m->tokens_dev = op->mem_alloc(BT * sizeof(int));
        m->targets_dev = op->mem_alloc(BT * sizeof(int));
        m->losses_host = common_calloc(BT, sizeof(float));
    }
    if (!with_grads) return;

    size_t g[NUM_GRAD_ACT_TENSORS];
    counts_to_sizes(gd, g, NUM_GRAD_ACT_TENSORS);
    GradActs *d = &m->grad_acts;
    float **gf[NUM_GRAD_ACT_TENSORS] = {&d->dres, &d->dmid, &d->dmlp,  &d->dproj, &d->dh1,     &d->dh3,
                                        &d->dq,   &d->dk,   &d->dv,    &d->dln,   &d->dnorm,   &d->datty,
                                        &d->dhg,  &d->dlogits, &d->scratch, &d->dnorm_w};
    n = 0;
    for (int i = 0; i < NUM_GRAD_ACT_TENSORS; i++) n += g[i];
    m->grad_acts_memory = op->mem_alloc(n * sizeof(float));
    point_tensors(gf, g, NUM_GRAD_ACT_TENSORS, m->grad_acts_memory);
    t->probs = d->dlogits; // the backward recomputes the loss gradient from the logits, never from probs

    m->grads_memory = op->mem_alloc(m->n_params * sizeof(float));
    model_param_point(&m->grads, m->grads_memory, c);
}

void model_alloc_acts(Model *m, int B, int T) { alloc_acts(m, B, T, 1); }
void model_alloc_inference_acts(Model *m, int B, int T) { alloc_acts(m, B, T, 0); }
