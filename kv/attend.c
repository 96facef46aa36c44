// Attention for one query straight from a contiguous cache's stored rows (kv.h's kv_cache_attend), for the
// caches whose keys were rotated on entry and are held encoded: each query head's scores come from the
// encoded keys through the codec's score hook (KIVI: its per-channel key blocks, kv/packed.h, then its fp32
// residual), the softmax from common/vmath.h, the output from the encoded values through the accumulate
// hook. No row is decoded to memory or rotated. Slots fpkeep holds in fp32 go through the fp32 codec's
// hooks, run by run. Hadamard-rotated keys are scored against the rotated query: the transform is
// orthonormal and symmetric, so q . H(H k) = (H q) . (H k) with the stored H k.
#include <math.h>
#include <string.h>

#include "../common/par.h"
#include "../common/vmath.h"
#include "cache_impl.h"
#include "codec.h"
#include "packed.h"
#include "quant.h"

int kv_cache_attends_packed(const KVCache *kv) {
    const KVCodec *c = kv->spec.codec;
    return kv->attend_packed && kv->rotated && !kv->direct && (c->is_kivi || (c->score && c->accumulate));
}

// A lane's slots [0, n) through the codec's hook (keys: score, values: accumulate), fpkeep's fp32 runs through
// fp32's; qh is q as the encoded keys need it (Hadamard-rotated or q itself).
static void lane_score(const KVCache *kv, const KVLane *lane, int n, const float *q, const float *qh, float *scores) {
    for (int s0 = 0, s1; s0 < n; s0 = s1) {
        int fp = lane->fp && lane->fp[s0];
        for (s1 = s0 + 1; s1 < n && (lane->fp && lane->fp[s1]) == fp; s1++) {}
        const KVCodec *c = fp ? &kv_codec_f32 : kv->spec.codec;
        c->score(c, scores + s0, fp ? q : qh, lane->k + (size_t)s0 * kv->stride, kv->stride, s1 - s0, kv->dim,
                 kv->group);
    }
}

static void lane_accumulate(const KVCache *kv, const KVLane *lane, int n, const float *p, float *out) {
    for (int s0 = 0, s1; s0 < n; s0 = s1) {
        int fp = lane->fp && lane->fp[s0];
        for (s1 = s0 + 1; s1 < n && (lane->fp && lane->fp[s1]) == fp; s1++) {}
        const KVCodec *c = fp ? &kv_codec_f32 : kv->spec.codec;
        c->accumulate(c, out, p + s0, lane->v + (size_t)s0 * kv->stride, kv->stride, s1 - s0, kv->dim, kv->group);
    }
}

// KIVI: the quantized blocks (keys per channel, values per token), then the fp32 residual.
static void kivi_score(const KVCache *kv, const KVLane *lane, const float *q, const float *qh, float *scores) {
    int HD = kv->shape.head_dim, G = kv->spec.group, quantized = lane->n - lane->n_res;
    for (int b = 0; b < quantized / G; b++)
        packed_score_cols(scores + (size_t)b * G, qh, lane->k + (size_t)b * HD * kv->kivi_key_bytes,
                          kv->kivi_key_bytes, G, HD, kv->spec.codec->bits);
    packed_score(PACKED_F32, scores + quantized, q, (const uint8_t *)lane->res_k, HD * sizeof(float), lane->n_res,
                 HD, HD);
}

static void kivi_accumulate(const KVCache *kv, const KVLane *lane, const float *p, float *out) {
    int HD = kv->shape.head_dim, quantized = lane->n - lane->n_res;
    packed_accumulate(packed_int_format(kv->spec.codec->bits), out, p, lane->v, kv->kivi_val_bytes, quantized, HD,
                      kv->kivi_vgroup);
    packed_accumulate(PACKED_F32, out, p + quantized, (const uint8_t *)lane->res_v, HD * sizeof(float), lane->n_res,
                      HD, HD);
}

int kv_cache_attend(KVCache *kv, int layer, const float *q, float *out, float *att) {
    if (!kv_cache_attends_packed(kv)) return 0;
    int NH = kv->shape.n_head, NKV = kv->shape.n_kv_head, HD = kv->shape.head_dim, rep = NH / NKV;
    int n = kv->lanes[layer * NKV].n, kivi = kv->spec.codec->is_kivi;
    CHECK(n > 0);
    for (int g = 1; g < NKV; g++) CHECK(kv->lanes[layer * NKV + g].n == n);
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for if (par_worth((size_t)NH * n * HD)) schedule(static)
    for (int h = 0; h < NH; h++) {
        const KVLane *lane = &kv->lanes[layer * NKV + h / rep];
        const float *qk = q + (size_t)h * HD, *qh = qk;
        float *p = att + (size_t)h * n, *o = out + (size_t)h * HD;
        if (kv->spec.hadamard) {
            float *rot = kv->qbuf + (size_t)h * HD;
            memcpy(rot, qk, HD * sizeof(float));
            quant_hadamard(rot, HD);
            qh = rot;
        }
        if (kivi) kivi_score(kv, lane, qk, qh, p);
        else lane_score(kv, lane, n, qk, qh, p);
        vmath_scale(p, (size_t)n, scale);
        vmath_softmax(p, (size_t)n);
        memset(o, 0, HD * sizeof(float));
        if (kivi) kivi_accumulate(kv, lane, p, o);
        else lane_accumulate(kv, lane, n, p, o);
    }
    return n;
}

void kv_cache_set_attend_packed(KVCache *kv, int on) { kv->attend_packed = on; }
