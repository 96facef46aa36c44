// The KV cache engine: lanes of tokens per (layer, kv head), the storage format of their rows, the budgets,
// and the points where the selection policy runs (see kv.h). Positions: a cache whose positions never
// change (every spec but sink, minicache and lowrank) rotates each key by RoPE once on entry and stores
// (quantizes) the rotated key, as the papers' implementations do; an fp32 one is then its own view, and the
// others are attended from their encoded rows (attend.c). The rest store keys before RoPE and rotate them
// when viewed, to their original position, or for sink:S,window:W to their slot in the cache
// (StreamingLLM), so a stream can run past the trained context.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../common/common.h"
#include "../layers/cpu_ops.h"
#include "cache_impl.h"
#include "codec.h"
#include "kv.h"
#include "lowrank.h"
#include "minicache.h"
#include "policy.h"
#include "quant.h"

// minicache: 1 for the first layer of a merged pair, 2 for the second, 0 otherwise.
static int pair_role(const KVCache *kv, int layer) {
    int first = kv->spec.merge_from - 1;
    if (!kv->spec.merge_from || layer < first) return 0;
    int off = layer - first;
    if (off % 2 == 0) return layer + 1 < kv->shape.n_layer ? 1 : 0;
    return 2;
}

// A slot's original position; without eviction (full selection) slot s holds position s and no array is kept.
int kv_lane_pos(const KVLane *lane, int s) { return lane->pos ? lane->pos[s] : s; }

// Rows go through the spec's codec (kv/codec.h); hadamard rotates keys before a quantized one.
static void encode_row(const KVCache *kv, uint8_t *dst, const float *src, int is_key) {
    int HD = kv->dim;
    CHECK(!kv->spec.codec->is_kivi); // KIVI rows are encoded in blocks (kivi_append)
    if (is_key && kv->spec.hadamard) {
        memcpy(kv->row, src, HD * sizeof(float));
        quant_hadamard(kv->row, HD);
        src = kv->row;
    }
    kv->spec.codec->encode(kv->spec.codec, dst, src, HD, kv->group);
}

static void decode_row(const KVCache *kv, float *dst, const uint8_t *src, int is_key) {
    int HD = kv->dim;
    CHECK(!kv->spec.codec->is_kivi); // KIVI rows are decoded in blocks (kivi_view)
    kv->spec.codec->decode(kv->spec.codec, dst, src, HD, kv->group);
    if (is_key && kv->spec.hadamard) quant_hadamard(dst, HD); // orthonormal and its own inverse
}

// Rotates a head row (HD) to position p with the cache's RoPE table.
static void rope_row(const KVCache *kv, float *x, int p) {
    int half = kv->shape.head_dim / 2;
    const float *cs = kv->rope_cos + (size_t)p * half, *sn = kv->rope_sin + (size_t)p * half;
    for (int i = 0; i < half; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cs[i] - b * sn[i];
        x[2 * i + 1] = a * sn[i] + b * cs[i];
    }
}

// A slot's row in its lane, in fp32 when fpkeep holds it so, else in the storage format.
static void put_row(const KVCache *kv, KVLane *lane, int s, int is_key, const float *src) {
    uint8_t *dst = (is_key ? lane->k : lane->v) + (size_t)s * kv->stride;
    if (lane->fp && lane->fp[s]) memcpy(dst, src, kv->dim * sizeof(float));
    else encode_row(kv, dst, src, is_key);
}

static void get_row(const KVCache *kv, const KVLane *lane, int s, int is_key, float *dst) {
    const uint8_t *src = (is_key ? lane->k : lane->v) + (size_t)s * kv->stride;
    if (lane->fp && lane->fp[s]) memcpy(dst, src, kv->dim * sizeof(float));
    else decode_row(kv, dst, src, is_key);
}

// fpkeep: slots that are neither sinks nor among the newest fp_recent positions are quantized in place.
static void fpkeep_age(KVCache *kv, KVLane *lane, int newest) {
    for (int s = 0; s < lane->n; s++) {
        int p = kv_lane_pos(lane, s);
        if (!lane->fp[s] || p < kv->spec.fp_sink || p > newest - kv->spec.fp_recent) continue;
        for (int is_key = 0; is_key < 2; is_key++) {
            get_row(kv, lane, s, is_key, kv->coef); // (not kv->row: encode_row may use it for the rotation)
            lane->fp[s] = 0;
            put_row(kv, lane, s, is_key, kv->coef);
            lane->fp[s] = 1;
        }
        lane->fp[s] = 0;
    }
}

// Per-layer budgets: uniform, or PyramidKV's linear schedule (weights 2(L-l)/(L+1), mean 1) with the same
// total, then the policy's own per-layer rule (knorm leaves its first layers whole).
static void set_budgets(KVCache *kv) {
    const KVPolicy *pol = kv->spec.policy;
    int L = kv->shape.n_layer, b = kv_spec_budget(&kv->spec);
    int floor_b = pol->min_budget ? pol->min_budget(&kv->spec) : 1;
    for (int l = 0; l < L; l++) {
        int bl = b;
        if (b && kv->spec.pyramid) bl = (int)lround((double)b * 2.0 * (L - l) / (L + 1));
        if (b && bl < floor_b) bl = floor_b;
        if (pol->layer_budget) bl = pol->layer_budget(&kv->spec, l, bl);
        if (bl > kv->shape.max_positions) { // never reached: a stream holds at most max_positions tokens
            if (bl > kv->clamped_from) kv->clamped_from = bl;
            bl = kv->shape.max_positions;
        }
        kv->budget[l] = bl;
        int unbounded = bl == 0 || pol->grows_after_prompt; // SnapKV grows again after the prompt
        kv->cap[l] = unbounded ? kv->shape.max_positions : bl + 1;
    }
}

// One random stream per layer (random:B): layer l from the spec's seed and l, so a prompt taken in chunks of
// rows, layer by layer, draws what token-by-token steps draw.
static void seed_rngs(KVCache *kv) {
    for (int l = 0; l < kv->shape.n_layer; l++)
        rng_init(&kv->rng[l], kv->spec.seed + 0x9E3779B97F4A7C15ull * (uint64_t)l);
}

int kv_cache_init(KVCache **out, const KVSpec *spec, const KVShape *shape, char *err) {
    if (spec->paged_block) {
        err_set(err, "--kv '%s': the paged pool runs through its own evaluation, --eval prefix", spec->text);
        return -1;
    }
    int HD = shape->head_dim, L = shape->n_layer, NKV = shape->n_kv_head, dim = spec->rank ? spec->rank : HD;
    if (spec->rank > HD) {
        err_set(err, "--kv '%s': rank %d exceeds the head dimension %d", spec->text, spec->rank, HD);
        return -1;
    }
    int group = kv_codec_group(spec, dim);
    if (spec->codec->row_bytes && spec->codec->row_bytes(spec->codec, dim, group) == 0) {
        err_set(err, "--kv '%s': group size %d must divide the %s %d", spec->text, group,
                spec->rank ? "rank" : "head dimension", dim);
        return -1;
    }
    if (spec->hadamard && (HD & (HD - 1)) != 0) {
        err_set(err, "--kv '%s': hadamard needs a power-of-two head dimension, this model has %d", spec->text, HD);
        return -1;
    }
    if (spec->merge_from && spec->merge_from >= shape->n_layer) {
        err_set(err, "--kv '%s': minicache:%d merges layers %d and %d, this model has %d layers (0..%d)", spec->text,
                spec->merge_from - 1, spec->merge_from - 1, spec->merge_from, shape->n_layer, shape->n_layer - 1);
        return -1;
    }
    if (spec->policy->layer_budget && spec->skip_layers >= shape->n_layer) {
        err_set(err, "--kv '%s': %s leaves its first %d layers whole, this model has %d: nothing would be evicted",
                spec->text, spec->policy->name, spec->skip_layers, shape->n_layer);
        return -1;
    }
    if (shape->max_positions < 1) {
        err_set(err, "KV cache needs room for at least one position");
        return -1;
    }
    KVCache *kv = common_calloc(1, sizeof(KVCache));
    kv->spec = *spec;
    kv->shape = *shape;
    kv->group = group;
    kv->dim = dim;
    kv->calibrated = spec->rank == 0;
    if (spec->rank) kv->basis = common_calloc((size_t)L * NKV * 2 * HD * spec->rank, sizeof(float));
    kv->coef = common_calloc(HD, sizeof(float));
    kv->tmp = common_calloc(4 * (size_t)HD, sizeof(float));
    kv->row_bytes = spec->codec->row_bytes ? spec->codec->row_bytes(spec->codec, dim, group) : 0;
    kv->rng = common_calloc((size_t)L, sizeof(Rng));
    seed_rngs(kv);
    kv->fpkeep = spec->fp_sink || spec->fp_recent;
    kv->rotated = !spec->rank && !spec->merge_from && !spec->policy->in_cache_positions && !shape->keep_prerope;
    kv->direct = kv->rotated && spec->codec->lossless;
    kv->stride = kv->fpkeep && dim * sizeof(float) > kv->row_bytes ? dim * sizeof(float) : kv->row_bytes;
    if (spec->codec->is_kivi) {
        kv->kivi_vgroup = spec->group < HD && HD % spec->group == 0 ? spec->group : HD;
        kv->kivi_key_bytes = quant_row_bytes(spec->group, spec->group, spec->codec->bits);
        kv->kivi_val_bytes = quant_row_bytes(HD, kv->kivi_vgroup, spec->codec->bits);
        kv->block = common_calloc((size_t)spec->group * HD, sizeof(float));
    }
    kv->budget = common_calloc(L, sizeof(int));
    kv->cap = common_calloc(L, sizeof(int));
    kv->seen = common_calloc(L, sizeof(int));
    set_budgets(kv);
    int max_cap = 0;
    kv->lanes = common_calloc((size_t)L * NKV, sizeof(KVLane));
    for (int l = 0; l < L; l++) {
        max_cap = kv->cap[l] > max_cap ? kv->cap[l] : max_cap;
        for (int g = 0; g < NKV; g++) {
            KVLane *lane = &kv->lanes[l * NKV + g];
            if (!kv_spec_is_full(spec)) lane->pos = common_calloc(kv->cap[l], sizeof(int));
            lane->score = common_calloc(kv->cap[l], sizeof(float));
            if (spec->codec->is_kivi) {
                size_t blocks = (size_t)kv->cap[l] / spec->group + 1;
                lane->k = common_calloc(blocks * HD, kv->kivi_key_bytes);
                lane->v = common_calloc(kv->cap[l], kv->kivi_val_bytes);
                // the residual never holds more than the lane can: R larger than the stream stays unfilled
                size_t res_rows = (size_t)(spec->residual < kv->cap[l] ? spec->residual : kv->cap[l]);
                lane->res_k = common_calloc(res_rows * HD, sizeof(float));
                lane->res_v = common_calloc(res_rows * HD, sizeof(float));
            } else { // one block per layer, head g at g * cap rows, so a direct view needs no copy
                if (g == 0) {
                    lane->k = common_calloc((size_t)NKV * kv->cap[l], kv->stride);
                    lane->v = common_calloc((size_t)NKV * kv->cap[l], kv->stride);
                } else {
                    lane->k = kv->lanes[l * NKV].k + (size_t)g * kv->cap[l] * kv->stride;
                    lane->v = kv->lanes[l * NKV].v + (size_t)g * kv->cap[l] * kv->stride;
                }
                if (kv->fpkeep) lane->fp = common_calloc(kv->cap[l], 1);
                if (pair_role(kv, l)) {
                    lane->merged = common_calloc(kv->cap[l], 1);
                    lane->mag = common_calloc((size_t)kv->cap[l] * 2, sizeof(float));
                }
            }
        }
    }
    kv->max_cap = max_cap; // the fp32 view is allocated when first asked for (kv_cache_attend needs none)
    kv->keep = common_calloc(max_cap, sizeof(int));
    kv->pooled = common_calloc(max_cap, sizeof(float));
    kv->mean = common_calloc(max_cap, sizeof(float));
    kv->row = common_calloc(HD, sizeof(float));
    kv->krot = common_calloc(HD, sizeof(float));
    kv->qbuf = common_calloc((size_t)shape->n_head * HD, sizeof(float));
    kv->attend_packed = 1;
    // RoPE table computed exactly as layers/rope.c does, so a full cache reproduces the training forward
    int half = HD / 2;
    kv->rope_cos = common_calloc((size_t)shape->max_positions * half, sizeof(float));
    kv->rope_sin = common_calloc((size_t)shape->max_positions * half, sizeof(float));
    for (int p = 0; p < shape->max_positions; p++)
        for (int i = 0; i < half; i++) {
            double ang = rope_angle(p, i, HD, shape->rope_theta);
            kv->rope_cos[(size_t)p * half + i] = (float)cos(ang);
            kv->rope_sin[(size_t)p * half + i] = (float)sin(ang);
        }
    *out = kv;
    return 0;
}

int kv_full_init(KVCache **out, const KVShape *shape, char *err) {
    KVSpec spec;
    CHECK(kv_spec_parse(&spec, "full", err) == 0);
    return kv_cache_init(out, &spec, shape, err);
}

void kv_cache_free(KVCache *kv) {
    if (!kv) return;
    for (int i = 0; i < kv->shape.n_layer * kv->shape.n_kv_head; i++) {
        common_free(kv->lanes[i].pos);
        common_free(kv->lanes[i].score);
        if (kv->spec.codec->is_kivi || i % kv->shape.n_kv_head == 0) { // else inside head 0's block
            common_free(kv->lanes[i].k);
            common_free(kv->lanes[i].v);
        }
        common_free(kv->lanes[i].res_k);
        common_free(kv->lanes[i].res_v);
        common_free(kv->lanes[i].fp);
        common_free(kv->lanes[i].merged);
        common_free(kv->lanes[i].mag);
    }
    void *bufs[] = {kv->tmp, kv->basis, kv->coef, kv->block, kv->lanes, kv->budget, kv->cap, kv->seen, kv->kview, kv->vview, kv->keep,
                    kv->pooled, kv->mean, kv->row, kv->rope_cos, kv->rope_sin, kv->krot, kv->qbuf};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) common_free(bufs[i]);
    common_free(kv->rng);
    common_free(kv);
}

void kv_cache_reset(KVCache *kv) {
    for (int i = 0; i < kv->shape.n_layer * kv->shape.n_kv_head; i++) kv->lanes[i].n = kv->lanes[i].n_res = 0;
    memset(kv->seen, 0, kv->shape.n_layer * sizeof(int));
    seed_rngs(kv);
}

void kv_cache_set_prefill(KVCache *kv, int prefill_len) { kv->prefill_len = prefill_len; }

static void lane_remove(const KVCache *kv, KVLane *lane, int slot) {
    int tail = lane->n - slot - 1;
    size_t rb = kv->stride;
    if (lane->fp) memmove(lane->fp + slot, lane->fp + slot + 1, tail);
    memmove(lane->pos + slot, lane->pos + slot + 1, tail * sizeof(int));
    memmove(lane->score + slot, lane->score + slot + 1, tail * sizeof(float));
    memmove(lane->k + slot * rb, lane->k + (slot + 1) * rb, tail * rb);
    memmove(lane->v + slot * rb, lane->v + (slot + 1) * rb, tail * rb);
    lane->n--;
}

static int victim(KVCache *kv, const KVLane *lane, int budget) {
    int layer = (int)(lane - kv->lanes) / kv->shape.n_kv_head;
    int s = kv->spec.policy->victim(lane, &kv->spec, budget, &kv->rng[layer]);
    CHECK(s >= 0 && s < lane->n);
    return s;
}

// KIVI: the token joins the fp32 residual; when `residual` tokens wait, the oldest G are quantized: their
// keys per channel (one group of G values per channel), their values per token.
static void kivi_append(KVCache *kv, KVLane *lane, const float *k, const float *v) {
    int HD = kv->shape.head_dim, G = kv->spec.group, R = kv->spec.residual, bits = kv->spec.codec->bits;
    memcpy(lane->res_k + (size_t)lane->n_res * HD, k, HD * sizeof(float));
    memcpy(lane->res_v + (size_t)lane->n_res * HD, v, HD * sizeof(float));
    lane->n_res++;
    if (lane->n_res < R) return;
    int quantized = lane->n - lane->n_res; // tokens already in blocks (a multiple of G)
    uint8_t *kb = lane->k + (size_t)(quantized / G) * HD * kv->kivi_key_bytes;
    memcpy(kv->block, lane->res_k, (size_t)G * HD * sizeof(float));
    if (kv->spec.hadamard)
        for (int j = 0; j < G; j++) quant_hadamard(kv->block + (size_t)j * HD, HD);
    for (int c = 0; c < HD; c++) quant_encode_col(kb + c * kv->kivi_key_bytes, kv->block, G, HD, c, bits);
    for (int j = 0; j < G; j++)
        quant_encode_row(lane->v + (size_t)(quantized + j) * kv->kivi_val_bytes, lane->res_v + (size_t)j * HD, HD,
                         kv->kivi_vgroup, bits);
    lane->n_res -= G;
    memmove(lane->res_k, lane->res_k + (size_t)G * HD, (size_t)lane->n_res * HD * sizeof(float));
    memmove(lane->res_v, lane->res_v + (size_t)G * HD, (size_t)lane->n_res * HD * sizeof(float));
}

// KIVI: fills the fp32 (n, HD) views, quantized blocks first, then the residual (keys as stored: rotated on
// entry unless the shape keeps them before RoPE).
static void kivi_view(KVCache *kv, const KVLane *lane, float *kg, float *vg) {
    int HD = kv->shape.head_dim, G = kv->spec.group, quantized = lane->n - lane->n_res;
    for (int b = 0; b < quantized / G; b++) {
        float *blk = kg + (size_t)b * G * HD;
        for (int c = 0; c < HD; c++)
            quant_decode_col(blk, lane->k + ((size_t)b * HD + c) * kv->kivi_key_bytes, G, HD, c, kv->spec.codec->bits);
        if (kv->spec.hadamard)
            for (int j = 0; j < G; j++) quant_hadamard(blk + (size_t)j * HD, HD);
    }
    for (int s = 0; s < quantized; s++)
        quant_decode_row(vg + (size_t)s * HD, lane->v + (size_t)s * kv->kivi_val_bytes, HD, kv->kivi_vgroup, kv->spec.codec->bits);
    memcpy(kg + (size_t)quantized * HD, lane->res_k, (size_t)lane->n_res * HD * sizeof(float));
    memcpy(vg + (size_t)quantized * HD, lane->res_v, (size_t)lane->n_res * HD * sizeof(float));
}

// minicache: token slot s has just been stored in both layers of a pair; merge it if its directions agree.
static void minicache_pair(KVCache *kv, KVLane *a, KVLane *b, int s, const float *kb, const float *vb) {
    int HD = kv->shape.head_dim;
    float *ka = kv->tmp, *va = kv->tmp + HD, *ek = kv->tmp + 2 * HD, *ev = kv->tmp + 3 * HD;
    float max_angle = (float)(kv->spec.merge_angle * 3.14159265358979 / 180.0), nka, nkb, nva, nvb;
    CHECK(a->n == b->n);
    get_row(kv, a, s, 1, ka);
    get_row(kv, a, s, 0, va);
    if (!minicache_merge(ek, &nka, &nkb, ka, kb, HD, 0.5f, max_angle) ||
        !minicache_merge(ev, &nva, &nvb, va, vb, HD, 0.5f, max_angle))
        return;
    put_row(kv, a, s, 1, ek); // the shared directions live in the first layer's rows
    put_row(kv, a, s, 0, ev);
    a->mag[2 * s] = nka, a->mag[2 * s + 1] = nva;
    b->mag[2 * s] = nkb, b->mag[2 * s + 1] = nvb;
    a->merged[s] = b->merged[s] = 1;
}

int kv_cache_append(KVCache *kv, int layer, int pos, const float *k_pre, const float *v) {
    int HD = kv->shape.head_dim, NKV = kv->shape.n_kv_head, budget = kv->budget[layer];
    CHECK(kv->calibrated);
    if (pos >= kv->shape.max_positions || kv->lanes[layer * NKV].n >= kv->cap[layer]) return -1;
    for (int g = 0; g < NKV; g++) {
        KVLane *lane = &kv->lanes[layer * NKV + g];
        int s = lane->n++;
        if (lane->pos) lane->pos[s] = pos;
        else CHECK(pos == s); // a full cache is fed positions 0, 1, 2, ... after each reset
        const float *kh = k_pre + g * HD;
        lane->score[s] = kv->spec.policy->enter_score ? kv->spec.policy->enter_score(kh, HD) : 0.0f;
        if (lane->merged) lane->merged[s] = 0;
        if (kv->rotated) { // rotated once here instead of at every view, then encoded
            memcpy(kv->krot, kh, HD * sizeof(float));
            rope_row(kv, kv->krot, pos);
            kh = kv->krot;
        }
        if (kv->spec.codec->is_kivi) {
            kivi_append(kv, lane, kh, v + g * HD);
            continue;
        }
        if (kv->spec.rank) { // rows hold coefficients on the (layer, head) bases
            const float *U = kv->basis + ((size_t)(layer * NKV + g) * 2) * HD * kv->dim;
            if (lane->fp) lane->fp[s] = 1;
            lowrank_project(kv->coef, U, kh, HD, kv->dim);
            put_row(kv, lane, s, 1, kv->coef);
            lowrank_project(kv->coef, U + (size_t)HD * kv->dim, v + g * HD, HD, kv->dim);
            put_row(kv, lane, s, 0, kv->coef);
        } else {
            if (lane->fp) lane->fp[s] = 1;
            put_row(kv, lane, s, 1, kh);
            put_row(kv, lane, s, 0, v + g * HD);
        }
        if (lane->fp) fpkeep_age(kv, lane, pos);
        if (pair_role(kv, layer) == 2) minicache_pair(kv, &kv->lanes[(layer - 1) * NKV + g], lane, s, kh, v + g * HD);
        if (budget && kv->spec.policy->evict_at_append && lane->n > budget)
            lane_remove(kv, lane, victim(kv, lane, budget));
    }
    kv->seen[layer]++;
    return 0;
}

int kv_cache_query_pos(const KVCache *kv, int layer) {
    const KVLane *lane = &kv->lanes[layer * kv->shape.n_kv_head];
    CHECK(lane->n > 0);
    return kv->spec.policy->in_cache_positions ? lane->n - 1 : kv_lane_pos(lane, lane->n - 1);
}

void kv_cache_view(KVCache *kv, int layer, const float **k, const float **v, int *Tc, int *qpos,
                   size_t *head_stride) {
    int HD = kv->shape.head_dim, NKV = kv->shape.n_kv_head;
    int n = kv->lanes[layer * NKV].n, in_cache = kv->spec.policy->in_cache_positions;
    *Tc = n;
    *qpos = kv_cache_query_pos(kv, layer);
    if (kv->direct) {
        *k = (const float *)kv->lanes[layer * NKV].k;
        *v = (const float *)kv->lanes[layer * NKV].v;
        *head_stride = (size_t)kv->cap[layer] * HD;
        return;
    }
    for (int g = 0; g < NKV; g++) {
        const KVLane *lane = &kv->lanes[layer * NKV + g];
        CHECK(lane->n == n);
        if (!kv->kview) {
            kv->kview = common_calloc((size_t)NKV * kv->max_cap * HD, sizeof(float));
            kv->vview = common_calloc((size_t)NKV * kv->max_cap * HD, sizeof(float));
        }
        float *kg = kv->kview + (size_t)g * n * HD, *vg = kv->vview + (size_t)g * n * HD;
        if (kv->spec.codec->is_kivi) kivi_view(kv, lane, kg, vg);
        for (int s = 0; s < n; s++) {
            float *kr = kg + (size_t)s * HD;
            if (kv->spec.rank) {
                const float *U = kv->basis + ((size_t)(layer * NKV + g) * 2) * HD * kv->dim;
                get_row(kv, lane, s, 1, kv->coef);
                lowrank_rebuild(kr, U, kv->coef, HD, kv->dim);
                get_row(kv, lane, s, 0, kv->coef);
                lowrank_rebuild(vg + (size_t)s * HD, U + (size_t)HD * kv->dim, kv->coef, HD, kv->dim);
            } else if (lane->merged && lane->merged[s]) { // shared direction times this layer's norms
                const KVLane *src = pair_role(kv, layer) == 2 ? &kv->lanes[(layer - 1) * NKV + g] : lane;
                float *vr = vg + (size_t)s * HD;
                get_row(kv, src, s, 1, kr);
                get_row(kv, src, s, 0, vr);
                for (int i = 0; i < HD; i++) kr[i] *= lane->mag[2 * s], vr[i] *= lane->mag[2 * s + 1];
            } else if (!kv->spec.codec->is_kivi) {
                get_row(kv, lane, s, 1, kr);
                get_row(kv, lane, s, 0, vg + (size_t)s * HD);
            }
            if (!kv->rotated) rope_row(kv, kr, in_cache ? s : kv_lane_pos(lane, s));
        }
    }
    *k = kv->kview;
    *v = kv->vview;
    *head_stride = (size_t)n * HD;
}

// After attention: the policy takes its evidence (the attention each slot got, averaged over the group's
// query heads), then a lane over budget drops its victim, or SnapKV selects once at the end of the prompt.
void kv_cache_observe(KVCache *kv, int layer, const float *att) {
    const KVPolicy *pol = kv->spec.policy;
    int evicts_here = pol->victim && !pol->evict_at_append;
    if (!pol->observe && !pol->select_prompt && !evicts_here) return;
    int NH = kv->shape.n_head, NKV = kv->shape.n_kv_head, rep = NH / NKV, budget = kv->budget[layer];
    int n = kv->lanes[layer * NKV].n, seen = kv->seen[layer];
    for (int g = 0; g < NKV; g++) {
        KVLane *lane = &kv->lanes[layer * NKV + g];
        if (pol->observe) {
            for (int s = 0; s < n; s++) {
                float a = 0.0f;
                for (int h = g * rep; h < (g + 1) * rep; h++) a += att[(size_t)h * n + s];
                kv->mean[s] = a / rep;
            }
            pol->observe(lane, &kv->spec, kv->mean, seen, kv->prefill_len);
        }
        if (pol->select_prompt) {
            if (kv->prefill_len > 0 && seen == kv->prefill_len && n > budget) {
                pol->select_prompt(lane, &kv->spec, budget, kv->keep, kv->pooled);
                // keep[] is ascending: compact the kept slots to the front in order
                size_t rb = kv->stride;
                for (int j = 0; j < budget; j++) {
                    int s = kv->keep[j];
                    if (lane->fp) lane->fp[j] = lane->fp[s];
                    lane->pos[j] = lane->pos[s];
                    lane->score[j] = lane->score[s];
                    memmove(lane->k + j * rb, lane->k + s * rb, rb);
                    memmove(lane->v + j * rb, lane->v + s * rb, rb);
                }
                lane->n = budget;
            }
        } else if (evicts_here && budget && lane->n > budget) {
            lane_remove(kv, lane, victim(kv, lane, budget));
        }
    }
}

size_t kv_cache_bytes(const KVCache *kv) {
    size_t held = 0, per_token = 2 * kv->row_bytes + (!kv_spec_is_full(&kv->spec) ? sizeof(int) : 0) +
                                 (kv->spec.policy->needs_scores ? sizeof(float) : 0);
    for (int i = 0; i < kv->shape.n_layer * kv->shape.n_kv_head; i++) {
        const KVLane *lane = &kv->lanes[i];
        held += (size_t)lane->n * per_token;
        if (lane->merged) { // a flag per slot; merged slots add two norms, and the second layer holds no rows
            int second = pair_role(kv, i / kv->shape.n_kv_head) == 2;
            for (int s = 0; s < lane->n; s++)
                if (lane->merged[s]) {
                    held += 2 * sizeof(float);
                    if (second) held -= 2 * kv->row_bytes;
                }
            held += lane->n;
        }
        if (lane->fp) // fp32 slots hold full rows instead of encoded ones, plus a flag byte per slot
            for (int s = 0; s < lane->n; s++) held += 1 + (lane->fp[s] ? 2 * (kv->dim * sizeof(float) - kv->row_bytes) : 0);
        if (kv->spec.codec->is_kivi) { // quantized blocks and rows, plus the fp32 residual
            int quantized = lane->n - lane->n_res, HD = kv->shape.head_dim;
            held += (size_t)(quantized / kv->spec.group) * HD * kv->kivi_key_bytes + (size_t)quantized * kv->kivi_val_bytes +
                    (size_t)lane->n_res * 2 * HD * sizeof(float) + sizeof(int);
        }
    }
    held += (size_t)kv->shape.n_layer * kv->shape.n_kv_head * sizeof(int); // each lane's count
    if (kv->spec.rank) held += (size_t)kv->shape.n_layer * kv->shape.n_kv_head * 2 * kv->shape.head_dim * kv->spec.rank * sizeof(float);
    return held;
}

int kv_cache_needs_calibration(const KVCache *kv) { return !kv->calibrated; }

int kv_lowrank_fit(KVCache *kv, int layer, int head, const float *keys, const float *values, int n, char *err) {
    int HD = kv->shape.head_dim, R = kv->spec.rank, NKV = kv->shape.n_kv_head;
    CHECK(R > 0);
    float *U = kv->basis + ((size_t)(layer * NKV + head) * 2) * HD * R;
    if (lowrank_basis_fit(U, keys, n, HD, R, err) != 0 || lowrank_basis_fit(U + (size_t)HD * R, values, n, HD, R, err) != 0)
        return -1;
    // fitted once every (layer, head) has been: the caller fits them all in order
    kv->calibrated = layer == kv->shape.n_layer - 1 && head == NKV - 1;
    return 0;
}


int kv_cache_clamped_budget(const KVCache *kv) { return kv->clamped_from; }

int kv_cache_tokens(const KVCache *kv, int layer) { return kv->lanes[layer * kv->shape.n_kv_head].n; }
int kv_cache_layer_budget(const KVCache *kv, int layer) { return kv->budget[layer]; }
const KVLane *kv_cache_lane(const KVCache *kv, int layer, int head) { return &kv->lanes[layer * kv->shape.n_kv_head + head]; }
