// fp16 conversion, group quantization (row and strided column) and the Hadamard rotation (kv/quant.c)
// against their definitions.
//
// Measured reconstruction error |x - decode(encode(x))| for rows of n = 128 N(0, 1) values,
// 400 rows, seed 5 ("3 outliers": three values per row replaced by +-U(6, 12)), by `measure` below; build
// with -DQUANT_PRINT_TABLE and run --filter 'quant/table' to regenerate:
//
//   bits  group |  no outliers: max     mean  |  3 outliers: max     mean
//      8      8 |           1.14e-02  2.29e-03 |           4.03e-02  3.40e-03
//      8     32 |           1.30e-02  3.87e-03 |           4.26e-02  8.20e-03
//      8     64 |           1.45e-02  4.48e-03 |           4.58e-02  1.21e-02
//      4      8 |           2.07e-01  3.59e-02 |           6.93e-01  5.33e-02
//      4     32 |           2.23e-01  6.47e-02 |           7.17e-01  1.37e-01
//      4     64 |           2.44e-01  7.61e-02 |           7.83e-01  2.04e-01
//      2      8 |           1.05e+00  1.80e-01 |           3.47e+00  2.78e-01
//      2     32 |           1.11e+00  3.25e-01 |           3.63e+00  7.81e-01
//      2     64 |           1.24e+00  3.81e-01 |           3.94e+00  1.19e+00
//
// As expected of uniform rounding (error in [-s/2, s/2], s = range / (2^bits - 1)): the max sits at s/2 of
// the widest group, the mean near s/4, and each step down in bits costs about 255/15 = 17x then 15/3 = 5x.
// Outliers set the max (their group's range) whatever the group size; smaller groups mostly cut the mean,
// by confining each outlier's coarse scale to fewer values. The Hadamard rotation before 4 bits (n = 128,
// 200 rows, `hadamard_mse` below), plain -> rotated MSE:
//   one channel at 40:  groups of 32  1.63e-01 -> 3.96e-02 (4.1x)    one group of 128  6.26e-01 -> 5.13e-02 (12x)
//   no outlier:         groups of 32  6.22e-03 -> 6.17e-03           one group of 128  1.02e-02 -> 9.79e-03
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kv/quant.h"

// Self-contained RNG (splitmix64 + Box-Muller) so this file also builds against kv/quant.c alone.
typedef struct {
    uint64_t s;
} TRng;

static uint64_t t_next(TRng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double t_uniform(TRng *r) { return (double)(t_next(r) >> 11) * 0x1.0p-53; } // [0, 1)
static float t_normal(TRng *r) {
    double u = t_uniform(r), v = t_uniform(r);
    return (float)(sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v));
}

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

// The value of a finite half from its definition, in double.
static double half_value(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp((double)m, -24);
    return (h & 0x8000) ? -v : v;
}

// --- fp16 ------------------------------------------------------------------------------------------------

TestSuite(quant);

Test(quant, f16_every_finite_half_round_trips) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        if (((h >> 10) & 0x1F) == 0x1F) continue;
        float f = quant_f16_to_f32((uint16_t)h);
        cr_assert_eq((double)f, half_value((uint16_t)h), "half 0x%04x decodes to %a", h, f);
        cr_assert_eq(signbit(f) != 0, (h & 0x8000) != 0, "half 0x%04x sign", h);
        cr_assert_eq(quant_f32_to_f16(f), h, "half 0x%04x -> %a -> 0x%04x", h, f, quant_f32_to_f16(f));
    }
    float exact[] = {0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, -65504.0f, 0x1p-14f, 0x1p-24f, 0x3FFp-24f, -1536.0f, 0.099975586f};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        cr_assert_eq(quant_f16_to_f32(quant_f32_to_f16(exact[i])), exact[i], "%a", exact[i]);
    cr_assert_eq(quant_f32_to_f16(1.0f), 0x3C00);
    cr_assert_eq(quant_f32_to_f16(-2.0f), 0xC000);
    cr_assert_eq(quant_f32_to_f16(65504.0f), 0x7BFF);
}

// Every midpoint between adjacent finite halves (normal, subnormal, across exponent boundaries, and the
// 65504/65536 overflow midpoint) goes to the even neighbour; one float ulp either side goes to the nearer.
Test(quant, f16_rounds_to_nearest_even_at_every_midpoint) {
    for (uint32_t h = 0; h <= 0x7BFF; h++) {
        double a = half_value((uint16_t)h), b = h + 1 < 0x7C00 ? half_value((uint16_t)(h + 1)) : 65536.0;
        float mid = (float)((a + b) / 2); // 12 significant bits: exact in float
        cr_assert_eq((double)mid, (a + b) / 2);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        for (int sgn = 0; sgn < 2; sgn++) {
            float s = sgn ? -1.0f : 1.0f;
            uint16_t sb = sgn ? 0x8000 : 0;
            cr_assert_eq(quant_f32_to_f16(s * mid), even | sb, "midpoint %a after 0x%04x", s * mid, h);
            cr_assert_eq(quant_f32_to_f16(s * nextafterf(mid, 0.0f)), h | sb, "just below %a", s * mid);
            cr_assert_eq(quant_f32_to_f16(s * nextafterf(mid, INFINITY)), (h + 1) | sb, "just above %a", s * mid);
        }
    }
    // hand-checked cases
    cr_assert_eq(quant_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);         // halfway, to even (down)
    cr_assert_eq(quant_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);     // halfway, to even (up)
    cr_assert_eq(quant_f32_to_f16(2047.0f / 1024 + 0x1p-11f), 0x4000); // carry into the exponent: 2.0
    cr_assert_eq(quant_f32_to_f16(0.1f), 0x2E66);                    // 0.0999755859375
}

Test(quant, f16_subnormals_and_underflow) {
    cr_assert_eq(quant_f32_to_f16(0x1p-24f), 0x0001);              // smallest subnormal
    cr_assert_eq(quant_f32_to_f16(0x3FFp-24f), 0x03FF);            // largest subnormal
    cr_assert_eq(quant_f32_to_f16(0x1p-14f), 0x0400);              // smallest normal
    cr_assert_eq(quant_f32_to_f16(0x7FFp-25f), 0x0400);            // halfway largest subnormal / smallest normal: even
    cr_assert_eq(quant_f32_to_f16(3 * 0x1p-24f), 0x0003);
    cr_assert_eq(quant_f32_to_f16(2.5f * 0x1p-24f), 0x0002);       // tie to even
    cr_assert_eq(quant_f32_to_f16(3.5f * 0x1p-24f), 0x0004);       // tie to even
    cr_assert_eq(quant_f32_to_f16(0x1p-25f), 0x0000);              // half the smallest: tie to 0
    cr_assert_eq(quant_f32_to_f16(nextafterf(0x1p-25f, 1.0f)), 0x0001);
    cr_assert_eq(quant_f32_to_f16(-0x1p-25f), 0x8000);             // signed zero
    cr_assert_eq(quant_f32_to_f16(1e-30f), 0x0000);
    cr_assert_eq(quant_f32_to_f16(-FLT_TRUE_MIN), 0x8000);
    cr_assert_eq(quant_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(quant_f16_to_f32(0x0001), 0x1p-24f);
    cr_assert_eq(quant_f16_to_f32(0x83FF), -0x3FFp-24f);
    cr_assert(signbit(quant_f16_to_f32(0x8000)) && quant_f16_to_f32(0x8000) == 0.0f);
}

Test(quant, f16_inf_nan_and_overflow) {
    cr_assert_eq(quant_f32_to_f16(INFINITY), 0x7C00);
    cr_assert_eq(quant_f32_to_f16(-INFINITY), 0xFC00);
    cr_assert_eq(quant_f16_to_f32(0x7C00), INFINITY);
    cr_assert_eq(quant_f16_to_f32(0xFC00), -INFINITY);
    cr_assert_eq(quant_f32_to_f16(65519.996f), 0x7BFF);            // below the midpoint: 65504
    cr_assert_eq(quant_f32_to_f16(65520.0f), 0x7C00);              // midpoint to "65536": even is inf
    cr_assert_eq(quant_f32_to_f16(-65520.0f), 0xFC00);
    cr_assert_eq(quant_f32_to_f16(1e6f), 0x7C00);
    cr_assert_eq(quant_f32_to_f16(-FLT_MAX), 0xFC00);
    uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u /* signalling, payload only in low bits */, 0x7FFFFFFFu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = quant_f32_to_f16(bits_to_f32(nans[i]));
        cr_assert_eq(h & 0x7C00, 0x7C00, "NaN 0x%08x -> 0x%04x", nans[i], h);
        cr_assert_neq(h & 0x3FF, 0, "NaN 0x%08x became inf", nans[i]);
        cr_assert_eq(h >> 15, nans[i] >> 31, "NaN sign");
        cr_assert(isnan(quant_f16_to_f32(h)));
    }
    cr_assert(isnan(quant_f16_to_f32(0x7C01)) && isnan(quant_f16_to_f32(0xFE00)));
}

#ifdef __FLT16_MAX__
// Against the compiler's own conversion (IEEE, round to nearest even) on a sweep of all float bit patterns.
Test(quant, f16_matches_compiler_float16) {
    for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 4093) {
        float x = bits_to_f32((uint32_t)u);
        if (isnan(x)) continue;
        _Float16 ref = (_Float16)x;
        uint16_t rb;
        memcpy(&rb, &ref, 2);
        cr_assert_eq(quant_f32_to_f16(x), rb, "%a: 0x%04x vs compiler 0x%04x", x, quant_f32_to_f16(x), rb);
    }
}
#endif

Test(quant, f16_rows) {
    float x[7] = {0.0f, 1.0f / 3, -7.25f, 1e-6f, 70000.0f, -0.0f, 3.14159f}, y[7];
    uint16_t h[8];
    h[7] = 0xBEEF;
    quant_f16_encode_row(h, x, 7);
    cr_assert_eq(h[7], 0xBEEF);
    quant_f16_decode_row(y, h, 7);
    for (int i = 0; i < 7; i++) {
        cr_assert_eq(h[i], quant_f32_to_f16(x[i]));
        cr_assert_eq(f32_to_bits(y[i]), f32_to_bits(quant_f16_to_f32(h[i])));
        if (isfinite(y[i])) cr_assert_leq(fabsf(x[i] - y[i]), fabsf(x[i]) * 0x1p-11f + 0x1p-25f);
    }
}

// --- Group quantization: layout ----------------------------------------------------------------------------

Test(quant, row_bytes) {
    cr_assert_eq(quant_row_bytes(128, 32, 4), 4 * (4 + 16)); // 80
    cr_assert_eq(quant_row_bytes(128, 32, 8), 4 * (4 + 32));
    cr_assert_eq(quant_row_bytes(128, 32, 2), 4 * (4 + 8));
    cr_assert_eq(quant_row_bytes(128, 128, 2), 4 + 32);
    cr_assert_eq(quant_row_bytes(96, 32, 2), 3 * (4 + 8));
    cr_assert_eq(quant_row_bytes(64, 8, 4), 8 * (4 + 4));
    cr_assert_eq(quant_row_bytes(8, 8, 4), 4 + 4);
    cr_assert_eq(quant_row_bytes(10, 5, 2), 2 * (4 + 2)); // 10 bits of codes: 2 bytes
    cr_assert_eq(quant_row_bytes(9, 3, 4), 3 * (4 + 2));  // 12 bits: 2 bytes
    cr_assert_eq(quant_row_bytes(1, 1, 8), 4 + 1);
    // invalid configurations report 0
    cr_assert_eq(quant_row_bytes(128, 48, 4), 0);
    cr_assert_eq(quant_row_bytes(128, 32, 3), 0);
    cr_assert_eq(quant_row_bytes(128, 32, 16), 0);
    cr_assert_eq(quant_row_bytes(128, 0, 4), 0);
    cr_assert_eq(quant_row_bytes(0, 8, 4), 0);
}

// The bytes themselves, worked by hand.
Test(quant, layout_by_hand) {
    uint8_t b[16];
    float x2[4] = {0.0f, 1.0f, 2.0f, 3.0f}; // 2 bits: min 0, scale 1, codes 0 1 2 3 -> 0b11100100
    quant_encode_row(b, x2, 4, 4, 2);
    uint8_t e2[] = {0x00, 0x3C, 0x00, 0x00, 0xE4};
    cr_assert_arr_eq(b, e2, sizeof e2);
    float x4[4] = {0.0f, 15.0f, 1.0f, 14.0f}; // 4 bits: codes 0 15 1 14 -> low nibble first: 0xF0 0xE1
    quant_encode_row(b, x4, 4, 4, 4);
    uint8_t e4[] = {0x00, 0x3C, 0x00, 0x00, 0xF0, 0xE1};
    cr_assert_arr_eq(b, e4, sizeof e4);
    float x8[3] = {-1.0f, 254.0f, 126.0f}; // 8 bits: min -1 (0xBC00), scale 255/255 = 1, codes 0 255 127
    quant_encode_row(b, x8, 3, 3, 8);
    uint8_t e8[] = {0x00, 0x3C, 0x00, 0xBC, 0x00, 0xFF, 0x7F};
    cr_assert_arr_eq(b, e8, sizeof e8);
    float x5[10] = {0, 3, 3, 3, 3, 3, 0, 0, 0, 0}; // two groups of 5 at 2 bits: 10 code bits, top 6 bits zero
    quant_encode_row(b, x5, 10, 5, 2);
    uint8_t e5[] = {0x00, 0x3C, 0x00, 0x00, 0xFC, 0x03, 0x00, 0x3C, 0x00, 0x00, 0x03, 0x00};
    cr_assert_arr_eq(b, e5, sizeof e5);
}

// Encoding writes exactly quant_row_bytes, every one of them, whatever was in the buffer before.
Test(quant, codes_occupy_exactly_the_row) {
    struct {
        int n, g, bits;
    } cfg[] = {{128, 32, 2}, {128, 8, 2}, {96, 96, 2}, {10, 5, 2}, {9, 3, 4}, {128, 64, 4}, {96, 32, 8}};
    TRng rng = {11};
    for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
        int n = cfg[k].n, g = cfg[k].g, bits = cfg[k].bits;
        float x[128];
        for (int i = 0; i < n; i++) x[i] = t_normal(&rng);
        size_t bytes = quant_row_bytes(n, g, bits);
        cr_assert_eq(bytes, (size_t)(n / g) * (4 + ((size_t)g * bits + 7) / 8));
        uint8_t a[16 + 256 + 16], b[16 + 256 + 16];
        memset(a, 0xAB, sizeof a);
        memset(b, 0x00, sizeof b);
        quant_encode_row(a + 16, x, n, g, bits);
        quant_encode_row(b + 16, x, n, g, bits);
        for (int i = 0; i < 16; i++) cr_assert_eq(a[i], 0xAB, "wrote before the row");
        for (size_t i = 16 + bytes; i < sizeof a; i++)
            cr_assert_eq(a[i], 0xAB, "n %d g %d bits %d: wrote byte %zu of %zu", n, g, bits, i - 16, bytes);
        cr_assert_arr_eq(a + 16, b + 16, bytes, "row bytes depend on the buffer's old contents");
        // unused high bits of each group's last code byte are zero
        int used = (g * bits) % 8;
        size_t group_bytes = bytes / (n / g);
        if (used)
            for (int gi = 0; gi < n / g; gi++) cr_assert_eq(a[16 + (gi + 1) * group_bytes - 1] >> used, 0);
        // an exact-size heap row, so that under -fsanitize=address any access past it traps
        uint8_t *row = malloc(bytes);
        float *y = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
        quant_encode_row(row, x, n, g, bits);
        quant_decode_row(y, row, n, g, bits);
        quant_decode_row(z, a + 16, n, g, bits);
        cr_assert_arr_eq(y, z, sizeof(float) * n);
        free(row), free(y), free(z);
    }
}

// --- Group quantization: error ----------------------------------------------------------------------------

// A row of N(0, 1) values with `outliers` of them replaced by +-(6..12), in random places.
static void make_row(TRng *rng, float *x, int n, int outliers) {
    for (int i = 0; i < n; i++) x[i] = t_normal(rng);
    for (int k = 0; k < outliers; k++) {
        float mag = 6.0f + 6.0f * (float)t_uniform(rng);
        x[t_next(rng) % (uint64_t)n] = (t_next(rng) & 1) ? mag : -mag;
    }
}

// Checks one group of decoded values against the bound and returns its max error.
//
// The bound. Let m, s be the stored fp16 min and scale, L = 2^bits - 1, lo/hi the group's extremes. The
// encoder makes m <= lo and m + L*s >= hi, so t = (x - m)/s lies in [0, L] and its nearest integer q needs no
// clamping: |x - (m + s*q)| <= s/2 in exact arithmetic. In float, x - m and the division each round
// (relative 2^-24), moving t by at most L*2^-23 and so the reconstruction by s*L*2^-23; decode computes s*q
// exactly (11 x 8 significant bits) and rounds the sum m + s*q once (2^-24 |y|, |y| <= |m| + L*s). So
//     |x - y| <= s/2 + 2^-22 * (|m| + L*s),   checked below with 2^-20 for margin.
// And the scale is not inflated beyond fp16 precision: m >= lo - max(|lo| 2^-9, 2^-24) (one fp16 step down),
// s is (hi - m)/L rounded up, at most one extra fp16 step, so
//     s <= ((hi - lo) + max(|lo| 2^-9, 2^-24)) / L * (1 + 2^-9) + 2^-23.
// Together: |x - y| <= (hi - lo)/(2L) up to fp16's 11-bit relative precision. (The brief's suggested
// 0.5*scale + 1e-3*|max| would also absorb rounding min to nearest, whose clamping error at lo is up to
// 2^-11 |lo|; the directed rounding makes the much tighter bound hold.)
static float check_group(const float *x, const float *y, ptrdiff_t stride, int g, int bits, const uint8_t *enc,
                         const char *what) {
    int L = (1 << bits) - 1;
    uint16_t hs, hm;
    memcpy(&hs, enc, 2);
    memcpy(&hm, enc + 2, 2);
    float s = quant_f16_to_f32(hs), m = quant_f16_to_f32(hm);
    float lo = x[0], hi = x[0], err = 0.0f;
    for (int i = 0; i < g; i++) lo = fminf(lo, x[i * stride]), hi = fmaxf(hi, x[i * stride]);
    if (hi == lo) { // constant group: scale 0, min = lo rounded to nearest, decoded exactly
        cr_assert_eq(hs, 0, "%s: constant group with scale %g", what, s);
        cr_assert_eq(m, quant_f16_to_f32(quant_f32_to_f16(lo)), "%s", what);
        for (int i = 0; i < g; i++) cr_assert_eq(y[i * stride], m, "%s: constant %g decoded as %g", what, lo, y[i * stride]);
        return fabsf(lo - m);
    }
    cr_assert_leq(m, lo, "%s: min %a above the group's minimum %a", what, m, lo);
    cr_assert_geq((double)m + (double)s * L, (double)hi - 1e-6 * fabs(hi), "%s: grid tops at %g < %g", what, m + s * L, hi);
    double s_max = ((double)hi - lo + fmax(fabs(lo) * 0x1p-9, 0x1p-24)) / L * (1 + 0x1p-9) + 0x1p-23;
    cr_assert_leq(s, s_max, "%s: scale %a inflated beyond %a (range %g)", what, s, s_max, hi - lo);
    float tol = s / 2 + 0x1p-20f * (fabsf(m) + L * s);
    for (int i = 0; i < g; i++) {
        float e = fabsf(x[i * stride] - y[i * stride]);
        cr_assert_leq(e, tol, "%s: |%a - %a| = %g > %g (s %g)", what, x[i * stride], y[i * stride], e, tol, s);
        err = fmaxf(err, e);
    }
    return err;
}

// Encodes `rows` random rows, asserts the bound on every element, and returns the max and mean |error|.
static void measure(int n, int g, int bits, int outliers, int rows, uint64_t seed, double *max_err, double *mean_err) {
    TRng rng = {seed};
    float x[128], y[128];
    uint8_t buf[256];
    char what[64];
    snprintf(what, sizeof what, "n %d g %d bits %d outliers %d", n, g, bits, outliers);
    size_t group_bytes = quant_row_bytes(n, g, bits) / (n / g);
    double mx = 0.0, sum = 0.0;
    for (int r = 0; r < rows; r++) {
        make_row(&rng, x, n, outliers);
        quant_encode_row(buf, x, n, g, bits);
        quant_decode_row(y, buf, n, g, bits);
        for (int start = 0; start < n; start += g)
            mx = fmax(mx, check_group(x + start, y + start, 1, g, bits, buf + (start / g) * group_bytes, what));
        for (int i = 0; i < n; i++) sum += fabsf(x[i] - y[i]);
    }
    *max_err = mx;
    *mean_err = sum / ((double)rows * n);
}

static const int BITS[3] = {8, 4, 2};
static const int GROUPS[3] = {8, 32, 64};
enum { ROWS = 400 };

Test(quant, bound_holds_everywhere) {
    int groups96[3] = {8, 32, 96};
    for (int b = 0; b < 3; b++)
        for (int gi = 0; gi < 3; gi++)
            for (int outliers = 0; outliers <= 3; outliers += 3) {
                double mx, mean;
                measure(128, GROUPS[gi], BITS[b], outliers, ROWS, 1 + gi, &mx, &mean);
                measure(96, groups96[gi], BITS[b], outliers, ROWS, 7 + gi, &mx, &mean);
            }
}

Test(quant, error_shrinks_with_more_bits) {
    for (int gi = 0; gi < 3; gi++)
        for (int outliers = 0; outliers <= 3; outliers += 3) {
            double mx[3], mean[3];
            for (int b = 0; b < 3; b++) measure(128, GROUPS[gi], BITS[b], outliers, ROWS, 5, &mx[b], &mean[b]);
            for (int b = 1; b < 3; b++) {
                // uniform error ~ range/(2L): each step down in bits should cost at least ~4x (L 255 -> 15 -> 3)
                cr_assert_gt(mx[b], 4 * mx[b - 1], "g %d: max error %g at %d bits vs %g at %d", GROUPS[gi], mx[b],
                             BITS[b], mx[b - 1], BITS[b - 1]);
                cr_assert_gt(mean[b], 4 * mean[b - 1], "g %d: mean error %g at %d bits vs %g at %d", GROUPS[gi],
                             mean[b], BITS[b], mean[b - 1], BITS[b - 1]);
            }
        }
}

// With outliers, smaller groups confine each outlier's wide range to fewer values.
Test(quant, error_shrinks_with_smaller_groups_on_outlier_rows) {
    for (int b = 1; b < 3; b++) {
        double mx[3], mean[3];
        for (int gi = 0; gi < 3; gi++) measure(128, GROUPS[gi], BITS[b], 3, ROWS, 5, &mx[gi], &mean[gi]);
        for (int gi = 1; gi < 3; gi++) {
            cr_assert_lt(mean[gi - 1], 0.8 * mean[gi], "%d bits: mean error g %d %g vs g %d %g", BITS[b],
                         GROUPS[gi - 1], mean[gi - 1], GROUPS[gi], mean[gi]);
            cr_assert_leq(mx[gi - 1], mx[gi], "%d bits: max error g %d %g vs g %d %g", BITS[b], GROUPS[gi - 1],
                          mx[gi - 1], GROUPS[gi], mx[gi]);
        }
    }
}

Test(quant, constant_and_near_constant_groups) {
    float x[64], y[64];
    uint8_t buf[256];
    float consts[] = {0.75f, 0.0f, -3.0f, 0.1f /* not an fp16 */, -1e-7f /* subnormal in fp16 */, 1234.567f};
    for (int b = 0; b < 3; b++)
        for (size_t k = 0; k < sizeof consts / sizeof consts[0]; k++) {
            for (int i = 0; i < 64; i++) x[i] = consts[k];
            for (int i = 32; i < 40; i++) x[i] = 0.5f * i; // one non-constant group of 8 among constant ones
            quant_encode_row(buf, x, 64, 8, BITS[b]);
            quant_decode_row(y, buf, 64, 8, BITS[b]);
            size_t gb = quant_row_bytes(64, 8, BITS[b]) / 8;
            for (int gi = 0; gi < 8; gi++) check_group(x + 8 * gi, y + 8 * gi, 1, 8, BITS[b], buf + gi * gb, "constant");
            float want = quant_f16_to_f32(quant_f32_to_f16(consts[k]));
            for (int i = 0; i < 32; i++) cr_assert_eq(y[i], want, "%g decoded as %g", consts[k], y[i]);
        }
    // near-constant: a spread far below fp16's resolution at the offset, and a spread in fp16's subnormal range
    for (int b = 0; b < 3; b++) {
        for (int i = 0; i < 32; i++) x[i] = 1.0001f + (float)i * 1e-7f;
        quant_encode_row(buf, x, 32, 32, BITS[b]);
        quant_decode_row(y, buf, 32, 32, BITS[b]);
        check_group(x, y, 1, 32, BITS[b], buf, "near constant");
        for (int i = 0; i < 32; i++) x[i] = (float)i * 3e-8f;
        quant_encode_row(buf, x, 32, 32, BITS[b]);
        quant_decode_row(y, buf, 32, 32, BITS[b]);
        check_group(x, y, 1, 32, BITS[b], buf, "tiny spread");
    }
}

// A group with a large offset and a small spread (a key channel with a bias, as in KIVI's per-channel
// groups): min rounded to nearest fp16 could sit above the smallest value by up to half an fp16 ulp
// (2^-6 at 100), clamping it; rounded down, the error stays at scale/2.
Test(quant, offset_group_keeps_scale_resolution) {
    float x[32], y[32];
    uint8_t buf[64];
    TRng rng = {3};
    for (int i = 0; i < 32; i++) x[i] = 100.05f + 0.01f * (float)t_uniform(&rng);
    x[0] = 100.05f; // rounds to nearest 100.0625 > x[0]
    cr_assert_gt(quant_f16_to_f32(quant_f32_to_f16(100.05f)), 100.05f);
    quant_encode_row(buf, x, 32, 32, 8);
    quant_decode_row(y, buf, 32, 32, 8);
    float err = check_group(x, y, 1, 32, 8, buf, "offset");
    cr_assert_lt(err, 2e-4f, "max error %g; a nearest-rounded min alone would cost 0.0125", err);
}

Test(quant, extreme_values_stay_finite) {
    float x[8] = {-65504.0f, 65504.0f, 0.0f, 1.0f, -1.0f, 30000.0f, -30000.0f, 5.0f}, y[8];
    uint8_t buf[16];
    for (int b = 0; b < 3; b++) {
        quant_encode_row(buf, x, 8, 8, BITS[b]);
        quant_decode_row(y, buf, 8, 8, BITS[b]);
        check_group(x, y, 1, 8, BITS[b], buf, "full fp16 range");
        // out of fp16 range: clamped, never inf or NaN
        float z[8] = {-1e6f, 1e6f, 0, 1, 2, 3, 4, 5};
        quant_encode_row(buf, z, 8, 8, BITS[b]);
        quant_decode_row(y, buf, 8, 8, BITS[b]);
        for (int i = 0; i < 8; i++) cr_assert(isfinite(y[i]), "%g decoded as %g", z[i], y[i]);
    }
}

// --- Strided columns (KIVI keys) ---------------------------------------------------------------------------

Test(quant, column_equals_row_of_gathered_column) {
    enum { R = 32, C = 24 };
    float block[R * C], col[R], ycol[R], out[R * C];
    uint8_t a[64 + 8], b[64];
    TRng rng = {21};
    for (int i = 0; i < R * C; i++) block[i] = t_normal(&rng) + (float)(i % C) * 0.5f; // per-channel offsets
    block[5 * C + 7] = 15.0f;                                                         // an outlier in channel 7
    for (int bi = 0; bi < 3; bi++) {
        int bits = BITS[bi];
        size_t bytes = quant_row_bytes(R, R, bits);
        for (int i = 0; i < R * C; i++) out[i] = NAN;
        for (int c = 0; c < C; c++) {
            for (int r = 0; r < R; r++) col[r] = block[r * C + c];
            memset(a, 0xCD, sizeof a);
            quant_encode_col(a, block, R, C, c, bits);
            for (size_t i = bytes; i < sizeof a; i++) cr_assert_eq(a[i], 0xCD, "column encode wrote past %zu bytes", bytes);
            quant_encode_row(b, col, R, R, bits);
            cr_assert_arr_eq(a, b, bytes, "bits %d column %d differs from the row encoding", bits, c);
            quant_decode_col(out, a, R, C, c, bits);
            quant_decode_row(ycol, b, R, R, bits);
            for (int r = 0; r < R; r++) {
                cr_assert_eq(f32_to_bits(out[r * C + c]), f32_to_bits(ycol[r]));
                for (int c2 = c + 1; c2 < C; c2++)
                    cr_assert(isnan(out[r * C + c2]), "decode of column %d wrote column %d", c, c2);
            }
            check_group(block + c, out + c, C, R, bits, a, "column");
        }
    }
}

// --- Hadamard ---------------------------------------------------------------------------------------------

Test(quant, hadamard_small_cases_and_invalid_sizes) {
    float x[2] = {3.0f, 1.0f};
    cr_assert_eq(quant_hadamard(x, 2), 0);
    cr_assert_float_eq(x[0], 4.0f / sqrtf(2.0f), 1e-6f); // [a, b] -> [(a + b), (a - b)] / sqrt 2
    cr_assert_float_eq(x[1], 2.0f / sqrtf(2.0f), 1e-6f);
    float v[4] = {1.0f, 2.0f, 3.0f, 4.0f}; // H4 = [[1 1 1 1] [1 -1 1 -1] [1 1 -1 -1] [1 -1 -1 1]] / 2
    cr_assert_eq(quant_hadamard(v, 4), 0);
    float want[4] = {5.0f, -1.0f, -2.0f, 0.0f};
    for (int i = 0; i < 4; i++) cr_assert_float_eq(v[i], want[i], 1e-6f);
    float one = 7.0f;
    cr_assert_eq(quant_hadamard(&one, 1), 0);
    cr_assert_eq(one, 7.0f);
    float w[48];
    for (int i = 0; i < 48; i++) w[i] = (float)i;
    int bad[] = {0, -4, 3, 6, 48, 96};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) cr_assert_eq(quant_hadamard(w, bad[i]), -1, "n %d", bad[i]);
    for (int i = 0; i < 48; i++) cr_assert_eq(w[i], (float)i, "rejected call modified x");
}

Test(quant, hadamard_is_an_involution_and_preserves_norm) {
    TRng rng = {4};
    float v[256], w[256];
    for (int n = 2; n <= 256; n *= 2)
        for (int trial = 0; trial < 50; trial++) {
            double n0 = 0.0, n1 = 0.0;
            for (int i = 0; i < n; i++) v[i] = w[i] = t_normal(&rng), n0 += (double)v[i] * v[i];
            quant_hadamard(w, n);
            for (int i = 0; i < n; i++) n1 += (double)w[i] * w[i];
            cr_assert_leq(fabs(n1 - n0), 1e-5 * n0, "n %d: norm^2 %g -> %g", n, n0, n1);
            quant_hadamard(w, n);
            for (int i = 0; i < n; i++)
                cr_assert_leq(fabsf(w[i] - v[i]), 1e-6f, "n %d: H(H(x))[%d] = %a vs %a", n, i, w[i], v[i]);
        }
}

// Mean squared error of plain 4-bit quantization and of the rotated round trip H^-1(dequant(quant(H x))) over
// rows of N(0, 1) values, with one channel set to `outlier` (none if 0).
static void hadamard_mse(int g, float outlier, double *plain, double *rotated) {
    enum { N = 128, TRIALS = 200 };
    TRng rng = {8};
    float v[N], y[N], r[N];
    uint8_t buf[512];
    double p = 0.0, q = 0.0;
    for (int t = 0; t < TRIALS; t++) {
        for (int i = 0; i < N; i++) v[i] = t_normal(&rng);
        if (outlier != 0.0f) v[t_next(&rng) % N] = outlier;
        quant_encode_row(buf, v, N, g, 4);
        quant_decode_row(y, buf, N, g, 4);
        memcpy(r, v, sizeof r);
        cr_assert_eq(quant_hadamard(r, N), 0);
        quant_encode_row(buf, r, N, g, 4);
        quant_decode_row(r, buf, N, g, 4);
        quant_hadamard(r, N);
        for (int i = 0; i < N; i++) p += (v[i] - y[i]) * (v[i] - y[i]), q += (v[i] - r[i]) * (v[i] - r[i]);
    }
    *plain = p / (TRIALS * N);
    *rotated = q / (TRIALS * N);
}

// One large outlier channel: plain 4-bit groups stretch their scale over it and lose the small values; the
// rotation spreads it over all channels first, so the round trip is far closer. Without one it costs nothing.
Test(quant, hadamard_helps_4bit_with_an_outlier) {
    int gs[2] = {32, 128}; // groups of 32, and the whole head as one group
    for (int gi = 0; gi < 2; gi++) {
        double plain, rotated;
        hadamard_mse(gs[gi], 40.0f, &plain, &rotated);
        cr_assert_lt(rotated, plain / 3, "g %d: rotated MSE %g vs plain %g", gs[gi], rotated, plain);
        hadamard_mse(gs[gi], 0.0f, &plain, &rotated);
        cr_assert_lt(rotated, plain * 1.1, "g %d, no outlier: rotated MSE %g vs plain %g", gs[gi], rotated, plain);
    }
}

#ifdef QUANT_PRINT_TABLE
// Regenerates the table at the top of this file: build with -DQUANT_PRINT_TABLE and run --filter quant/table.
Test(quant, table) {
    for (int outliers = 0; outliers <= 3; outliers += 3)
        for (int b = 0; b < 3; b++)
            for (int gi = 0; gi < 3; gi++) {
                double mx, mean;
                measure(128, GROUPS[gi], BITS[b], outliers, ROWS, 5, &mx, &mean);
                printf("outliers %d bits %d g %2d: max %.3e mean %.3e\n", outliers, BITS[b], GROUPS[gi], mx, mean);
            }
    for (int g = 32; g <= 128; g *= 4)
        for (int out = 0; out <= 40; out += 40) {
            double plain, rotated;
            hadamard_mse(g, (float)out, &plain, &rotated);
            printf("hadamard 4 bits g %3d outlier %2d: plain MSE %.3e rotated %.3e\n", g, out, plain, rotated);
        }
}
#endif
