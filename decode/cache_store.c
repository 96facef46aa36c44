// The contiguous cache as a store: each row appends its pre-RoPE key and value, rotates its query to the
// position the cache gives it, and attends straight from the cache's encoded rows where the cache can
// (kv_cache_attend: quantized and fp16 caches on the CPU), else over the cache's fp32 view through the
// model's attention op; then it reports the attention back so score-based policies can use it. Rows are
// taken one at a time: a policy may evict between them.
#include "step.h"

static int cache_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int n, char *err) {
    DecodeCache *c = st->ctx;
    const ModelConfig *mc = &m->cfg;
    int C = mc->n_embd, KVC = model_kv_dim(mc), NH = mc->n_head, NKV = mc->n_kv_head, HD = model_head_dim(mc);
    CHECK(!m->ops->on_device); // host memory only: a device model attends through decode_store_device
    for (int r = row0; r < row0 + n; r++) {
        float *q = s->q + (size_t)r * C, *out = s->atty + (size_t)r * C;
        if (kv_cache_append(c->kv, l, s->pos[r], s->k + (size_t)r * KVC, s->v + (size_t)r * KVC) != 0) {
            if (err) err_set(err, "the KV cache cannot hold position %d", s->pos[r]);
            return -1;
        }
        CHECK(kv_cache_tokens(c->kv, l) <= s->capacity);
        int qpos = kv_cache_query_pos(c->kv, l);
        m->ops->rope_forward(q, 1, 1, NH, HD, qpos, mc->rope_theta);
        int Tc = kv_cache_attend(c->kv, l, q, out, s->att);
        if (!Tc) {
            const float *kc, *vc;
            int view_qpos;
            size_t head_stride;
            kv_cache_view(c->kv, l, &kc, &vc, &Tc, &view_qpos, &head_stride);
            CHECK(view_qpos == qpos);
            m->ops->attention_decode(out, s->att, q, kc, vc, Tc, head_stride, NH, NKV, HD);
        }
        kv_cache_observe(c->kv, l, s->att);
        if (c->watch) c->watch(c->watch_ctx, l, s->pos[r], s->att, Tc);
    }
    return 0;
}

static const KVStoreOps cache_ops = {.attend = cache_attend};

KVStore decode_store_cache(DecodeCache *c) { return (KVStore){&cache_ops, c}; }
