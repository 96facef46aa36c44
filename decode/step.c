// decode_forward: the inference layer body, once (step.h). The same ops in the same order as the training
// forward, on n rows: one matrix product per weight for all rows (the products of one input, Q K V and W1 W3,
// in one call), attention per store.
#include "step.h"

#include <string.h>

KVShape decode_kv_shape(const ModelConfig *c, int max_positions) {
    return (KVShape){c->n_layer, c->n_head, c->n_kv_head, model_head_dim(c), max_positions, c->rope_theta, 0};
}

void decode_state_init_on(DecodeState *s, const ModelConfig *c, const Ops *ops, int max_rows, int capacity) {
    size_t C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, R = (size_t)max_rows, V = c->vocab_size;
    CHECK(max_rows >= 1 && capacity >= 1);
    *s = (DecodeState){.ops = ops, .max_rows = max_rows, .capacity = capacity};
    int dev = ops->on_device;
    // on a device the logits are a separate device buffer and the host's copy is allocated on its own
    size_t n = R * (5 * C + 2 * KVC + 3 * H + 1 + (dev ? 0 : V)) + (size_t)c->n_head * capacity;
    float *p = dev ? ops->mem_alloc(n * sizeof(float)) : common_calloc(n, sizeof(float));
    float **rows_c[] = {&s->x, &s->xn, &s->q, &s->atty, &s->proj};
    float **rows_h[] = {&s->h1, &s->h3, &s->hg};
    for (int i = 0; i < 5; i++) {
        *rows_c[i] = p;
        p += R * C;
    }
    s->k = p;
    p += R * KVC;
    s->v = p;
    p += R * KVC;
    for (int i = 0; i < 3; i++) {
        *rows_h[i] = p;
        p += R * H;
    }
    s->rstd = p;
    p += R;
    if (dev) {
        s->logits = common_calloc(R * V, sizeof(float));
        s->logits_dev = ops->mem_alloc(R * V * sizeof(float));
        s->tokens_dev = ops->mem_alloc(R * sizeof(int));
    } else {
        s->logits = p;
        p += R * V;
    }
    s->att = p;
    s->tokens = common_calloc(2 * R, sizeof(int));
    s->pos = s->tokens + R;
}

void decode_state_init(DecodeState *s, const ModelConfig *c, int max_rows, int capacity) {
    decode_state_init_on(s, c, &ops_cpu, max_rows, capacity);
}

void decode_state_free(DecodeState *s) {
    if (s->ops && s->ops->on_device) {
        s->ops->mem_free(s->x);
        s->ops->mem_free(s->logits_dev);
        s->ops->mem_free(s->tokens_dev);
        common_free(s->logits);
    } else {
        common_free(s->x);
    }
    common_free(s->tokens);
    memset(s, 0, sizeof(*s));
}

static int attend_rows(const Model *m, DecodeState *s, KVStore *const *stores, int n_stores, int layer, int n,
                       char *err) {
    if (n_stores == 1) return stores[0]->ops->attend(stores[0], m, s, layer, 0, n, err);
    for (int i = 0; i < n; i++)
        if (stores[i]->ops->attend(stores[i], m, s, layer, i, 1, err) != 0) return -1;
    return 0;
}

int decode_forward(const Model *m, DecodeState *s, KVStore *const *stores, int n_stores, const int *tokens,
                   const int *pos, int n, int logits, char *err) {
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params;
    int C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden;
    CHECK(n >= 1 && n <= s->max_rows && (n_stores == 1 || n_stores == n));
    CHECK(!op->on_device == !s->ops->on_device); // the buffers live where the model's ops run
    memmove(s->tokens, tokens, (size_t)n * sizeof(int));
    memmove(s->pos, pos, (size_t)n * sizeof(int));
    if (op->on_device) op->mem_upload(s->tokens_dev, s->tokens, (size_t)n * sizeof(int));
    op->encoder_forward(s->x, op->on_device ? s->tokens_dev : s->tokens, p->wte, 1, n, C);
    for (int l = 0; l < c->n_layer; l++) {
        size_t lC = (size_t)l * C, lCC = lC * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;
        op->rmsnorm_forward(s->xn, s->rstd, s->x, p->attn_norm + lC, n, C, c->norm_eps);
        // Q, K and V in one call; a store that drops rows sees K and V first, and only its kept rows get a Q
        float *qkv_out[] = {s->k, s->v, s->q};
        const float *qkv_w[] = {p->wk + lKC, p->wv + lKC, p->wq + lCC};
        const int qkv_dim[] = {KVC, KVC, C};
        if (n_stores == 1 && stores[0]->ops->select_rows) {
            op->matmul_many_forward(qkv_out, s->xn, qkv_w, qkv_dim, 2, n, C);
            n = stores[0]->ops->select_rows(stores[0], m, s, l, n);
            CHECK(n >= 1);
            op->matmul_forward(s->q, s->xn, p->wq + lCC, n, C, C);
        } else {
            op->matmul_many_forward(qkv_out, s->xn, qkv_w, qkv_dim, 3, n, C);
        }
        if (attend_rows(m, s, stores, n_stores, l, n, err) != 0) return -1;
        op->matmul_forward(s->proj, s->atty, p->wo + lCC, n, C, C);
        op->residual_forward(s->x, s->x, s->proj, NULL, (size_t)n * C);
        op->rmsnorm_forward(s->xn, s->rstd, s->x, p->mlp_norm + lC, n, C, c->norm_eps);
        float *mlp_out[] = {s->h1, s->h3};
        const float *mlp_w[] = {p->w1 + lHC, p->w3 + lHC};
        const int mlp_dim[] = {H, H};
        op->matmul_many_forward(mlp_out, s->xn, mlp_w, mlp_dim, 2, n, C);
        op->swiglu_forward(s->hg, s->h1, s->h3, (size_t)n * H);
        op->matmul_forward(s->proj, s->hg, p->w2 + lHC, n, H, C);
        op->residual_forward(s->x, s->x, s->proj, NULL, (size_t)n * C);
    }
    int first = logits == DECODE_LOGITS_LAST ? n - 1 : 0, rows = n - first;
    op->rmsnorm_forward(s->xn, s->rstd, s->x + (size_t)first * C, p->final_norm, rows, C, c->norm_eps);
    if (op->on_device) { // computed on the device, sampled and compared on the host
        op->matmul_forward(s->logits_dev, s->xn, p->wte, rows, C, c->vocab_size);
        op->mem_download(s->logits, s->logits_dev, (size_t)rows * c->vocab_size * sizeof(float));
    } else {
        op->matmul_forward(s->logits, s->xn, p->wte, rows, C, c->vocab_size);
    }
    for (int i = 0; i < n_stores; i++)
        if (stores[i]->ops->step_end) stores[i]->ops->step_end(stores[i]);
    return n;
}

int decode_prefill(const Model *m, DecodeState *s, KVStore *st, const int *tokens, int n, char *err) {
    KVStore *stores[] = {st};
    int pos[s->max_rows];
    for (int t0 = 0; t0 < n; t0 += s->max_rows) {
        int rows = n - t0 < s->max_rows ? n - t0 : s->max_rows;
        for (int i = 0; i < rows; i++) pos[i] = t0 + i;
        if (decode_forward(m, s, stores, 1, tokens + t0, pos, rows, DECODE_LOGITS_LAST, err) != rows) return -1;
    }
    return 0;
}

int decode_prefill_cache(const Model *m, DecodeState *s, KVCache *kv, const int *tokens, int n, char *err) {
    DecodeCache dc = {.kv = kv};
    KVStore st = decode_store_cache(&dc);
    return decode_prefill(m, s, &st, tokens, n, err);
}

int model_decode_step(const Model *m, DecodeState *s, KVCache *kv, int token, int pos) {
    DecodeCache c = {.kv = kv};
    KVStore st = decode_store_cache(&c);
    KVStore *stores[] = {&st};
    return decode_forward(m, s, stores, 1, &token, &pos, 1, DECODE_LOGITS_ALL, NULL) < 0 ? -1 : 0;
}

int model_decode_step_paged(const Model *m, DecodeState *s, KVPool *pool, KVSeq *seq, int token, int pos,
                            char *err) {
    DecodePaged pg = {pool, seq};
    KVStore st = decode_store_paged(&pg);
    KVStore *stores[] = {&st};
    return decode_forward(m, s, stores, 1, &token, &pos, 1, DECODE_LOGITS_ALL, err) < 0 ? -1 : 0;
}

int model_decode_batch_paged(const Model *m, DecodeState *s, KVPool *pool, KVSeq *const *seqs, const int *tokens,
                             const int *pos, int n, char *err) {
    CHECK(n >= 1 && n <= s->max_rows);
    DecodePaged pg[n];
    KVStore st[n], *stores[n];
    for (int i = 0; i < n; i++) {
        pg[i] = (DecodePaged){pool, seqs[i]};
        st[i] = decode_store_paged(&pg[i]);
        stores[i] = &st[i];
    }
    return decode_forward(m, s, stores, n, tokens, pos, n, DECODE_LOGITS_ALL, err) < 0 ? -1 : 0;
}

typedef struct {
    DecodeAttendFn attend;
    void *ctx;
} FnStore;

static int fn_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int n, char *err) {
    (void)err;
    FnStore *f = st->ctx;
    CHECK(row0 == 0 && n == 1);
    return f->attend(f->ctx, m, s, l, s->pos[0]) != 0 ? -1 : 0;
}

static const KVStoreOps fn_ops = {.attend = fn_attend};

int model_decode_step_with(const Model *m, DecodeState *s, int token, int pos, DecodeAttendFn attend, void *ctx) {
    FnStore f = {attend, ctx};
    KVStore st = {&fn_ops, &f};
    KVStore *stores[] = {&st};
    return decode_forward(m, s, stores, 1, &token, &pos, 1, DECODE_LOGITS_ALL, NULL) < 0 ? -1 : 0;
}
