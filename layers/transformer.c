// The model wiring, written once over the op table: forward and backward of the whole decoder stack over the
// buffers model.c allocates; nothing is allocated inside a training step. On the CPU a pass runs over chunks of
// sequences spread across the OpenMP threads (the schedule, below); on a device backend, or with one thread, over
// the whole batch at once.
#include "model.h"

#include <math.h>
#include <omp.h>
#include <string.h>

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
    // loss = mean over the B*T positions (already differentiated when the forward fused it; else from the logits)
    if (!m->loss_fused)
        op->crossentropy_fused(NULL, d->dlogits + r0 * V, a->logits + r0 * V, ps->targets + r0, 1.0f / BT, nr, V);
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
