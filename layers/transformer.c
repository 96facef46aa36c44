// The model wiring, written once over the op table: forward and backward of the whole decoder stack.
// Parameters live in one allocation, activations in one, gradients of activations in one; nothing is
// allocated inside a training step. On the CPU a pass runs over chunks of sequences spread across the OpenMP
// threads (the schedule, below); on a device backend, or with one thread, over the whole batch at once.
#include "model.h"

#include <math.h>
#include <omp.h>
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
    for (int i = 0; i < NUM_ACT_TENSORS; i++) n += a[i];
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

    m->grads_memory = op->mem_alloc(m->n_params * sizeof(float));
    model_param_point(&m->grads, m->grads_memory, c);
}

void model_alloc_acts(Model *m, int B, int T) { alloc_acts(m, B, T, 1); }
void model_alloc_inference_acts(Model *m, int B, int T) { alloc_acts(m, B, T, 0); }

// --- the schedule ----------------------------------------------------------------------------------------
//
// A forward or backward pass runs over chunks of whole sequences. Everything but the weight gradients works row
// by row or, for attention, sequence by sequence, so a chunk goes through the whole forward (every layer, the
// loss) without waiting for any other chunk. In the backward, a chunk goes down one layer at a time computing
// the activation gradients (the "rows" step; the norm weights' gradients land in a per-chunk partial), and the
// weight gradients of layer l (one task per matrix: dW += dY^T X over all rows, and the partial norm sums) run
// while the chunks already go through layer l - 1: one barrier per layer. On the CPU the chunks and tasks are
// handed out dynamically to the OpenMP team, and every op inside runs on its calling thread (nested regions
// are serial; OpenBLAS runs single-threaded inside a parallel region): a pass has no barrier inside a layer,
// the forward none at all, and a thread that is descheduled on a shared machine holds up one chunk, not every
// op. Each chunk and task computes the same thing whichever thread runs it, so for a given chunking the
// results are the same bits on any run. With one chunk (the WHOLE schedule: a device backend, one thread, a
// batch too small to split) the same steps run in the same order on the calling thread, each op over the whole
// batch and parallel inside.

// Chunks per thread: two let a thread that runs ahead take over part of a slower one's share, and keep each
// chunk's products large (OpenBLAS packs the weights once per call: on the baby shape, 2 threads, the step
// took about 3% more CPU time in 4 chunks than in 2, 13% more in 6; one-sequence chunks of 64 rows cost 25%).
#define CHUNKS_PER_THREAD 2

enum { WTASK_W1, WTASK_W3, WTASK_W2, WTASK_WQ, WTASK_WO, WTASK_WK, WTASK_WV, WTASK_NORMS, NUM_WTASKS };
enum { TOP_WTE, TOP_FINAL_NORM, NUM_TOP_TASKS }; // run with layer 0's tasks

typedef struct {
    Model *m;
    const int *tokens, *targets;
    int B, T;
    int seqs, nchunks; // sequences per chunk, chunks
    int chunked;       // 1: per-chunk partial norm gradients, a parallel team; 0: one chunk, ops parallel inside
} Pass;

static Pass pass_plan(Model *m, const int *tokens, const int *targets, int B, int T) {
    Pass ps = {m, tokens, targets, B, T, B, 1, 0};
    if (m->ops->on_device || m->schedule == MODEL_SCHEDULE_WHOLE || B < 2) return ps;
    int threads = omp_get_max_threads(), seqs = 1;
    if (m->schedule == MODEL_SCHEDULE_AUTO) {
        if (threads < 2) return ps;
        int want = CHUNKS_PER_THREAD * threads;
        seqs = (B + want - 1) / want;
        if ((B + seqs - 1) / seqs < threads) return ps; // fewer chunks than threads: parallel inside the ops
    }
    ps.seqs = seqs, ps.nchunks = (B + seqs - 1) / seqs, ps.chunked = 1;
    return ps;
}

int model_pass_chunks(Model *m, int B, int T) { return pass_plan(m, NULL, NULL, B, T).nchunks; }

// Chunk c: sequences [b0, b0 + nb), rows [r0, r0 + nr) of the B * T rows.
typedef struct {
    int c, b0, nb;
    size_t r0, nr;
} Chunk;

static Chunk pass_chunk(const Pass *ps, int c) {
    int b0 = c * ps->seqs, nb = ps->B - b0 < ps->seqs ? ps->B - b0 : ps->seqs;
    return (Chunk){c, b0, nb, (size_t)b0 * ps->T, (size_t)nb * ps->T};
}

static void forward_chunk(const Pass *ps, const Chunk *ch) {
    Model *m = ps->m;
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params;
    const ActTensors *a = &m->acts;
    int B = ps->B, T = ps->T, L = c->n_layer, C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden;
    int V = c->vocab_size, NH = c->n_head, NKV = c->n_kv_head, HD = model_head_dim(c), nb = ch->nb;
    size_t BT = (size_t)B * T, r0 = ch->r0, nr = ch->nr, BTC = BT * C, BTKV = BT * KVC, BTH = BT * H;
    size_t rC = r0 * C, rKV = r0 * KVC, rH = r0 * H, nrC = nr * C, TT = (size_t)T * T;

    op->encoder_forward(a->resid + rC, ps->tokens + r0, p->wte, nb, T, C);
    for (int l = 0; l < L; l++) {
        float *x = a->resid + l * BTC + rC, *ln1 = a->ln1 + l * BTC + rC, *q = a->q + l * BTC + rC;
        float *k = a->k + l * BTKV + rKV, *v = a->v + l * BTKV + rKV, *atty = a->atty + l * BTC + rC;
        float *attproj = a->attproj + l * BTC + rC, *mid = a->resid_mid + l * BTC + rC, *ln2 = a->ln2 + l * BTC + rC;
        float *h1 = a->h1 + l * BTH + rH, *h3 = a->h3 + l * BTH + rH, *hg = a->hg + l * BTH + rH;
        float *mlp = a->mlp + l * BTC + rC;
        const float *attdrop = m->dropout_active ? a->attdrop + l * BTC + rC : NULL;
        const float *mlpdrop = m->dropout_active ? a->mlpdrop + l * BTC + rC : NULL;
        op->rmsnorm_forward(ln1, a->ln1_rstd + l * BT + r0, x, p->attn_norm + (size_t)l * C, nr, C, c->norm_eps);
        float *qkv[3] = {q, k, v};
        const float *wqkv[3] = {p->wq + (size_t)l * C * C, p->wk + (size_t)l * KVC * C, p->wv + (size_t)l * KVC * C};
        const int qkv_dim[3] = {C, KVC, KVC};
        op->matmul_many_forward(qkv, ln1, wqkv, qkv_dim, 3, nr, C); // one product on a device
        op->rope_forward(q, nb, T, NH, HD, 0, c->rope_theta);
        op->rope_forward(k, nb, T, NKV, HD, 0, c->rope_theta);
        float *att = a->att + ((size_t)l * B + ch->b0) * NH * (m->act_flash ? (size_t)T : TT); // lse or probabilities
        if (m->act_flash) op->attention_flash_forward(atty, att, q, k, v, nb, T, NH, NKV, HD);
        else op->attention_forward(atty, att, q, k, v, nb, T, NH, NKV, HD);
        op->matmul_forward(attproj, atty, p->wo + (size_t)l * C * C, nr, C, C);
        op->residual_forward(mid, x, attproj, attdrop, nrC);
        op->rmsnorm_forward(ln2, a->ln2_rstd + l * BT + r0, mid, p->mlp_norm + (size_t)l * C, nr, C, c->norm_eps);
        float *h13[2] = {h1, h3};
        const float *w13[2] = {p->w1 + (size_t)l * H * C, p->w3 + (size_t)l * H * C};
        const int h13_dim[2] = {H, H};
        op->matmul_many_forward(h13, ln2, w13, h13_dim, 2, nr, C);
        op->swiglu_forward(hg, h1, h3, nr * H);
        op->matmul_forward(mlp, hg, p->w2 + (size_t)l * C * H, nr, H, C);
        op->residual_forward(a->resid + (l + 1) * BTC + rC, mid, mlp, mlpdrop, nrC);
    }
    op->rmsnorm_forward(a->lnf + rC, a->lnf_rstd + r0, a->resid + L * BTC + rC, p->final_norm, nr, C, c->norm_eps);
    op->matmul_forward(a->logits + r0 * V, a->lnf + rC, p->wte, nr, C, V); // tied output projection
    if (m->loss_fused) // the training step: the loss gradient now, in the same pass, without probs
        op->crossentropy_fused(a->losses + r0, m->grad_acts.dlogits + r0 * V, a->logits + r0 * V, ps->targets + r0,
                               1.0f / BT, nr, V);
    else
        op->crossentropy_forward(ps->targets ? a->losses + r0 : NULL, a->probs + r0 * V, a->logits + r0 * V,
                                 ps->targets ? ps->targets + r0 : NULL, nr, V);
}

void model_forward(Model *m, const int *tokens, const int *targets, int B, int T, int train) {
    CHECK(m->acts_memory && B <= m->act_B && T <= m->act_T && T <= m->cfg.block_size);
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ActTensors *a = &m->acts;
    int L = c->n_layer, BT = B * T;
    size_t BTC = (size_t)BT * c->n_embd;
    m->dropout_active = train && c->dropout > 0.0f;
    m->loss_fused = train && targets && m->grad_acts_memory;
    if (op->on_device) { // the ops read tokens and targets in the backend's memory
        op->mem_upload(m->tokens_dev, tokens, (size_t)BT * sizeof(int));
        tokens = m->tokens_dev;
        if (targets) {
            op->mem_upload(m->targets_dev, targets, (size_t)BT * sizeof(int));
            targets = m->targets_dev;
        }
    }
    if (m->dropout_active) // drawn up front in one fixed order (layer by layer, attention then MLP)
        for (int l = 0; l < L; l++) {
            op->dropout_mask(a->attdrop + l * BTC, BTC, c->dropout, &m->dropout_rng);
            op->dropout_mask(a->mlpdrop + l * BTC, BTC, c->dropout, &m->dropout_rng);
        }

    Pass ps = pass_plan(m, tokens, targets, B, T);
#pragma omp parallel for schedule(dynamic, 1) if (ps.chunked)
    for (int i = 0; i < ps.nchunks; i++) {
        Chunk ch = pass_chunk(&ps, i);
        forward_chunk(&ps, &ch);
    }

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

// Where a norm's weight gradient goes: straight into the parameter gradient with one chunk, else into this
// chunk's partial (zeroed here), summed by the norms task. which: 0 attn_norm, 1 mlp_norm, 2 final_norm.
static float *norm_weight_grad(const Pass *ps, const Chunk *ch, int which, int l, float *param_grad) {
    if (!ps->chunked) return param_grad;
    const Model *m = ps->m;
    int C = m->cfg.n_embd, set = which == 2 ? 4 : which * 2 + (l & 1);
    float *part = m->grad_acts.dnorm_w + ((size_t)set * ps->B + ch->c) * C;
    m->ops->fill_zero(part, C);
    return part;
}

// param_grad (C) += the chunks' partials of norm set `set`, in chunk order.
static void norm_weight_sum(const Pass *ps, int set, float *param_grad) {
    const Model *m = ps->m;
    int C = m->cfg.n_embd;
    for (int i = 0; i < ps->nchunks; i++)
        m->ops->residual_forward(param_grad, param_grad, m->grad_acts.dnorm_w + ((size_t)set * ps->B + i) * C, NULL,
                                 C);
}

// The loss down to the residual stream's gradient at the top (dres set L % 3), for one chunk's rows.
static void backward_top_rows(const Pass *ps, const Chunk *ch) {
    Model *m = ps->m;
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ActTensors *a = &m->acts;
    const GradActs *d = &m->grad_acts;
    int L = c->n_layer, C = c->n_embd, V = c->vocab_size;
    size_t BT = (size_t)ps->B * ps->T, r0 = ch->r0, nr = ch->nr, rC = r0 * C;
    float *dtop = d->dres + (size_t)(L % 3) * BT * C + rC;
    // loss = mean over the B*T positions (already differentiated when the forward fused it)
    if (!m->loss_fused)
        op->crossentropy_backward(d->dlogits + r0 * V, a->probs + r0 * V, ps->targets + r0, 1.0f / BT, nr, V);
    op->fill_zero(d->dln + rC, nr * C);
    op->matmul_backward(d->dln + rC, NULL, d->dlogits + r0 * V, a->lnf + rC, m->params.wte, nr, C, V);
    op->fill_zero(dtop, nr * C);
    op->rmsnorm_backward(dtop, norm_weight_grad(ps, ch, 2, 0, m->grads.final_norm), d->dln + rC,
                         a->resid + L * BT * C + rC, m->params.final_norm, a->lnf_rstd + r0, nr, C);
}

// Layer l's activation gradients for one chunk's rows: from dres set (l + 1) % 3 to dres set l % 3.
static void backward_layer_rows(const Pass *ps, int l, const Chunk *ch) {
    Model *m = ps->m;
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params, *g = &m->grads;
    const ActTensors *a = &m->acts;
    const GradActs *d = &m->grad_acts;
    int B = ps->B, T = ps->T, C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, nb = ch->nb;
    int NH = c->n_head, NKV = c->n_kv_head, HD = model_head_dim(c), set = l & 1;
    size_t BT = (size_t)B * T, BTC = BT * C, BTKV = BT * KVC, BTH = BT * H, TT = (size_t)T * T;
    size_t r0 = ch->r0, nr = ch->nr, rC = r0 * C, rKV = r0 * KVC, rH = r0 * H, nrC = nr * C;
    size_t lC = (size_t)l * C, lCC = lC * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;
    const float *x = a->resid + l * BTC + rC, *ln1 = a->ln1 + l * BTC + rC, *q = a->q + l * BTC + rC;
    const float *k = a->k + l * BTKV + rKV, *v = a->v + l * BTKV + rKV, *atty = a->atty + l * BTC + rC;
    const float *mid = a->resid_mid + l * BTC + rC, *ln2 = a->ln2 + l * BTC + rC;
    const float *h1 = a->h1 + l * BTH + rH, *h3 = a->h3 + l * BTH + rH, *hg = a->hg + l * BTH + rH;
    const float *dout = d->dres + ((l + 1) % 3) * BTC + rC; // gradient of resid[l + 1]
    float *din = d->dres + (l % 3) * BTC + rC;               // gradient of resid[l]
    float *dmid = d->dmid + set * BTC + rC, *dh1 = d->dh1 + set * BTH + rH, *dh3 = d->dh3 + set * BTH + rH;
    float *dq = d->dq + set * BTC + rC, *dk = d->dk + set * BTKV + rKV, *dv = d->dv + set * BTKV + rKV;
    float *dln = d->dln + rC, *dnorm = d->dnorm + rC, *datty = d->datty + rC, *dhg = d->dhg + rH;

    // MLP branch: resid[l+1] = mid + dropout(w2 @ swiglu(w1 ln2, w3 ln2))
    const float *dmlp = dout;
    if (m->dropout_active) {
        op->dropout_apply(d->dmlp + set * BTC + rC, dout, a->mlpdrop + l * BTC + rC, nrC);
        dmlp = d->dmlp + set * BTC + rC;
    }
    op->fill_zero(dhg, nr * H);
    op->matmul_backward(dhg, NULL, dmlp, hg, p->w2 + lHC, nr, H, C);
    op->fill_zero(dh1, nr * H);
    op->fill_zero(dh3, nr * H);
    op->swiglu_backward(dh1, dh3, dhg, h1, h3, nr * H);
    // with one chunk the weight gradients come here too, in one grouped product (their tasks then skip them)
    float *dw13[2] = {g->w1 + lHC, g->w3 + lHC};
    const float *dh13[2] = {dh1, dh3}, *w13[2] = {p->w1 + lHC, p->w3 + lHC};
    const int h13_dim[2] = {H, H};
    op->fill_zero(dln, nrC);
    op->matmul_many_backward(dln, ps->chunked ? NULL : dw13, dh13, ln2, w13, h13_dim, 2, nr, C);
    op->fill_zero(dnorm, nrC);
    op->rmsnorm_backward(dnorm, norm_weight_grad(ps, ch, 1, l, g->mlp_norm + lC), dln, mid, p->mlp_norm + lC,
                         a->ln2_rstd + l * BT + r0, nr, C);
    op->residual_forward(dmid, dout, dnorm, NULL, nrC);

    // attention branch: mid = resid[l] + dropout(wo @ attention(rope(wq ln1), rope(wk ln1), wv ln1))
    const float *dproj = dmid;
    if (m->dropout_active) {
        op->dropout_apply(d->dproj + set * BTC + rC, dmid, a->attdrop + l * BTC + rC, nrC);
        dproj = d->dproj + set * BTC + rC;
    }
    op->fill_zero(datty, nrC);
    op->matmul_backward(datty, NULL, dproj, atty, p->wo + lCC, nr, C, C);
    op->fill_zero(dq, nrC);
    op->fill_zero(dk, nr * KVC);
    op->fill_zero(dv, nr * KVC);
    const float *att = a->att + ((size_t)l * B + ch->b0) * NH * (m->act_flash ? (size_t)T : TT); // lse or probabilities
    if (m->act_flash) op->attention_flash_backward(dq, dk, dv, datty, atty, att, q, k, v, nb, T, NH, NKV, HD);
    else op->attention_backward(dq, dk, dv, d->scratch + (size_t)ch->b0 * NH * TT, datty, att, q, k, v, nb, T, NH, NKV, HD);
    op->rope_backward(dq, nb, T, NH, HD, 0, c->rope_theta);
    op->rope_backward(dk, nb, T, NKV, HD, 0, c->rope_theta);
    float *dwqkv[3] = {g->wq + lCC, g->wk + lKC, g->wv + lKC};
    const float *dqkv[3] = {dq, dk, dv}, *wqkv[3] = {p->wq + lCC, p->wk + lKC, p->wv + lKC};
    const int qkv_dim[3] = {C, KVC, KVC};
    op->fill_zero(dln, nrC);
    op->matmul_many_backward(dln, ps->chunked ? NULL : dwqkv, dqkv, ln1, wqkv, qkv_dim, 3, nr, C);
    op->fill_zero(dnorm, nrC);
    op->rmsnorm_backward(dnorm, norm_weight_grad(ps, ch, 0, l, g->attn_norm + lC), dln, x, p->attn_norm + lC,
                         a->ln1_rstd + l * BT + r0, nr, C);
    op->residual_forward(din, dmid, dnorm, NULL, nrC);
}

// One weight-gradient task of layer l over all rows (the products' inputs and outputs of backward_layer_rows).
static void backward_layer_weights(const Pass *ps, int l, int task) {
    Model *m = ps->m;
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params, *g = &m->grads;
    const ActTensors *a = &m->acts;
    const GradActs *d = &m->grad_acts;
    int C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, BT = ps->B * ps->T, set = l & 1;
    size_t BTC = (size_t)BT * C, BTKV = (size_t)BT * KVC, BTH = (size_t)BT * H;
    size_t lC = (size_t)l * C, lCC = lC * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;
    const float *dmlp = m->dropout_active ? d->dmlp + set * BTC : d->dres + ((l + 1) % 3) * BTC;
    const float *dproj = m->dropout_active ? d->dproj + set * BTC : d->dmid + set * BTC;
    const float *ln1 = a->ln1 + l * BTC, *ln2 = a->ln2 + l * BTC;
    if (!ps->chunked && task != WTASK_W2 && task != WTASK_WO && task != WTASK_NORMS) return; // done with the rows
    switch (task) {
    case WTASK_W1: op->matmul_backward(NULL, g->w1 + lHC, d->dh1 + set * BTH, ln2, p->w1 + lHC, BT, C, H); break;
    case WTASK_W3: op->matmul_backward(NULL, g->w3 + lHC, d->dh3 + set * BTH, ln2, p->w3 + lHC, BT, C, H); break;
    case WTASK_W2: op->matmul_backward(NULL, g->w2 + lHC, dmlp, a->hg + l * BTH, p->w2 + lHC, BT, H, C); break;
    case WTASK_WQ: op->matmul_backward(NULL, g->wq + lCC, d->dq + set * BTC, ln1, p->wq + lCC, BT, C, C); break;
    case WTASK_WO: op->matmul_backward(NULL, g->wo + lCC, dproj, a->atty + l * BTC, p->wo + lCC, BT, C, C); break;
    case WTASK_WK: op->matmul_backward(NULL, g->wk + lKC, d->dk + set * BTKV, ln1, p->wk + lKC, BT, C, KVC); break;
    case WTASK_WV: op->matmul_backward(NULL, g->wv + lKC, d->dv + set * BTKV, ln1, p->wv + lKC, BT, C, KVC); break;
    case WTASK_NORMS:
        if (ps->chunked) {
            norm_weight_sum(ps, 0 * 2 + set, g->attn_norm + lC);
            norm_weight_sum(ps, 1 * 2 + set, g->mlp_norm + lC);
        }
        break;
    default: CHECK(0);
    }
}

// The tasks that run with layer 0's: the tied embedding's gradient (output projection, then the token rows)
// and the final norm's weight gradient.
static void backward_top_weights(const Pass *ps, int task) {
    Model *m = ps->m;
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, V = c->vocab_size, BT = ps->B * ps->T;
    if (task == TOP_WTE) {
        op->matmul_backward(NULL, m->grads.wte, m->grad_acts.dlogits, m->acts.lnf, m->params.wte, BT, C, V);
        op->encoder_backward(m->grads.wte, m->grad_acts.dres, ps->tokens, ps->B, ps->T, C); // dres set 0 % 3
    } else if (task == TOP_FINAL_NORM && ps->chunked) {
        norm_weight_sum(ps, 4, m->grads.final_norm);
    }
}

void model_backward(Model *m, const int *tokens, const int *targets, int B, int T) {
    CHECK(m->grads_memory && m->mean_loss >= 0.0f);
    int L = m->cfg.n_layer;
    if (m->ops->on_device) { // the forward uploaded these same tokens and targets
        tokens = m->tokens_dev;
        targets = m->targets_dev;
    }
    Pass ps = pass_plan(m, tokens, targets, B, T);
    // phase L: every chunk from the loss through layer L - 1; then phase l (l = L-1 .. 0): layer l's weight
    // tasks and the chunks through layer l - 1 (layer 0's phase: its tasks and the top's). Each phase reads
    // what the phase before wrote; the two halves of a phase touch different buffers (model.h, GradActs).
#pragma omp parallel if (ps.chunked)
    {
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < ps.nchunks; i++) {
            Chunk ch = pass_chunk(&ps, i);
            backward_top_rows(&ps, &ch);
            backward_layer_rows(&ps, L - 1, &ch);
        }
        for (int l = L - 1; l >= 0; l--) {
            int ntasks = NUM_WTASKS + (l == 0 ? NUM_TOP_TASKS : 0);
#pragma omp for schedule(dynamic, 1) nowait
            for (int t = 0; t < ntasks; t++) {
                if (t < NUM_WTASKS) backward_layer_weights(&ps, l, t);
                else backward_top_weights(&ps, t - NUM_WTASKS);
            }
            if (l > 0) {
#pragma omp for schedule(dynamic, 1)
                for (int i = 0; i < ps.nchunks; i++) {
                    Chunk ch = pass_chunk(&ps, i);
                    backward_layer_rows(&ps, l - 1, &ch);
                }
            }
        }
    }
}
