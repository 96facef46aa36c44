// kv/packed.c's vectors: W floats (AVX-512: 16, AVX2: 8; W undefined in a scalar build) and the loads that
// decode packed KV values into them; the float vector and its arithmetic are common/simd.h's. Included by
// packed.c only.
#ifndef KVLAB_KV_PACKED_SIMD_H
#define KVLAB_KV_PACKED_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "../common/simd.h"
#include "packed.h"

#define INLINE static inline __attribute__((always_inline))

// --- vectors of W values ---------------------------------------------------------------------------------
// vvalues: the W values of a group from value i on (i a multiple of W; p at the byte holding value i), in
// order. vchunk: a chunk of chunk_len(f) values (one or two vectors) from p, in the order that decodes with
// the fewest instructions: vector v, lane l holds the chunk's value chunk_pos(f, v, l). The kernels permute
// the query (score) or their accumulator (accumulate) to match, once per call. vsum_lanes: W vectors to one,
// lane k the sum of vector k's lanes.

#if VF_W == 16
#define W 16

// Halves, quarters, then pairs and single lanes of 128-bit blocks: after the last step lane 4k + m holds the
// sum of vector k + 4m.
INLINE vf vsum_lanes(const vf *x) {
    vf a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x88), _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xDD));
    vf d = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xDD));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), d);
}

// E4M3 codes (one per 32-bit lane) to floats: a normal code's exponent and mantissa shifted into place and
// rebiased (7 -> 127), a subnormal one m * 2^-9, then the sign.
INLINE vf fp8_lanes(__m512i x) {
    __m512i m = _mm512_and_si512(x, _mm512_set1_epi32(0x7F));
    __m512i normal = _mm512_add_epi32(_mm512_slli_epi32(m, 20), _mm512_set1_epi32(120 << 23));
    vf sub = _mm512_mul_ps(_mm512_cvtepi32_ps(m), _mm512_set1_ps(0x1p-9f));
    __mmask16 is_sub = _mm512_cmplt_epi32_mask(m, _mm512_set1_epi32(8));
    vf mag = _mm512_mask_blend_ps(is_sub, _mm512_castsi512_ps(normal), sub);
    __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(mag), sign));
}

INLINE vf vvalues(PackedFormat f, const uint8_t *p) {
    switch (f) {
    case PACKED_INT8: return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
    case PACKED_INT4: { // 8 bytes: each byte to two lanes, shifted by 0 and 4
        __m128i b = _mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)p),
                                     _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
        __m512i x = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(b), _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4,
                                                                                  0, 4, 0, 4));
        return _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(15)));
    }
    case PACKED_INT2: { // 4 bytes: each byte to four lanes, shifted by 0, 2, 4, 6
        int32_t u;
        memcpy(&u, p, 4);
        __m128i b = _mm_shuffle_epi8(_mm_cvtsi32_si128(u), _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
        __m512i x = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(b), _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6,
                                                                                  0, 2, 4, 6));
        return _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(3)));
    }
    case PACKED_FP8: return fp8_lanes(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
    case PACKED_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    default: return _mm512_loadu_ps((const float *)p);
    }
}

// One row per lane (short rows): 32-bit words gathered at base + offset[l], a field of them as floats.
typedef __m512i vi;
INLINE vi vrow_offsets(size_t stride) { return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)stride)); }
INLINE vi vgather(const uint8_t *base, vi offsets) { return _mm512_i32gather_epi32(offsets, (const void *)base, 1); }
INLINE vi vshift(vi x, int n) { return _mm512_srli_epi32(x, n); }
INLINE vf vfield(vi x, int n, int mask) { return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(x, n), _mm512_set1_epi32(mask))); }
INLINE vf vhalf_lo(vi x) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(x)); } // the fp16 in each lane's low half
INLINE vf vbits(vi x) { return _mm512_castsi512_ps(x); }
INLINE vi vi_and255(vi x) { return _mm512_and_si512(x, _mm512_set1_epi32(255)); }

INLINE void vchunk(PackedFormat f, const uint8_t *p, vf *c) {
    if (f == PACKED_INT4) { // 16 bytes: low nibbles, then high nibbles
        __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
        c[0] = _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(15)));
        c[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(x, 4));
    } else if (f == PACKED_INT2) { // 8 bytes in both halves: shifts 0 | 2, then 4 | 6
        int64_t u;
        memcpy(&u, p, 8);
        __m512i x = _mm512_cvtepu8_epi32(_mm_set1_epi64x(u)), three = _mm512_set1_epi32(3);
        __m512i s0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
        __m512i s1 = _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6);
        c[0] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(x, s0), three));
        c[1] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(x, s1), three));
    } else {
        c[0] = vvalues(f, p);
    }
}
#elif VF_W == 8 && defined(__FMA__) && defined(__F16C__)
#define W 8

// Halves, then two horizontal adds: lane 4b + i then holds the sum of vector 2i + b.
INLINE vf vsum_lanes(const vf *x) {
    vf a[4];
    for (int i = 0; i < 4; i++)
        a[i] = _mm256_add_ps(_mm256_permute2f128_ps(x[2 * i], x[2 * i + 1], 0x20),
                             _mm256_permute2f128_ps(x[2 * i], x[2 * i + 1], 0x31));
    vf d = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    return _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

INLINE vf fp8_lanes(__m256i x) { // as the AVX-512 version
    __m256i m = _mm256_and_si256(x, _mm256_set1_epi32(0x7F));
    __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(m, 20), _mm256_set1_epi32(120 << 23));
    vf sub = _mm256_mul_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(0x1p-9f));
    __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(8), m);
    vf mag = _mm256_blendv_ps(_mm256_castsi256_ps(normal), sub, _mm256_castsi256_ps(is_sub));
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x80)), 24);
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(mag), sign));
}

INLINE vf vvalues(PackedFormat f, const uint8_t *p) {
    switch (f) {
    case PACKED_INT8: return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    case PACKED_INT4: {
        int32_t u;
        memcpy(&u, p, 4);
        __m128i b = _mm_shuffle_epi8(_mm_cvtsi32_si128(u), _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0));
        __m256i x = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
        return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(15)));
    }
    case PACKED_INT2: {
        int32_t u = p[0] | (p[1] << 8);
        __m128i b = _mm_shuffle_epi8(_mm_cvtsi32_si128(u), _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0));
        __m256i x = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
        return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(3)));
    }
    case PACKED_FP8: return fp8_lanes(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    case PACKED_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    default: return _mm256_loadu_ps((const float *)p);
    }
}

typedef __m256i vi;
INLINE vi vrow_offsets(size_t stride) { return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)stride)); }
INLINE vi vgather(const uint8_t *base, vi offsets) { return _mm256_i32gather_epi32((const int *)(const void *)base, offsets, 1); }
INLINE vi vshift(vi x, int n) { return _mm256_srli_epi32(x, n); }
INLINE vf vfield(vi x, int n, int mask) { return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, n), _mm256_set1_epi32(mask))); }
INLINE vf vhalf_lo(vi x) {
    __m256i lo = _mm256_and_si256(x, _mm256_set1_epi32(0xFFFF));
    return _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1)));
}
INLINE vf vbits(vi x) { return _mm256_castsi256_ps(x); }
INLINE vi vi_and255(vi x) { return _mm256_and_si256(x, _mm256_set1_epi32(255)); }

INLINE void vchunk(PackedFormat f, const uint8_t *p, vf *c) {
    if (f == PACKED_INT4) { // 8 bytes: low nibbles, then high nibbles
        __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
        c[0] = _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(15)));
        c[1] = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4));
    } else if (f == PACKED_INT2) { // 4 bytes in both halves: shifts 0 | 2, then 4 | 6
        int32_t u;
        memcpy(&u, p, 4);
        __m256i x = _mm256_cvtepu8_epi32(_mm_set1_epi32(u)), three = _mm256_set1_epi32(3);
        c[0] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), three));
        c[1] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), three));
    } else {
        c[0] = vvalues(f, p);
    }
}
#endif


#ifdef W
INLINE int chunk_vectors(PackedFormat f) { return f == PACKED_INT4 || f == PACKED_INT2 ? 2 : 1; }
INLINE int chunk_len(PackedFormat f) { return W * chunk_vectors(f); }
INLINE int chunk_pos(PackedFormat f, int v, int l) {
    if (f == PACKED_INT4) return 2 * l + v;                           // byte l, nibble v
    if (f == PACKED_INT2) return 4 * (l % (W / 2)) + 2 * v + l / (W / 2); // byte l mod W/2, field 2v + l div W/2
    return l;
}
#endif

#endif
