// Tests of the products of a few input rows, suite `gemv`: common/matvec.h against a double-precision loop on
// many shapes (widths that are not multiples of any vector width, 1..9 inputs, a row range and an output stride,
// nothing written outside them), the same bits however rows are split or inputs batched; matmul_forward_cpu
// on both sides of MATVEC_MAX_N and with 1 or 2 threads; matmul_many_forward_cpu against separate products;
// the CUDA matmul_many_forward against the CPU (skipped without a GPU).
#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>
#include <string.h>

#include "../common/matvec.h"
#include "../layers/cpu_ops.h"
#include "backend_util.h"
#if KVLAB_CUDA
#include "../layers/cuda_ops.h"
#endif

#define POISON 12345.0f

static float *randn(size_t n, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    float *x = common_calloc(n ? n : 1, sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = rng_normal(&rng);
    return x;
}

// Asserts got[n * ldo + o] (o in [o0, o1)) is the double-precision product within a float accumulation's
// error bound, IN * 2^-23 * sum |w x| (plus a tiny absolute term), and that every other element of the
// (N, ldo) buffer still holds POISON.
static void expect_product(const float *got, size_t ldo, const float *x, const float *w, int N, int IN, int o0,
                           int o1, const char *what) {
    for (int n = 0; n < N; n++)
        for (size_t o = 0; o < ldo; o++) {
            float g = got[(size_t)n * ldo + o];
            if ((int)o < o0 || (int)o >= o1) {
                cr_assert(g == POISON, "%s: wrote outside rows [%d, %d): n %d o %zu", what, o0, o1, n, o);
                continue;
            }
            double ref = 0.0, mag = 0.0;
            for (int i = 0; i < IN; i++) {
                double p = (double)x[(size_t)n * IN + i] * w[o * IN + i];
                ref += p, mag += fabs(p);
            }
            double tol = IN * 1.2e-7 * mag + 1e-30;
            cr_assert(fabs(g - ref) <= tol, "%s: N %d IN %d out[%d][%zu] = %.9g, want %.9g (tol %g)", what, N, IN, n,
                      o, g, ref, tol);
        }
}

Test(gemv, matvec_rows_matches_double_reference) {
    const int ins[] = {1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 128, 130, 352};
    const int outs[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17, 65};
    uint64_t seed = 1;
    for (size_t a = 0; a < sizeof ins / sizeof *ins; a++)
        for (size_t b = 0; b < sizeof outs / sizeof *outs; b++)
            for (int N = 1; N <= 9; N++) {
                int IN = ins[a], OUT = outs[b];
                size_t ldo = (size_t)OUT + (N & 1); // an output stride wider than the rows, sometimes
                float *x = randn((size_t)N * IN, seed++), *w = randn((size_t)OUT * IN, seed++);
                float *out = common_calloc((size_t)N * ldo, sizeof(float));
                for (size_t i = 0; i < (size_t)N * ldo; i++) out[i] = POISON;
                matvec_rows(out, ldo, x, w, N, IN, 0, OUT);
                expect_product(out, ldo, x, w, N, IN, 0, OUT, "all rows");
                // a sub-range: rows outside it untouched
                int o0 = OUT / 3, o1 = OUT - OUT / 4;
                for (size_t i = 0; i < (size_t)N * ldo; i++) out[i] = POISON;
                matvec_rows(out, ldo, x, w, N, IN, o0, o1);
                expect_product(out, ldo, x, w, N, IN, o0, o1, "row range");
                common_free(x), common_free(w), common_free(out);
            }
}

// Each element is the same dot product wherever it is computed: in a block of 8 or 4 rows or alone, alone or
// with up to 8 other inputs, in any row range. matmul results therefore never depend on the thread count.
Test(gemv, same_bits_however_split_or_batched) {
    const int shapes[][2] = {{128, 37}, {33, 29}, {352, 19}, {5, 11}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int IN = shapes[s][0], OUT = shapes[s][1], N = 9;
        float *x = randn((size_t)N * IN, 100 + s), *w = randn((size_t)OUT * IN, 200 + s);
        float *all = common_calloc((size_t)N * OUT, sizeof(float)), *one = common_calloc(OUT, sizeof(float));
        matvec_rows(all, OUT, x, w, N, IN, 0, OUT);
        for (int n = 0; n < N; n++) {
            // input n alone, rows cut at every split point into two ranges
            for (int cut = 0; cut <= OUT; cut++) {
                matvec_rows(one, OUT, x + (size_t)n * IN, w, 1, IN, 0, cut);
                matvec_rows(one, OUT, x + (size_t)n * IN, w, 1, IN, cut, OUT);
                cr_assert(!memcmp(one, all + (size_t)n * OUT, sizeof(float) * OUT), "IN %d OUT %d input %d cut %d", IN,
                          OUT, n, cut);
            }
        }
        // inputs in groups of 2 and 3 from an offset
        for (int n0 = 0; n0 + 3 <= N; n0 += 3) {
            float grp[3 * 64];
            matvec_rows(grp, OUT, x + (size_t)n0 * IN, w, 3, IN, 0, OUT);
            cr_assert(!memcmp(grp, all + (size_t)n0 * OUT, sizeof(float) * 3 * OUT), "group of 3 at %d", n0);
            matvec_rows(grp, OUT, x + (size_t)n0 * IN, w, 2, IN, 0, OUT);
            cr_assert(!memcmp(grp, all + (size_t)n0 * OUT, sizeof(float) * 2 * OUT), "group of 2 at %d", n0);
        }
        common_free(x), common_free(w), common_free(all), common_free(one);
    }
}

// matmul_forward_cpu: the matrix-vector path (N <= MATVEC_MAX_N) and sgemm (above) both match the double
// loop; the result is bit-identical with 1 and 2 threads at a size large enough to run in parallel.
Test(gemv, matmul_forward_both_paths_and_threads) {
    const int shapes[][2] = {{128, 352}, {352, 128}, {130, 301}, {67, 65}, {17, 1000}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int N = 1; N <= MATVEC_MAX_N + 3; N++) {
            int IN = shapes[s][0], OUT = shapes[s][1];
            float *x = randn((size_t)N * IN, 300 + s * 16 + N), *w = randn((size_t)OUT * IN, 400 + s);
            float *o1 = common_calloc((size_t)N * OUT, sizeof(float));
            float *o2 = common_calloc((size_t)N * OUT, sizeof(float));
            omp_set_num_threads(1);
            for (size_t i = 0; i < (size_t)N * OUT; i++) o1[i] = o2[i] = POISON;
            matmul_forward_cpu(o1, x, w, N, IN, OUT);
            expect_product(o1, OUT, x, w, N, IN, 0, OUT, "matmul_forward_cpu");
            omp_set_num_threads(2);
            matmul_forward_cpu(o2, x, w, N, IN, OUT);
            if (N <= MATVEC_MAX_N)
                cr_assert(!memcmp(o1, o2, sizeof(float) * N * OUT), "N %d IN %d OUT %d: 1 vs 2 threads", N, IN, OUT);
            else
                expect_product(o2, OUT, x, w, N, IN, 0, OUT, "matmul_forward_cpu (2 threads)");
            common_free(x), common_free(w), common_free(o1), common_free(o2);
        }
    omp_set_num_threads(1);
}

// matmul_many_forward_cpu = one matmul_forward_cpu per weight, bit for bit (the same kernel or the same sgemm),
// with 1 and 2 threads, for the decode step's shapes (Q K V, W1 W3) and odd ones.
Test(gemv, matmul_many_matches_separate_products) {
    const int dims[][3] = {{128, 64, 64}, {64, 64, 128}, {352, 352, 0}, {5, 300, 13}, {1, 0, 0}};
    const int ins[] = {128, 33, 130};
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++)
        for (size_t a = 0; a < sizeof ins / sizeof *ins; a++)
            for (int N = 1; N <= MATVEC_MAX_N + 2; N += 3)
                for (int threads = 1; threads <= 2; threads++) {
                    int IN = ins[a], k = dims[d][2] ? 3 : dims[d][1] ? 2 : 1;
                    float *x = randn((size_t)N * IN, 500 + d * 8 + a), *w[3], *got[3], *ref[3];
                    for (int j = 0; j < k; j++) {
                        size_t n = (size_t)dims[d][j] * IN;
                        w[j] = randn(n, 600 + d * 8 + j);
                        got[j] = common_calloc((size_t)N * dims[d][j], sizeof(float));
                        ref[j] = common_calloc((size_t)N * dims[d][j], sizeof(float));
                    }
                    omp_set_num_threads(threads);
                    matmul_many_forward_cpu(got, x, (const float *const *)w, dims[d], k, N, IN);
                    omp_set_num_threads(1);
                    for (int j = 0; j < k; j++) {
                        matmul_forward_cpu(ref[j], x, w[j], N, IN, dims[d][j]);
                        cr_assert(!memcmp(got[j], ref[j], sizeof(float) * N * dims[d][j]),
                                  "dims %zu IN %d N %d threads %d: product %d differs", d, IN, N, threads, j);
                        common_free(w[j]), common_free(got[j]), common_free(ref[j]);
                    }
                    common_free(x);
                }
    omp_set_num_threads(1);
}

#if KVLAB_CUDA
static void run_matmul_many_cuda(void) {
    const int dims[3] = {67, 67, 130}, IN = 67, N = 3;
    float *x = bk_host_random((size_t)N * IN, 1, 1.0f), *d_x = bk_dev_from_host(x, (size_t)N * IN);
    float *w[3], *d_w[3], *d_out[3], *ref[3];
    for (int j = 0; j < 3; j++) {
        w[j] = bk_host_random((size_t)dims[j] * IN, 2 + j, 1.0f);
        d_w[j] = bk_dev_from_host(w[j], (size_t)dims[j] * IN);
        d_out[j] = bk_dev_poisoned((size_t)N * dims[j]);
        ref[j] = common_calloc((size_t)N * dims[j], sizeof(float));
    }
    matmul_many_forward_cpu(ref, x, (const float *const *)w, dims, 3, N, IN);
    ops_cuda.matmul_many_forward(d_out, d_x, (const float *const *)d_w, dims, 3, N, IN);
    for (int j = 0; j < 3; j++) {
        bk_expect_close(d_out[j], ref[j], (size_t)N * dims[j], 1e-8, "matmul_many_forward out");
        bk_dev_free(d_w[j]), bk_dev_free(d_out[j]), common_free(w[j]), common_free(ref[j]);
    }
    bk_dev_free(d_x), common_free(x);
}
#endif

Test(gemv, matmul_many_cuda_matches_cpu) {
    BACKEND_REQUIRE_CUDA();
    BK_RUN(run_matmul_many_cuda);
}
