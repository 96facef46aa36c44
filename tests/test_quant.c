// fp16 conversion, group quantization and the Hadamard rotation (kv/quant.c) against their definitions.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "../common/common.h"
#include "../kv/quant.h"

Test(quant, f16_exact_rounding_and_specials) {
    float exact[] = {0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, 6.103515625e-05f, 5.9604644775390625e-08f, -1536.0f};
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
        cr_assert_eq(quant_f16_to_f32(quant_f32_to_f16(exact[i])), exact[i], "%g", exact[i]);
    cr_assert_eq(quant_f32_to_f16(1.0f), 0x3C00);
    cr_assert_eq(quant_f32_to_f16(1.0f + 0.5f / 1024), 0x3C00);        // halfway: to even (down)
    cr_assert_eq(quant_f32_to_f16(1.0f + 1.5f / 1024), 0x3C02);        // halfway: to even (up)
    cr_assert_eq(quant_f32_to_f16(65520.0f), 0x7C00);                  // rounds past the largest: inf
    cr_assert_eq(quant_f32_to_f16(-INFINITY), 0xFC00);
    cr_assert(isnan(quant_f16_to_f32(quant_f32_to_f16(NAN))));
    cr_assert_eq(quant_f32_to_f16(1e-9f), 0);                          // underflow to zero
    cr_assert_eq(quant_f32_to_f16(3.0f * 5.9604644775390625e-08f), 3); // subnormal
    // every finite half converts to float and back unchanged
    for (uint32_t h = 0; h < 0x10000; h++) {
        if (((h >> 10) & 0x1F) == 0x1F) continue;
        cr_assert_eq(quant_f32_to_f16(quant_f16_to_f32((uint16_t)h)), h, "half 0x%04x", h);
    }
}

Test(quant, row_bytes) {
    cr_assert_eq(quant_row_bytes(128, 32, 4), 4 * (4 + 16));
    cr_assert_eq(quant_row_bytes(128, 32, 8), 4 * (4 + 32));
    cr_assert_eq(quant_row_bytes(96, 32, 2), 3 * (4 + 8));
    cr_assert_eq(quant_row_bytes(8, 8, 4), 4 + 4);
}

// The bound: codes use the fp16 scale s and minimum m, so |x - m - s*q| <= s/2 for x inside [m, m + s*levels];
// fp16 rounding of m and s can push the group's extremes out by at most |m|*2^-11 + levels*s*2^-11.
static void check_bound(int n, int g, int bits, float outlier) {
    Rng rng;
    rng_init(&rng, (uint64_t)(n * 131 + g * 7 + bits));
    float x[256], y[256];
    uint8_t buf[1024 + 16];
    for (int i = 0; i < n; i++) x[i] = rng_normal(&rng);
    x[n / 3] = outlier;
    size_t bytes = quant_row_bytes(n, g, bits);
    memset(buf, 0xAB, sizeof(buf));
    quant_encode_row(buf, x, n, g, bits);
    for (size_t i = bytes; i < bytes + 16; i++) cr_assert_eq(buf[i], 0xAB, "wrote past the row at %zu", i);
    quant_decode_row(y, buf, n, g, bits);
    int levels = (1 << bits) - 1;
    for (int start = 0; start < n; start += g) {
        float lo = x[start], hi = x[start];
        for (int i = start; i < start + g; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
        float s = (hi - lo) / levels, slack = (fabsf(lo) + levels * s) / 2048.0f + 1e-6f;
        for (int i = start; i < start + g; i++)
            cr_assert_leq(fabsf(x[i] - y[i]), s / 2 + slack, "n %d g %d bits %d: |%g - %g| > %g", n, g, bits, x[i], y[i],
                          s / 2 + slack);
    }
}

Test(quant, error_within_bound) {
    int bits[] = {8, 4, 2}, groups[] = {8, 32, 64};
    for (int b = 0; b < 3; b++)
        for (int gi = 0; gi < 3; gi++) {
            check_bound(128, groups[gi], bits[b], 0.5f);
            check_bound(128, groups[gi], bits[b], 12.0f);
            if (96 % groups[gi] == 0) check_bound(96, groups[gi], bits[b], -9.0f);
        }
}

Test(quant, constant_group_and_fewer_bits_worse) {
    float x[32], y[32];
    uint8_t buf[256];
    for (int i = 0; i < 32; i++) x[i] = 0.75f;
    quant_encode_row(buf, x, 32, 32, 2);
    quant_decode_row(y, buf, 32, 32, 2);
    for (int i = 0; i < 32; i++) cr_assert_eq(y[i], 0.75f);
    Rng rng;
    rng_init(&rng, 9);
    for (int i = 0; i < 32; i++) x[i] = rng_normal(&rng);
    float prev = 0.0f;
    int bits[] = {8, 4, 2};
    for (int b = 0; b < 3; b++) {
        quant_encode_row(buf, x, 32, 8, bits[b]);
        quant_decode_row(y, buf, 32, 8, bits[b]);
        float err = 0.0f;
        for (int i = 0; i < 32; i++) err = fmaxf(err, fabsf(x[i] - y[i]));
        cr_assert_gt(err, prev, "%d bits: max error %g not above %g", bits[b], err, prev);
        prev = err;
    }
}

Test(quant, hadamard_orthonormal_and_spreads_outliers) {
    float x[2] = {3.0f, 1.0f};
    cr_assert_eq(quant_hadamard(x, 2), 0);
    cr_assert_float_eq(x[0], 4.0f / sqrtf(2.0f), 1e-6f);
    cr_assert_float_eq(x[1], 2.0f / sqrtf(2.0f), 1e-6f);
    float v[64], w[64];
    cr_assert_eq(quant_hadamard(v, 48), -1);
    Rng rng;
    rng_init(&rng, 4);
    double n0 = 0.0, n1 = 0.0;
    for (int i = 0; i < 64; i++) v[i] = w[i] = rng_normal(&rng), n0 += v[i] * v[i];
    quant_hadamard(w, 64);
    for (int i = 0; i < 64; i++) n1 += w[i] * w[i];
    cr_assert_float_eq(n0, n1, 1e-4 * n0);
    quant_hadamard(w, 64);
    for (int i = 0; i < 64; i++) cr_assert_float_eq(w[i], v[i], 1e-5f);
    // one large outlier: 4-bit groups of 64 lose the small values unless the rotation spreads it first
    v[5] = 40.0f;
    uint8_t buf[64];
    float y[64], r[64];
    quant_encode_row(buf, v, 64, 64, 4);
    quant_decode_row(y, buf, 64, 64, 4);
    memcpy(r, v, sizeof(r));
    quant_hadamard(r, 64);
    quant_encode_row(buf, r, 64, 64, 4);
    quant_decode_row(r, buf, 64, 64, 4);
    quant_hadamard(r, 64);
    double plain = 0.0, rotated = 0.0;
    for (int i = 0; i < 64; i++) plain += (v[i] - y[i]) * (v[i] - y[i]), rotated += (v[i] - r[i]) * (v[i] - r[i]);
    cr_assert_lt(rotated, plain / 2, "rotated MSE %g vs plain %g", rotated / 64, plain / 64);
}
