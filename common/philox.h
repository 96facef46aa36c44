// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based
// generator. The i-th random word is a pure function of (key, counter), so any thread, on the CPU or the GPU,
// computes it without a shared state: the dropout masks (layers/residual.c and .cu) draw through it, the same
// bits on both backends and whatever the thread count. Header-only, and compiled by nvcc too (KVLAB_HD).
// Checked against the Random123 known-answer vectors in tests/test_philox.c.
#ifndef KVLAB_COMMON_PHILOX_H
#define KVLAB_COMMON_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define KVLAB_HD __host__ __device__ __forceinline__
#else
#define KVLAB_HD static inline
#endif

#define PHILOX_M0 0xD2511F53u // the round multipliers
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u // the key schedule's Weyl increments (golden ratio, sqrt(3) - 1)
#define PHILOX_W1 0xBB67AE85u

// out = Philox4x32 with 10 rounds of counter ctr under key.
KVLAB_HD void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) k0 += PHILOX_W0, k1 += PHILOX_W1;
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// The four words of block b (elements 4b .. 4b+3) of the stream (key, stream): counter (b, stream).
KVLAB_HD void philox_block(uint64_t key, uint64_t stream, uint64_t b, uint32_t out[4]) {
    uint32_t ctr[4] = {(uint32_t)b, (uint32_t)(b >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    uint32_t k[2] = {(uint32_t)key, (uint32_t)(key >> 32)};
    philox4x32_10(ctr, k, out);
}

// A word as a float in [0, 1): its top 24 bits times 2^-24, exact in fp32 on any backend.
KVLAB_HD float philox_unit(uint32_t w) { return (float)(w >> 8) * (1.0f / 16777216.0f); }

#endif
