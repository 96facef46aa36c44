// One paged sequence as a store: keys are rotated to their absolute position once, on entry, and attention
// reads through the block table; after the step the sequence's policy drops the blocks it no longer keeps
// (one decision for every layer, so it waits until every layer holds the token).
#include "step.h"

int decode_paged_store(const Model *m, KVPool *pool, KVSeq *seq, int layer, int pos, int token, float *q, float *k,
                       const float *v, char *err) {
    const ModelConfig *c = &m->cfg;
    int HD = model_head_dim(c);
    m->ops->rope_forward(k, 1, 1, c->n_kv_head, HD, pos, c->rope_theta);
    if (kv_paged_append(pool, seq, layer, pos, token, k, v, err) != 0) return -1;
    m->ops->rope_forward(q, 1, 1, c->n_head, HD, pos, c->rope_theta);
    return 0;
}

static int paged_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int n, char *err) {
    DecodePaged *p = st->ctx;
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, KVC = model_kv_dim(c);
    for (int r = row0; r < row0 + n; r++) {
        float *q = s->q + (size_t)r * C;
        if (decode_paged_store(m, p->pool, p->seq, l, s->pos[r], s->tokens[r], q, s->k + (size_t)r * KVC,
                               s->v + (size_t)r * KVC, err) != 0)
            return -1;
        CHECK(p->seq->n_tokens <= s->capacity);
        attention_decode_paged(s->atty + (size_t)r * C, s->att, q, p->pool, p->seq, l, c->n_head, c->n_kv_head,
                               model_head_dim(c));
        kv_paged_observe(p->pool, p->seq, s->att, c->n_head);
    }
    return 0;
}

static void paged_step_end(KVStore *st) {
    DecodePaged *p = st->ctx;
    kv_paged_enforce(p->pool, p->seq);
}

static const KVStoreOps paged_ops = {.attend = paged_attend, .step_end = paged_step_end};

KVStore decode_store_paged(DecodePaged *p) { return (KVStore){&paged_ops, p}; }
