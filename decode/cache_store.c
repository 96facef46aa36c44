// The contiguous cache as a store: each row appends its pre-RoPE key and value, attends over the cache's
// fp32 view (keys rotated to their cache positions; the query to the position the cache assigns it) and
// reports the attention back so score-based policies can use it. Rows are taken one at a time: a policy may
// evict between them.
#include "step.h"

static int cache_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int n, char *err) {
    DecodeCache *c = st->ctx;
    const ModelConfig *mc = &m->cfg;
    int C = mc->n_embd, KVC = model_kv_dim(mc), NH = mc->n_head, NKV = mc->n_kv_head, HD = model_head_dim(mc);
    for (int r = row0; r < row0 + n; r++) {
        float *q = s->q + (size_t)r * C;
        if (kv_cache_append(c->kv, l, s->pos[r], s->k + (size_t)r * KVC, s->v + (size_t)r * KVC) != 0) {
            if (err) err_set(err, "the KV cache cannot hold position %d", s->pos[r]);
            return -1;
        }
        const float *kc, *vc;
        int Tc, qpos;
        size_t head_stride;
        kv_cache_view(c->kv, l, &kc, &vc, &Tc, &qpos, &head_stride);
        CHECK(Tc <= s->capacity);
        m->ops->rope_forward(q, 1, 1, NH, HD, qpos, mc->rope_theta);
        m->ops->attention_decode(s->atty + (size_t)r * C, s->att, q, kc, vc, Tc, head_stride, NH, NKV, HD);
        kv_cache_observe(c->kv, l, s->att);
        if (c->watch) c->watch(c->watch_ctx, l, s->pos[r], s->att, Tc);
    }
    return 0;
}

static const KVStoreOps cache_ops = {.attend = cache_attend};

KVStore decode_store_cache(DecodeCache *c) { return (KVStore){&cache_ops, c}; }
