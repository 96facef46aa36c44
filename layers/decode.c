#include "decode.h"

#include <string.h>

void decode_state_init(DecodeState *s, const ModelConfig *c, int capacity) {
    size_t C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden;
    size_t n = 4 * C + 2 * KVC + C + 3 * H + (size_t)c->n_head * capacity + c->vocab_size;
    float *p = common_calloc(n, sizeof(float));
    s->x = p, p += C;
    s->xn = p, p += C;
    s->q = p, p += C;
    s->atty = p, p += C;
    s->k = p, p += KVC;
    s->v = p, p += KVC;
    s->proj = p, p += C;
    s->h1 = p, p += H;
    s->h3 = p, p += H;
    s->hg = p, p += H;
    s->att = p, p += (size_t)c->n_head * capacity;
    s->logits = p;
    s->capacity = capacity;
}

void decode_state_free(DecodeState *s) {
    common_free(s->x);
    memset(s, 0, sizeof(*s));
}

int model_decode_step_with(const Model *m, DecodeState *s, int token, int pos, DecodeAttendFn attend, void *ctx) {
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params;
    int C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden;
    float rstd;
    op->encoder_forward(s->x, &token, p->wte, 1, 1, C);
    for (int l = 0; l < c->n_layer; l++) {
        size_t lC = (size_t)l * C, lCC = lC * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;
        op->rmsnorm_forward(s->xn, &rstd, s->x, p->attn_norm + lC, 1, C, c->norm_eps);
        op->matmul_forward(s->q, s->xn, p->wq + lCC, 1, C, C);
        op->matmul_forward(s->k, s->xn, p->wk + lKC, 1, C, KVC);
        op->matmul_forward(s->v, s->xn, p->wv + lKC, 1, C, KVC);
        if (attend(ctx, m, s, l, pos) != 0) return -1;
        op->matmul_forward(s->proj, s->atty, p->wo + lCC, 1, C, C);
        op->residual_forward(s->x, s->x, s->proj, NULL, C);
        op->rmsnorm_forward(s->xn, &rstd, s->x, p->mlp_norm + lC, 1, C, c->norm_eps);
        op->matmul_forward(s->h1, s->xn, p->w1 + lHC, 1, C, H);
        op->matmul_forward(s->h3, s->xn, p->w3 + lHC, 1, C, H);
        op->swiglu_forward(s->hg, s->h1, s->h3, H);
        op->matmul_forward(s->proj, s->hg, p->w2 + lHC, 1, H, C);
        op->residual_forward(s->x, s->x, s->proj, NULL, C);
    }
    op->rmsnorm_forward(s->xn, &rstd, s->x, p->final_norm, 1, C, c->norm_eps);
    op->matmul_forward(s->logits, s->xn, p->wte, 1, C, c->vocab_size);
    return 0;
}

// The KV cache stores keys before RoPE and rotates them to their positions in the cache; the query is
// rotated to the position the cache assigns it.
static int attend_cache(void *ctx, const Model *m, DecodeState *s, int l, int pos) {
    KVCache *kv = ctx;
    const ModelConfig *c = &m->cfg;
    int NH = c->n_head, NKV = c->n_kv_head, HD = model_head_dim(c);
    if (kv_cache_append(kv, l, pos, s->k, s->v) != 0) return -1;
    const float *kc, *vc;
    int Tc, qpos;
    size_t head_stride;
    kv_cache_view(kv, l, &kc, &vc, &Tc, &qpos, &head_stride);
    CHECK(Tc <= s->capacity);
    m->ops->rope_forward(s->q, 1, 1, NH, HD, qpos, c->rope_theta);
    m->ops->attention_decode(s->atty, s->att, s->q, kc, vc, Tc, head_stride, NH, NKV, HD);
    kv_cache_observe(kv, l, s->att);
    return 0;
}

int model_decode_step(const Model *m, DecodeState *s, KVCache *kv, int token, int pos) {
    return model_decode_step_with(m, s, token, pos, attend_cache, kv);
}

typedef struct {
    KVPool *pool;
    KVSeq *seq;
    int token;
    char *err;
} PagedCtx;

int decode_paged_store(const Model *m, KVPool *pool, KVSeq *seq, int layer, int pos, int token, float *q, float *k,
                       const float *v, char *err) {
    const ModelConfig *c = &m->cfg;
    int HD = model_head_dim(c);
    m->ops->rope_forward(k, 1, 1, c->n_kv_head, HD, pos, c->rope_theta);
    if (kv_paged_append(pool, seq, layer, pos, token, k, v, err) != 0) return -1;
    m->ops->rope_forward(q, 1, 1, c->n_head, HD, pos, c->rope_theta);
    return 0;
}

// The paged pool stores keys rotated to their absolute positions, and attention reads through the table.
static int attend_paged(void *ctx, const Model *m, DecodeState *s, int l, int pos) {
    PagedCtx *pc = ctx;
    const ModelConfig *c = &m->cfg;
    if (decode_paged_store(m, pc->pool, pc->seq, l, pos, pc->token, s->q, s->k, s->v, pc->err) != 0) return -1;
    CHECK(pc->seq->n_tokens <= s->capacity);
    attention_decode_paged(s->atty, s->att, s->q, pc->pool, pc->seq, l, c->n_head, c->n_kv_head, model_head_dim(c));
    kv_paged_observe(pc->pool, pc->seq, s->att, c->n_head);
    return 0;
}

int model_decode_step_paged(const Model *m, DecodeState *s, KVPool *pool, KVSeq *seq, int token, int pos,
                            char *err) {
    PagedCtx ctx = {pool, seq, token, err};
    if (model_decode_step_with(m, s, token, pos, attend_paged, &ctx) != 0) return -1;
    kv_paged_enforce(pool, seq); // every layer holds the token now: the policy may drop blocks
    return 0;
}

void decode_batch_init(DecodeBatch *b, const ModelConfig *c, int max_batch, int capacity) {
    size_t C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, Bm = (size_t)max_batch;
    size_t n = Bm * (5 * C + 2 * KVC + 3 * H + c->vocab_size) + (size_t)c->n_head * capacity;
    float *p = common_calloc(n, sizeof(float));
    float **fields[] = {&b->x, &b->xn, &b->q, &b->atty, &b->proj};
    for (int i = 0; i < 5; i++) *fields[i] = p, p += Bm * C;
    b->k = p, p += Bm * KVC;
    b->v = p, p += Bm * KVC;
    b->h1 = p, p += Bm * H;
    b->h3 = p, p += Bm * H;
    b->hg = p, p += Bm * H;
    b->logits = p, p += Bm * c->vocab_size;
    b->att = p;
    b->max_batch = max_batch;
    b->capacity = capacity;
}

void decode_batch_free(DecodeBatch *b) {
    common_free(b->x);
    memset(b, 0, sizeof(*b));
}

int model_decode_batch_paged(const Model *m, DecodeBatch *b, KVPool *pool, KVSeq *const *seqs, const int *tokens,
                             const int *pos, int n, char *err) {
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params;
    int C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, NH = c->n_head, NKV = c->n_kv_head;
    int HD = model_head_dim(c);
    CHECK(n >= 1 && n <= b->max_batch);
    float rstd[n];
    op->encoder_forward(b->x, tokens, p->wte, 1, n, C);
    for (int l = 0; l < c->n_layer; l++) {
        size_t lC = (size_t)l * C, lCC = lC * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;
        op->rmsnorm_forward(b->xn, rstd, b->x, p->attn_norm + lC, n, C, c->norm_eps);
        op->matmul_forward(b->q, b->xn, p->wq + lCC, n, C, C);
        op->matmul_forward(b->k, b->xn, p->wk + lKC, n, C, KVC);
        op->matmul_forward(b->v, b->xn, p->wv + lKC, n, C, KVC);
        for (int i = 0; i < n; i++) { // each row at its own position, through its own block table
            float *q = b->q + (size_t)i * C, *k = b->k + (size_t)i * KVC, *v = b->v + (size_t)i * KVC;
            if (decode_paged_store(m, pool, seqs[i], l, pos[i], tokens[i], q, k, v, err) != 0) return -1;
            CHECK(seqs[i]->n_tokens <= b->capacity);
            attention_decode_paged(b->atty + (size_t)i * C, b->att, q, pool, seqs[i], l, NH, NKV, HD);
            kv_paged_observe(pool, seqs[i], b->att, NH);
        }
        op->matmul_forward(b->proj, b->atty, p->wo + lCC, n, C, C);
        op->residual_forward(b->x, b->x, b->proj, NULL, (size_t)n * C);
        op->rmsnorm_forward(b->xn, rstd, b->x, p->mlp_norm + lC, n, C, c->norm_eps);
        op->matmul_forward(b->h1, b->xn, p->w1 + lHC, n, C, H);
        op->matmul_forward(b->h3, b->xn, p->w3 + lHC, n, C, H);
        op->swiglu_forward(b->hg, b->h1, b->h3, (size_t)n * H);
        op->matmul_forward(b->proj, b->hg, p->w2 + lHC, n, H, C);
        op->residual_forward(b->x, b->x, b->proj, NULL, (size_t)n * C);
    }
    op->rmsnorm_forward(b->xn, rstd, b->x, p->final_norm, n, C, c->norm_eps);
    op->matmul_forward(b->logits, b->xn, p->wte, n, C, c->vocab_size);
    for (int i = 0; i < n; i++) kv_paged_enforce(pool, seqs[i]);
    return 0;
}
