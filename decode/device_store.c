// The KV cache in device memory and its store (device_store.h). A layer's rows sit head-major, (n_kv_head, cap)
// rows each, so one kv_encode_rows call writes a token's row for every kv head and attention_decode_kv reads a
// head's rows at a fixed stride. Which row a token takes: full, slot = tokens seen; window:W, the ring slot
// seen % W (the newest W tokens, as kv/window.c keeps them); sink:S,window:W, the first S tokens in rows 0..S-1
// and then the ring of W after them (kv/sink.c evicts the oldest token after the sinks, which is the ring slot
// the next token overwrites).
#include "device_store.h"

#include <math.h>
#include <string.h>

#include "../attention/attention_cuda.h"
#include "../kv/codec.h"
#include "../kv/policy.h"
#include "../layers/cpu_ops.h"

const char *decode_device_forms(void) {
    return "full, window:W and sink:S,window:W with fp32, int8[:G], int4[:G] or int2[:G] rows";
}

// The rows' bits for a codec the device stores: 32 for fp32, 8/4/2 for the int codecs; 0 for the others.
static int device_bits(const KVSpec *spec) {
    const char *c = kv_spec_codec_name(spec);
    if (strcmp(c, "fp32") == 0) return 32;
    if (strcmp(c, "int8") == 0) return 8;
    if (strcmp(c, "int4") == 0) return 4;
    if (strcmp(c, "int2") == 0) return 2;
    return 0;
}

int decode_device_check(const KVSpec *spec, char *err) {
    const char *p = kv_spec_policy_name(spec);
    int policy_ok = strcmp(p, "full") == 0 || strcmp(p, "window") == 0 || strcmp(p, "sink") == 0;
    int modifiers = spec->rank || spec->hadamard || spec->fp_sink || spec->fp_recent || spec->merge_from ||
                    spec->pyramid || spec->paged_block || spec->tier_fast;
    if (policy_ok && device_bits(spec) && !modifiers) return 0;
    err_set(err, "--kv '%s' does not run on cuda: the device KV cache takes %s (no modifiers); use --device cpu",
            spec->text, decode_device_forms());
    return -1;
}

int decode_device_init(DecodeDevice *d, const Ops *ops, const KVSpec *spec, const KVShape *shape, char *err) {
    CHECK(decode_device_check(spec, err) == 0 && ops->on_device && ops->kv_encode_rows && ops->attention_decode_kv);
    int HD = shape->head_dim, bits = device_bits(spec), group = bits == 32 ? HD : kv_codec_group(spec, HD);
    size_t row_bytes = spec->codec->row_bytes(spec->codec, HD, group);
    if (row_bytes == 0) {
        err_set(err, "--kv '%s': group size %d must divide the head dimension %d", spec->text, group, HD);
        return -1;
    }
    int R = shape->n_head / shape->n_kv_head;
    if (!attention_decode_fits(R, HD)) {
        err_set(err,
                "%d query heads per kv head of dimension %d do not run on cuda: the decode kernel would need %zu "
                "bytes of shared memory (at most %d); use --device cpu",
                R, HD, attention_decode_smem_bytes(R, HD, ATTENTION_DECODE_CHUNK_FLOOR), ATTENTION_DECODE_SMEM_MAX);
        return -1;
    }
    if (shape->max_positions < 1) {
        err_set(err, "KV cache needs room for at least one position");
        return -1;
    }
    *d = (DecodeDevice){.ops = ops, .n_layer = shape->n_layer, .n_head = shape->n_head, .n_kv_head = shape->n_kv_head,
                        .head_dim = HD, .max_positions = shape->max_positions, .rope_theta = shape->rope_theta,
                        .bits = bits, .group = group, .row_bytes = row_bytes, .full = kv_spec_is_full(spec)};
    // a budget past the stream is clamped to max_positions, as kv/cache.c does (then nothing is ever evicted)
    int budget = d->full ? shape->max_positions : kv_spec_budget(spec);
    d->cap = budget < shape->max_positions ? budget : shape->max_positions;
    d->clamped_from = budget > shape->max_positions ? budget : 0;
    d->sink = d->full ? 0 : spec->sink < d->cap ? spec->sink : d->cap;
    d->ring = d->cap - d->sink;
    d->rope_at_view = spec->policy->in_cache_positions;
    size_t bytes = (size_t)d->n_layer * d->n_kv_head * d->cap * row_bytes;
    d->k = ops->mem_alloc(bytes);
    d->v = ops->mem_alloc(bytes);
    if (d->rope_at_view) { // kv/cache.c's table: (float)cos and (float)sin of rope_angle
        int half = HD / 2;
        size_t n = (size_t)d->cap * half;
        float *cs = common_calloc(n, sizeof(float)), *sn = common_calloc(n, sizeof(float));
        for (int p = 0; p < d->cap; p++)
            for (int i = 0; i < half; i++) {
                double ang = rope_angle(p, i, HD, shape->rope_theta);
                cs[(size_t)p * half + i] = (float)cos(ang);
                sn[(size_t)p * half + i] = (float)sin(ang);
            }
        d->rope_cos = ops->mem_alloc(n * sizeof(float));
        d->rope_sin = ops->mem_alloc(n * sizeof(float));
        ops->mem_upload(d->rope_cos, cs, n * sizeof(float));
        ops->mem_upload(d->rope_sin, sn, n * sizeof(float));
        common_free(cs);
        common_free(sn);
    }
    d->seen = common_calloc(d->n_layer, sizeof(int));
    d->pos = common_calloc((size_t)d->n_layer * d->cap, sizeof(int));
    return 0;
}

void decode_device_free(DecodeDevice *d) {
    if (!d->ops) return;
    d->ops->mem_free(d->k);
    d->ops->mem_free(d->v);
    if (d->rope_cos) d->ops->mem_free(d->rope_cos);
    if (d->rope_sin) d->ops->mem_free(d->rope_sin);
    common_free(d->seen);
    common_free(d->pos);
    memset(d, 0, sizeof(*d));
}

void decode_device_reset(DecodeDevice *d) { memset(d->seen, 0, (size_t)d->n_layer * sizeof(int)); }

int decode_device_tokens(const DecodeDevice *d, int layer) {
    return d->seen[layer] < d->cap ? d->seen[layer] : d->cap;
}

int decode_device_budget(const DecodeDevice *d) { return d->full ? 0 : d->cap; }

int decode_device_clamped_budget(const DecodeDevice *d) { return d->clamped_from; }

size_t decode_device_bytes(const DecodeDevice *d) {
    size_t per_token = 2 * d->row_bytes + (d->full ? 0 : sizeof(int)), held = 0;
    for (int l = 0; l < d->n_layer; l++) held += (size_t)d->n_kv_head * decode_device_tokens(d, l) * per_token;
    return held + (size_t)d->n_layer * d->n_kv_head * sizeof(int);
}

// The row the seen-th token (0-based) of a layer takes.
static int device_slot(const DecodeDevice *d, int seen) {
    if (seen < d->sink) return seen;
    return d->sink + (seen - d->sink) % d->ring;
}

int decode_device_positions(const DecodeDevice *d, int layer, int *out) {
    int seen = d->seen[layer], n = decode_device_tokens(d, layer);
    const int *pos = d->pos + (size_t)layer * d->cap;
    for (int s = 0; s < n; s++) { // cache slot s holds the (seen - n + s)-th token, or a sink
        int idx = s < d->sink ? s : seen - n + s;
        out[s] = pos[device_slot(d, idx)];
    }
    return n;
}

void decode_device_fill(DecodeDevice *d, const float *rows, int n) {
    CHECK(!d->rope_at_view && n >= 1 && n <= d->cap);
    size_t head_stride = (size_t)d->cap * d->row_bytes;
    for (int l = 0; l < d->n_layer; l++) {
        CHECK(d->seen[l] == 0);
        size_t off = (size_t)l * d->n_kv_head * head_stride;
        for (int g = 0; g < d->n_kv_head; g++) {
            const float *src = rows + (size_t)g * n * d->head_dim;
            d->ops->kv_encode_rows(d->k + off + g * head_stride, d->row_bytes, src, d->head_dim, n, d->head_dim,
                                   d->group, d->bits);
            d->ops->kv_encode_rows(d->v + off + g * head_stride, d->row_bytes, src, d->head_dim, n, d->head_dim,
                                   d->group, d->bits);
        }
        for (int t = 0; t < n; t++) d->pos[(size_t)l * d->cap + t] = t;
        d->seen[l] = n;
    }
}

static int device_attend(KVStore *st, const Model *m, DecodeState *s, int l, int row0, int n, char *err) {
    DecodeDevice *d = st->ctx;
    const Ops *op = m->ops;
    const ModelConfig *mc = &m->cfg;
    int C = mc->n_embd, KVC = model_kv_dim(mc), NH = mc->n_head, NKV = mc->n_kv_head, HD = model_head_dim(mc);
    CHECK(op == d->ops && NH == d->n_head && NKV == d->n_kv_head && HD == d->head_dim);
    size_t rb = d->row_bytes, head_stride = (size_t)d->cap * rb, layer_off = (size_t)l * NKV * head_stride;
    for (int r = row0; r < row0 + n; r++) {
        int pos = s->pos[r], seen = d->seen[l];
        if (pos >= d->max_positions || (d->full && seen >= d->cap)) {
            if (err) err_set(err, "the KV cache cannot hold position %d", pos);
            return -1;
        }
        if (d->full) CHECK(pos == seen); // a full cache is fed positions 0, 1, 2, ... after each reset
        float *q = s->q + (size_t)r * C, *k = s->k + (size_t)r * KVC, *v = s->v + (size_t)r * KVC;
        float *out = s->atty + (size_t)r * C;
        if (!d->rope_at_view) op->rope_forward(k, 1, 1, NKV, HD, pos, d->rope_theta); // rotated once, on entry
        int slot = device_slot(d, seen);
        op->kv_encode_rows(d->k + layer_off + (size_t)slot * rb, head_stride, k, HD, NKV, HD, d->group, d->bits);
        op->kv_encode_rows(d->v + layer_off + (size_t)slot * rb, head_stride, v, HD, NKV, HD, d->group, d->bits);
        d->pos[(size_t)l * d->cap + slot] = pos;
        d->seen[l] = ++seen;
        int Tc = decode_device_tokens(d, l);
        CHECK(Tc <= s->capacity);
        // the query at its own position, or (sink) at the newest slot of the cache, as kv_cache_query_pos says
        op->rope_forward(q, 1, 1, NH, HD, d->rope_at_view ? Tc - 1 : pos, d->rope_theta);
        int newest = seen > d->sink ? (seen - 1 - d->sink) % d->ring : 0;
        op->attention_decode_kv(out, NULL, q, d->k + layer_off, d->v + layer_off, d->bits, d->group, Tc, head_stride,
                                rb, NH, NKV, HD, d->rope_at_view ? d->rope_cos : NULL, d->rope_sin, d->sink,
                                d->rope_at_view ? d->ring : 0, newest);
    }
    return 0;
}

static const KVStoreOps device_ops = {.attend = device_attend};

KVStore decode_store_device(DecodeDevice *d) { return (KVStore){&device_ops, d}; }

int decode_prefill_device(const Model *m, DecodeState *s, DecodeDevice *d, const int *tokens, int n, char *err) {
    KVStore st = decode_store_device(d);
    return decode_prefill(m, s, &st, tokens, n, err);
}
