// packed.h: attention from encoded KV rows. One generic kernel per operation, inlined per format (and for the
// common group of 32) so the format's decode folds into the loop. Along a row, a group's whole chunks of values
// go the vector way, in the order they unpack fastest, then W values at a time, then one at a time; rows
// whose groups do not fill vectors (small head dims or groups) are taken W rows at once, one per lane. A
// scalar build (no AVX2/AVX-512) takes every value one at a time.
#include "packed.h"

#include <string.h>

#include "codec.h"
#include "packed_simd.h"
#include "quant.h"

static const int format_bits[] = {8, 4, 2, 8, 16, 32};
static const int format_header[] = {4, 4, 4, 2, 0, 0}; // bytes before a group's codes: scale (and minimum)

PackedFormat packed_int_format(int bits) { return bits == 8 ? PACKED_INT8 : bits == 4 ? PACKED_INT4 : PACKED_INT2; }

INLINE int has_min(PackedFormat f) { return f <= PACKED_INT2; }

// An fp16 header field (little-endian).
INLINE float half_at(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return quant_f16_to_f32(h);
#endif
}

// An int group's header: its scale and minimum, converted together.
INLINE void scale_min_at(const uint8_t *p, float *scale, float *min) {
#if defined(__F16C__)
    int32_t u;
    memcpy(&u, p, 4); // little-endian host (x86)
    __m128 x = _mm_cvtph_ps(_mm_cvtsi32_si128(u));
    *scale = _mm_cvtss_f32(x);
    *min = _mm_cvtss_f32(_mm_movehdup_ps(x));
#else
    *scale = half_at(p);
    *min = half_at(p + 2);
#endif
}

// Value i of a group's codes, before its scale and minimum.
INLINE float value_at(PackedFormat f, const uint8_t *codes, int i) {
    switch (f) {
    case PACKED_INT8: return (float)codes[i];
    case PACKED_INT4: return (float)((codes[i >> 1] >> ((i & 1) * 4)) & 15u);
    case PACKED_INT2: return (float)((codes[i >> 2] >> ((i & 3) * 2)) & 3u);
    case PACKED_FP8: return kv_fp8_to_f32(codes[i]);
    case PACKED_F16: return half_at(codes + 2 * (size_t)i);
    default: {
        float x;
        memcpy(&x, codes + 4 * (size_t)i, sizeof(x));
        return x;
    }
    }
}

// --- the kernels ------------------------------------------------------------------------------------------

INLINE size_t group_bytes(PackedFormat f, int g) {
    return (size_t)format_header[f] + ((size_t)g * (size_t)format_bits[f] + 7) / 8;
}

// --- short rows: W rows at once, one per lane ---------------------------------------------------------------
// A group whose values do not fill whole vectors (head dims or groups below W) would go one value at a time
// along the row; instead W rows are taken together, each lane reading its row's header and codes as 32-bit
// words (gathered), so every operation, the scale and minimum too, serves W rows. A word may reach up to 3
// bytes past a row's last group: such rows are taken this way only when another row follows (stride >=
// row bytes, so the bytes read belong to it).
#ifdef W
// (Measured: fp16 and fp32 rows of whole vectors go faster along the row; int and fp8 rows shorter than two
// vectors faster by lanes, their headers and reductions shared by W rows.)
INLINE int by_lanes(PackedFormat f, int g, int dim) {
    return f >= PACKED_F16 ? dim % W != 0 : g % W != 0 || dim < 2 * W;
}

// Value m of a gathered word of codes.
INLINE vf word_value(PackedFormat f, vi x, int m) {
    switch (f) {
    case PACKED_INT8: return vfield(x, 8 * m, 255);
    case PACKED_INT4: return vfield(x, 4 * m, 15);
    case PACKED_INT2: return vfield(x, 2 * m, 3);
    case PACKED_FP8: return fp8_lanes(vi_and255(vshift(x, 8 * m)));
    case PACKED_F16: return vhalf_lo(vshift(x, 16 * m));
    default: return vbits(x);
    }
}

// The rows [0, return value) whose words can be gathered: whole blocks of W, the last row only when nothing
// is read past its end.
INLINE int lane_rows(PackedFormat f, int g, int n, int dim) {
    int hb = format_header[f], ng = dim / g, cb = (g * format_bits[f] + 7) / 8;
    size_t gb = group_bytes(f, g), last_group = (size_t)(ng - 1) * gb;
    size_t end = last_group + (size_t)hb + 4 * (size_t)((cb + 3) / 4);
    if (hb && last_group + 4 > end) end = last_group + 4; // the header word
    int usable = end > (size_t)ng * gb ? n - 1 : n;
    return usable > 0 ? usable / W * W : 0;
}

INLINE void score_lanes(PackedFormat f, int g, float *scores, const float *q, const float *qsum, const uint8_t *rows,
                        size_t stride, int n, int dim) {
    int hb = format_header[f], bits = format_bits[f], ng = dim / g, cpw = 32 / bits, nw = ((g * bits + 7) / 8 + 3) / 4;
    size_t gb = group_bytes(f, g);
    vi off = vrow_offsets(stride);
    for (int s0 = 0; s0 < n; s0 += W) {
        const uint8_t *base = rows + (size_t)s0 * stride;
        vf acc = vf_set1(0.0f);
        for (int j = 0; j < ng; j++) {
            const uint8_t *gp = base + (size_t)j * gb;
            const float *qg = q + j * g;
            vf d = vf_set1(0.0f);
            for (int k = 0; k < nw; k++) {
                vi x = vgather(gp + hb + 4 * k, off);
                for (int m = 0; m < cpw && k * cpw + m < g; m++) d = vf_fmadd(word_value(f, x, m), vf_set1(qg[k * cpw + m]), d);
            }
            if (hb) {
                vi h = vgather(gp, off);
                acc = vf_fmadd(d, vhalf_lo(h), acc);
                if (has_min(f)) acc = vf_fmadd(vhalf_lo(vshift(h, 16)), vf_set1(qsum[j]), acc);
            } else {
                acc = vf_add(acc, d);
            }
        }
        vf_store(scores + s0, acc);
    }
}

INLINE void accumulate_lanes(PackedFormat f, int g, float *out, const float *p, const uint8_t *rows, size_t stride,
                             int n, int dim) {
    int hb = format_header[f], bits = format_bits[f], ng = dim / g, cpw = 32 / bits, nw = ((g * bits + 7) / 8 + 3) / 4;
    size_t gb = group_bytes(f, g);
    float acc[dim * W], bias[ng * W]; // per channel and per group, one partial sum per lane
    for (int i = 0; i < dim * W; i++) acc[i] = 0.0f;
    for (int i = 0; i < ng * W; i++) bias[i] = 0.0f;
    vi off = vrow_offsets(stride);
    for (int s0 = 0; s0 < n; s0 += W) {
        const uint8_t *base = rows + (size_t)s0 * stride;
        vf pw = vf_load(p + s0);
        for (int j = 0; j < ng; j++) {
            const uint8_t *gp = base + (size_t)j * gb;
            vf w = pw;
            if (hb) {
                vi h = vgather(gp, off);
                w = vf_mul(pw, vhalf_lo(h));
                if (has_min(f)) vf_store(bias + j * W, vf_fmadd(pw, vhalf_lo(vshift(h, 16)), vf_load(bias + j * W)));
            }
            for (int k = 0; k < nw; k++) {
                vi x = vgather(gp + hb + 4 * k, off);
                for (int m = 0; m < cpw && k * cpw + m < g; m++) {
                    float *a = acc + (size_t)(j * g + k * cpw + m) * W;
                    vf_store(a, vf_fmadd(word_value(f, x, m), w, vf_load(a)));
                }
            }
        }
    }
    for (int j = 0; j < ng; j++) {
        float b = vf_hsum(vf_load(bias + j * W));
        for (int i = j * g; i < (j + 1) * g; i++) out[i] += vf_hsum(vf_load(acc + (size_t)i * W)) + b;
    }
}
#endif

#ifdef W
// The values of a group in whole chunks; after them, W values at a time in order, then one at a time.
INLINE int chunked(PackedFormat f, int g) { return g / chunk_len(f) * chunk_len(f); }
#endif

#ifdef W
// sum[v] = sum over s < n of w[s] * (chunk at codes + s * stride)[v], two rows at a time into two accumulators
// (the accumulate kernel over a tile's rows, KIVI's key scores over a block's channels).
INLINE void chunk_weighted_sum(PackedFormat f, const uint8_t *codes, size_t stride, const float *w, int n,
                               vf sum[2]) {
    vf a0[2] = {vf_set1(0.0f), vf_set1(0.0f)}, a1[2] = {vf_set1(0.0f), vf_set1(0.0f)}, x0[2], x1[2];
    int s = 0;
    for (; s + 2 <= n; s += 2) {
        vchunk(f, codes + (size_t)s * stride, x0);
        vchunk(f, codes + (size_t)(s + 1) * stride, x1);
        for (int v = 0; v < chunk_vectors(f); v++) {
            a0[v] = vf_fmadd(x0[v], vf_set1(w[s]), a0[v]);
            a1[v] = vf_fmadd(x1[v], vf_set1(w[s + 1]), a1[v]);
        }
    }
    if (s < n) {
        vchunk(f, codes + (size_t)s * stride, x0);
        for (int v = 0; v < chunk_vectors(f); v++) a0[v] = vf_fmadd(x0[v], vf_set1(w[s]), a0[v]);
    }
    for (int v = 0; v < chunk_vectors(f); v++) sum[v] = vf_add(a0[v], a1[v]);
}
#endif

// x (dim, groups of g) in chunk order: within each group's chunks, position v * W + l holds chunk_pos(f, v, l).
INLINE void to_chunk_order(PackedFormat f, int g, float *dst, const float *x, int dim) {
#ifdef W
    int full = chunked(f, g);
#else
    (void)f; // a scalar build takes the values in order
#endif
    for (int j = 0; j < dim; j += g) {
        int i = 0;
#ifdef W
        for (; i < full; i += chunk_len(f))
            for (int v = 0; v < chunk_vectors(f); v++)
                for (int l = 0; l < W; l++) dst[j + i + v * W + l] = x[j + i + chunk_pos(f, v, l)];
#endif
        for (; i < g; i++) dst[j + i] = x[j + i];
    }
}

// out += x in chunk order (the inverse of to_chunk_order).
INLINE void add_from_chunk_order(PackedFormat f, int g, float *out, const float *x, int dim) {
#ifdef W
    int full = chunked(f, g);
#else
    (void)f; // a scalar build takes the values in order
#endif
    for (int j = 0; j < dim; j += g) {
        int i = 0;
#ifdef W
        for (; i < full; i += chunk_len(f))
            for (int v = 0; v < chunk_vectors(f); v++)
                for (int l = 0; l < W; l++) out[j + i + chunk_pos(f, v, l)] += x[j + i + v * W + l];
#endif
        for (; i < g; i++) out[j + i] += x[j + i];
    }
}

// One row's dot product with the chunk-ordered query qc: the vector part in *acc, the scalar part returned.
#ifdef W
INLINE float row_dot(PackedFormat f, int g, const float *qc, const float *qsum, const uint8_t *r, int ng,
                     vf *acc) {
#else
INLINE float row_dot(PackedFormat f, int g, const float *qc, const float *qsum, const uint8_t *r, int ng) {
#endif
    int hb = format_header[f];
    size_t gb = group_bytes(f, g);
    float tail = 0.0f;
#ifdef W
    int bits = format_bits[f], full = chunked(f, g);
#endif
#ifdef W
    vf a = vf_set1(0.0f);
#endif
    for (int j = 0; j < ng; j++, r += gb) {
        const float *qg = qc + j * g;
        const uint8_t *codes = r + hb;
        float dt = 0.0f;
        int i = 0;
#ifdef W
        vf d = vf_set1(0.0f), c[2];
        for (; i < full; i += chunk_len(f)) {
            vchunk(f, codes + (size_t)i * bits / 8, c);
            d = vf_fmadd(c[0], vf_load(qg + i), d);
            if (chunk_vectors(f) == 2) d = vf_fmadd(c[1], vf_load(qg + i + W), d);
        }
        for (; i + W <= g; i += W) d = vf_fmadd(vvalues(f, codes + (size_t)i * bits / 8), vf_load(qg + i), d);
#endif
        for (; i < g; i++) dt += qg[i] * value_at(f, codes, i);
        if (hb) {
            float scale, min = 0.0f;
            if (has_min(f)) scale_min_at(r, &scale, &min);
            else scale = half_at(r);
#ifdef W
            a = vf_fmadd(d, vf_set1(scale), a);
#endif
            dt = dt * scale + min * qsum[j];
        }
#ifdef W
        else a = vf_add(a, d);
#endif
        tail += dt;
    }
#ifdef W
    *acc = a;
#endif
    return tail;
}

INLINE void score_rows(PackedFormat f, int g, float *scores, const float *q, const uint8_t *rows, size_t stride,
                       int n, int dim) {
    int ng = dim / g;
    float qc[dim], qsum[ng];
    to_chunk_order(f, g, qc, q, dim);
    for (int j = 0; j < ng; j++) {
        float a = 0.0f;
        for (int i = 0; i < g; i++) a += q[j * g + i];
        qsum[j] = a;
    }
    int s = 0;
#ifdef W
    if (by_lanes(f, g, dim)) {
        s = lane_rows(f, g, n, dim);
        score_lanes(f, g, scores, q, qsum, rows, stride, s, dim);
    }
    for (; s + W <= n; s += W) { // W rows, then their W sums at once
        vf acc[W];
        float tail[W];
        for (int k = 0; k < W; k++) tail[k] = row_dot(f, g, qc, qsum, rows + (size_t)(s + k) * stride, ng, &acc[k]);
        vf_store(scores + s, vf_add(vsum_lanes(acc), vf_load(tail)));
    }
    for (; s < n; s++) {
        vf acc;
        float tail = row_dot(f, g, qc, qsum, rows + (size_t)s * stride, ng, &acc);
        scores[s] = vf_hsum(acc) + tail;
    }
#else
    for (; s < n; s++) scores[s] = row_dot(f, g, qc, qsum, rows + (size_t)s * stride, ng);
#endif
}

enum { TILE = 32 }; // rows whose weights are taken at once

INLINE void accumulate_rows(PackedFormat f, int g, float *out, const float *p, const uint8_t *rows, size_t stride,
                            int n, int dim) {
#ifdef W
    if (by_lanes(f, g, dim)) { // whole blocks of W rows by lanes, the rest as below
        int done = lane_rows(f, g, n, dim);
        accumulate_lanes(f, g, out, p, rows, stride, done, dim);
        p += done, rows += (size_t)done * stride, n -= done;
    }
#endif
    int hb = format_header[f], ng = dim / g;
    size_t gb = group_bytes(f, g);
#ifdef W
    int bits = format_bits[f], full = chunked(f, g);
#endif
    // w[j * TILE + s]: row s's weight on group j's codes; bias: sum p * min; acc: the sums in chunk order
    float w[TILE * ng], bias[ng], acc[dim];
    for (int j = 0; j < ng; j++) bias[j] = 0.0f;
    for (int i = 0; i < dim; i++) acc[i] = 0.0f;
    for (int t0 = 0; t0 < n; t0 += TILE) {
        int tn = n - t0 < TILE ? n - t0 : TILE;
        const uint8_t *tile = rows + (size_t)t0 * stride;
        for (int j = 0; j < ng; j++) {
            float b[2] = {0.0f, 0.0f}; // two sums, so that consecutive rows do not wait on each other
            for (int s = 0; s < tn; s++) {
                const uint8_t *h = tile + (size_t)s * stride + j * gb;
                float scale = 1.0f, min = 0.0f;
                if (has_min(f)) scale_min_at(h, &scale, &min);
                else if (hb) scale = half_at(h);
                w[j * TILE + s] = p[t0 + s] * scale;
                b[s & 1] += p[t0 + s] * min;
            }
            bias[j] += b[0] + b[1];
        }
        for (int j = 0; j < ng; j++) {
            const uint8_t *codes = tile + j * gb + hb;
            const float *wj = w + j * TILE;
            float *o = acc + j * g;
            int i = 0;
#ifdef W
            for (; i < full; i += chunk_len(f)) { // a chunk over the tile's rows
                vf sum[2];
                chunk_weighted_sum(f, codes + (size_t)i * bits / 8, stride, wj, tn, sum);
                for (int v = 0; v < chunk_vectors(f); v++)
                    vf_store(o + i + v * W, vf_add(vf_load(o + i + v * W), sum[v]));
            }
            for (; i + W <= g; i += W) { // W values in order (a group shorter than a chunk)
                const uint8_t *c = codes + (size_t)i * bits / 8;
                vf a0 = vf_set1(0.0f), a1 = vf_set1(0.0f);
                int s = 0;
                for (; s + 2 <= tn; s += 2) {
                    a0 = vf_fmadd(vvalues(f, c + (size_t)s * stride), vf_set1(wj[s]), a0);
                    a1 = vf_fmadd(vvalues(f, c + (size_t)(s + 1) * stride), vf_set1(wj[s + 1]), a1);
                }
                if (s < tn) a0 = vf_fmadd(vvalues(f, c + (size_t)s * stride), vf_set1(wj[s]), a0);
                vf_store(o + i, vf_add(vf_load(o + i), vf_add(a0, a1)));
            }
#endif
            for (; i < g; i++) {
                float a = 0.0f;
                for (int s = 0; s < tn; s++) a += wj[s] * value_at(f, codes + (size_t)s * stride, i);
                o[i] += a;
            }
        }
    }
    if (has_min(f))
        for (int j = 0; j < ng; j++)
            for (int i = 0; i < g; i++) acc[j * g + i] += bias[j];
    add_from_chunk_order(f, g, out, acc, dim);
}

// Each format inlined once for groups of 32 (the default) and once for any group.
#define BY_GROUP(kernel, F, g, ...) ((g) == 32 ? kernel(F, 32, __VA_ARGS__) : kernel(F, g, __VA_ARGS__))
#define BY_FORMAT(kernel, f, g, ...)                                                                              \
    switch (f) {                                                                                                  \
    case PACKED_INT8: BY_GROUP(kernel, PACKED_INT8, g, __VA_ARGS__); break;                                       \
    case PACKED_INT4: BY_GROUP(kernel, PACKED_INT4, g, __VA_ARGS__); break;                                       \
    case PACKED_INT2: BY_GROUP(kernel, PACKED_INT2, g, __VA_ARGS__); break;                                       \
    case PACKED_FP8: BY_GROUP(kernel, PACKED_FP8, g, __VA_ARGS__); break;                                         \
    case PACKED_F16: kernel(PACKED_F16, dim, __VA_ARGS__); break;                                                 \
    case PACKED_F32: kernel(PACKED_F32, dim, __VA_ARGS__); break;                                                 \
    }

void packed_score(PackedFormat f, float *scores, const float *q, const uint8_t *rows, size_t stride, int n, int dim,
                  int g) {
    BY_FORMAT(score_rows, f, g, scores, q, rows, stride, n, dim)
}

void packed_accumulate(PackedFormat f, float *out, const float *p, const uint8_t *rows, size_t stride, int n,
                       int dim, int g) {
    BY_FORMAT(accumulate_rows, f, g, out, p, rows, stride, n, dim)
}

// KIVI keys: token t of the block is min_c + scale_c * code_{c,t} in channel c, so q . key_t is
// sum_c q_c min_c + sum_c (q_c scale_c) code_{c,t}: the first sum once per block, the second a chunk of tokens
// at a time (a channel's codes for consecutive tokens are consecutive), put back in token order per chunk.
INLINE void score_cols(PackedFormat f, int G, float *scores, const float *q, const uint8_t *block,
                       size_t chan_bytes, int dim) {
    float w[dim], k0 = 0.0f;
    for (int c = 0; c < dim; c++) {
        const uint8_t *h = block + (size_t)c * chan_bytes;
        w[c] = q[c] * half_at(h);
        k0 += q[c] * half_at(h + 2);
    }
    int t = 0;
#ifdef W
    int bits = format_bits[f], full = chunked(f, G);
    for (; t < full; t += chunk_len(f)) {
        vf sum[2];
        chunk_weighted_sum(f, block + 4 + (size_t)t * bits / 8, chan_bytes, w, dim, sum);
        float sums[2 * W];
        for (int v = 0; v < chunk_vectors(f); v++) vf_store(sums + v * W, vf_add(sum[v], vf_set1(k0)));
        for (int v = 0; v < chunk_vectors(f); v++)
            for (int l = 0; l < W; l++) scores[t + chunk_pos(f, v, l)] = sums[v * W + l];
    }
    for (; t + W <= G; t += W) { // W tokens in order (a block shorter than a chunk)
        const uint8_t *codes = block + 4 + (size_t)t * bits / 8;
        vf a = vf_set1(k0);
        for (int c = 0; c < dim; c++) a = vf_fmadd(vvalues(f, codes + (size_t)c * chan_bytes), vf_set1(w[c]), a);
        vf_store(scores + t, a);
    }
#endif
    for (; t < G; t++) {
        float a = 0.0f;
        for (int c = 0; c < dim; c++) a += w[c] * value_at(f, block + (size_t)c * chan_bytes + 4, t);
        scores[t] = a + k0;
    }
}

void packed_score_cols(float *scores, const float *q, const uint8_t *block, size_t chan_bytes, int G, int dim,
                       int bits) {
    switch (packed_int_format(bits)) {
    case PACKED_INT4: BY_GROUP(score_cols, PACKED_INT4, G, scores, q, block, chan_bytes, dim); break;
    case PACKED_INT2: BY_GROUP(score_cols, PACKED_INT2, G, scores, q, block, chan_bytes, dim); break;
    default: BY_GROUP(score_cols, PACKED_INT8, G, scores, q, block, chan_bytes, dim); break;
    }
}
