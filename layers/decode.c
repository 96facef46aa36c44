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

int model_decode_step(const Model *m, DecodeState *s, KVCache *kv, int token, int pos) {
    const Ops *op = m->ops;
    const ModelConfig *c = &m->cfg;
    const ParamTensors *p = &m->params;
    int C = c->n_embd, KVC = model_kv_dim(c), H = c->n_hidden, NH = c->n_head, NKV = c->n_kv_head;
    int HD = model_head_dim(c);
    float rstd;
    op->encoder_forward(s->x, &token, p->wte, 1, 1, C);
    for (int l = 0; l < c->n_layer; l++) {
        size_t lC = (size_t)l * C, lCC = lC * C, lKC = (size_t)l * KVC * C, lHC = (size_t)l * H * C;
        op->rmsnorm_forward(s->xn, &rstd, s->x, p->attn_norm + lC, 1, C, c->norm_eps);
        op->matmul_forward(s->q, s->xn, p->wq + lCC, 1, C, C);
        op->matmul_forward(s->k, s->xn, p->wk + lKC, 1, C, KVC);
        op->matmul_forward(s->v, s->xn, p->wv + lKC, 1, C, KVC);
        // the cache stores keys before RoPE and rotates them to their positions in the cache; the query is
        // rotated to the position the cache assigns it
        if (kv_cache_append(kv, l, pos, s->k, s->v) != 0) return -1;
        const float *kc, *vc;
        int Tc, qpos;
        size_t head_stride;
        kv_cache_view(kv, l, &kc, &vc, &Tc, &qpos, &head_stride);
        CHECK(Tc <= s->capacity);
        op->rope_forward(s->q, 1, 1, NH, HD, qpos, c->rope_theta);
        op->attention_decode(s->atty, s->att, s->q, kc, vc, Tc, head_stride, NH, NKV, HD);
        kv_cache_observe(kv, l, s->att);
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
