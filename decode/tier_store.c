// The slower tier as a store (decode/tier.h): the row goes into the pool (rotated, as the paged store does)
// and into the tier's tail unit; attention reads through the tier's fast arena.
#include <string.h>

#include "tier.h"

static int tier_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int n, char *err) {
    DecodeTier *c = st->ctx;
    const ModelConfig *mc = &m->cfg;
    int NH = mc->n_head, HD = model_head_dim(mc), pos = s->pos[row0];
    CHECK(row0 == 0 && n == 1);
    if (decode_paged_store(m, c->pool, c->seq, l, pos, s->tokens[0], s->q, s->k, s->v, err) != 0) return -1;
    CHECK(c->seq->n_tokens <= s->capacity);
    if (kv_tier_append(c->tier, l, pos, s->k, s->v, err) != 0) return -1;
    if (kv_tier_attend(c->tier, s->atty, s->att, s->q, l, NH, err) != 0) return -1;
    if (c->q_log) {
        const int *blocks;
        int nb = kv_tier_read_blocks(c->tier, &blocks);
        CHECK(nb <= c->k1);
        memcpy(c->q_log + (size_t)l * NH * HD, s->q, (size_t)NH * HD * sizeof(float));
        for (int j = 0; j < c->k1; j++) c->sel_log[l * c->k1 + j] = j < nb ? blocks[j] : -1;
    }
    return 0;
}

static const KVStoreOps tier_ops = {.attend = tier_attend};

KVStore decode_store_tier(DecodeTier *t) { return (KVStore){&tier_ops, t}; }

int decode_tier_step(const Model *m, DecodeState *s, DecodeTier *t, int token, int pos, char *err) {
    KVStore st = decode_store_tier(t);
    KVStore *stores[] = {&st};
    return decode_forward(m, s, stores, 1, &token, &pos, 1, DECODE_LOGITS_ALL, err) < 0 ? -1 : 0;
}
