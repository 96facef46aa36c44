// Matrix products in every precision, suite `backend_matmul` (run on the CUDA emulator by ninja test): the grouped
// products of one input (matmul_many_forward / matmul_many_backward: CPU against k separate calls, bit for bit;
// CUDA against the CPU, with GQA's unequal widths and empty shapes), each product in fp32, tf32 and bf16 against
// the CPU's fp32 product within the precision's tolerance (below), and the bf16 shadow of the registered weights
// following adamw_update and mem_upload (a stale copy would miss by the whole update).
//
// Tolerance of a reduced-precision product (normalised MSE against the fp32 product): each input is rounded with
// relative error at most u, so a term a_i b_i carries about (d_a + d_b) a_i b_i, and the sum's error has variance
// near (2 u^2 / 3) sum (a_i b_i)^2 for rounding to nearest. The inputs here are uniform in [-1, 1] with random
// signs, so the sum itself has variance sum (a_i b_i)^2: the error grows as sqrt(K) like the sum, and the NMSE stays
// near 2 u^2 / 3 at any K (fp32 accumulation adds about K 2^-24 relative, negligible). We allow 4 u^2: bf16
// u = 2^-8 (our rounding is to nearest even) -> 6.1e-5; tf32 u = 2^-10, twice RNE's 2^-11, because tensor cores may
// truncate the fp32 inputs -> 3.8e-6. The mode must also be in effect: the NMSE must exceed (u_rne)^2 / 100, far
// above fp32's (about 1e-14). A bf16 product must further equal the fp32 product of the bf16-rounded operands
// (TOL_RED: only the summation order differs), which is what pins the shadow to the current weights.
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../layers/cpu_ops.h"
#include "../layers/cuda_ops.h"
#include "backend_util.h"

#define TOL_RED 1e-8

static const char *const MODE_NAME[] = {"fp32", "tf32", "bf16"};

// NMSE allowed against the fp32 CPU product, and the least that shows the mode is in effect.
static double precision_tol(int mode) {
    double u = mode == OPS_PRECISION_BF16 ? ldexp(1.0, -8) : ldexp(1.0, -10);
    return mode == OPS_PRECISION_FP32 ? TOL_RED : 4.0 * u * u;
}

static double precision_floor(int mode) {
    double u = mode == OPS_PRECISION_BF16 ? ldexp(1.0, -8) : ldexp(1.0, -11);
    return mode == OPS_PRECISION_FP32 ? 0.0 : u * u / 100.0;
}

// The CPU's matmul_many_backward is k matmul_backward calls, bit for bit (no GPU needed).
Test(backend_matmul, many_backward_cpu_is_k_calls) {
    int N = 51, IN = 67, dims[3] = {67, 17, 17}; // Q, K, V of a GQA layer
    size_t ni = (size_t)N * IN;
    float *inp = bk_host_random(ni, 1, 1.0f), *dinp_a = bk_host_random(ni, 2, 1.0f);
    float *dinp_b = common_calloc(ni, sizeof(float));
    memcpy(dinp_b, dinp_a, ni * sizeof(float));
    float *w[3], *dout[3], *dw_a[3], *dw_b[3];
    for (int j = 0; j < 3; j++) {
        size_t nw = (size_t)dims[j] * IN;
        w[j] = bk_host_random(nw, 10 + j, 1.0f);
        dout[j] = bk_host_random((size_t)N * dims[j], 20 + j, 1.0f);
        dw_a[j] = bk_host_random(nw, 30 + j, 1.0f);
        dw_b[j] = common_calloc(nw, sizeof(float));
        memcpy(dw_b[j], dw_a[j], nw * sizeof(float));
    }
    matmul_many_backward_cpu(dinp_a, dw_a, (const float *const *)dout, inp, (const float *const *)w, dims, 3, N, IN);
    for (int j = 0; j < 3; j++) matmul_backward_cpu(dinp_b, dw_b[j], dout[j], inp, w[j], N, IN, dims[j]);
    cr_expect(memcmp(dinp_a, dinp_b, ni * sizeof(float)) == 0, "dinp differs from 3 matmul_backward calls");
    for (int j = 0; j < 3; j++)
        cr_expect(memcmp(dw_a[j], dw_b[j], (size_t)dims[j] * IN * sizeof(float)) == 0, "dweight %d differs", j);
    matmul_many_backward_cpu(NULL, NULL, (const float *const *)dout, inp, (const float *const *)w, dims, 3, 0, IN);
    for (int j = 0; j < 3; j++) common_free(w[j]), common_free(dout[j]), common_free(dw_a[j]), common_free(dw_b[j]);
    common_free(inp), common_free(dinp_a), common_free(dinp_b);
}

// The CPU computes in fp32 only: another precision is one clear line.
Test(backend_matmul, cpu_refuses_reduced_precision) {
    char err[ERR_LEN] = "";
    cr_expect(ops_cpu.precision_set(OPS_PRECISION_FP32, NULL, 0, err) == 0);
    cr_expect(ops_cpu.precision_set(OPS_PRECISION_BF16, NULL, 0, err) == -1);
    cr_expect(strstr(err, "--precision bf16: the cpu backend computes in fp32 only") && !strchr(err, '\n'), "%s", err);
    int mode = -1;
    cr_expect(ops_precision_parse("tf32", &mode, err) == 0 && mode == OPS_PRECISION_TF32);
    cr_expect(ops_precision_parse("fp16", &mode, err) == -1 && strstr(err, "valid values are fp32, tf32, bf16"));
}

#if KVLAB_CUDA

// Host copies of the k products' operands and device copies, weights either inside one registered block (the
// bf16 shadow) or in buffers of their own.
typedef struct {
    int k, N, IN, dims[3];
    float *inp, *w[3], *dout[3], *dinp, *dw[3];             // host
    float *d_inp, *d_block, *d_w[3], *d_dout[3], *d_dinp, *d_dw[3]; // device
} Many;

static void many_init(Many *m, int k, int N, int IN, const int *dims, int in_block, uint64_t seed) {
    memset(m, 0, sizeof *m);
    m->k = k;
    m->N = N;
    m->IN = IN;
    size_t total = 0;
    for (int j = 0; j < k; j++) total += (size_t)dims[j] * IN;
    float *block = bk_host_random(total, seed, 1.0f);
    m->d_block = bk_dev_from_host(block, total);
    m->inp = bk_host_random((size_t)N * IN, seed + 1, 1.0f);
    m->d_inp = bk_dev_from_host(m->inp, (size_t)N * IN);
    m->dinp = bk_host_random((size_t)N * IN, seed + 2, 1.0f);
    m->d_dinp = bk_dev_from_host(m->dinp, (size_t)N * IN);
    size_t off = 0;
    for (int j = 0; j < k; j++) {
        size_t nw = (size_t)dims[j] * IN;
        m->dims[j] = dims[j];
        m->w[j] = common_calloc(nw ? nw : 1, sizeof(float));
        memcpy(m->w[j], block + off, nw * sizeof(float));
        m->d_w[j] = in_block ? m->d_block + off : bk_dev_from_host(m->w[j], nw);
        m->dout[j] = bk_host_random((size_t)N * dims[j], seed + 10 + j, 1.0f);
        m->d_dout[j] = bk_dev_from_host(m->dout[j], (size_t)N * dims[j]);
        m->dw[j] = bk_host_random(nw, seed + 20 + j, 1.0f);
        m->d_dw[j] = bk_dev_from_host(m->dw[j], nw);
        off += nw;
    }
    if (!in_block) {
        bk_dev_free(m->d_block);
        m->d_block = NULL;
    }
    common_free(block);
}

static void many_free(Many *m) {
    for (int j = 0; j < m->k; j++) {
        common_free(m->w[j]), common_free(m->dout[j]), common_free(m->dw[j]);
        if (!m->d_block) bk_dev_free(m->d_w[j]);
        bk_dev_free(m->d_dout[j]), bk_dev_free(m->d_dw[j]);
    }
    common_free(m->inp), common_free(m->dinp);
    bk_dev_free(m->d_inp), bk_dev_free(m->d_dinp), bk_dev_free(m->d_block);
}

// Downloads dev (n) and checks it against ref within the mode's tolerance, and that the mode shows.
static void expect_precision(const float *dev, const float *ref, size_t n, int mode, const char *what) {
    bk_expect_close(dev, ref, n, precision_tol(mode), what);
    float *got = bk_download(dev, n);
    double e = bk_nmse(got, ref, n);
    cr_expect(e >= precision_floor(mode), "%s (%s): nmse %.3g, so the inputs were not rounded", what, MODE_NAME[mode], e);
    common_free(got);
}

// Forward and backward of k products of one input, grouped and one at a time, in `mode`, against the CPU in fp32.
static void many_case(int mode, int k, int N, int IN, const int *dims, int in_block, uint64_t seed) {
    Many m;
    many_init(&m, k, N, IN, dims, in_block, seed);
    char err[ERR_LEN];
    size_t total = 0;
    for (int j = 0; j < k; j++) total += (size_t)dims[j] * IN;
    cr_assert(precision_set_cuda(mode, in_block ? m.d_block : NULL, total, err) == 0, "%s", err);
    float *outs[3], *d_outs[3], *d_one[3];
    for (int j = 0; j < k; j++) {
        size_t no = (size_t)N * dims[j];
        outs[j] = common_calloc(no ? no : 1, sizeof(float));
        if (no) matmul_forward_cpu(outs[j], m.inp, m.w[j], N, IN, dims[j]); // (CBLAS refuses empty shapes)
        d_outs[j] = bk_dev_poisoned(no);
        d_one[j] = bk_dev_poisoned(no);
    }
    matmul_many_forward_cuda(d_outs, m.d_inp, (const float *const *)m.d_w, dims, k, N, IN);
    char what[128];
    for (int j = 0; j < k; j++) {
        size_t no = (size_t)N * dims[j];
        matmul_forward_cuda(d_one[j], m.d_inp, m.d_w[j], N, IN, dims[j]);
        snprintf(what, sizeof what, "%s many_forward out %d (N %d, IN %d, OUT %d)", MODE_NAME[mode], j, N, IN, dims[j]);
        if (no) expect_precision(d_outs[j], outs[j], no, mode, what);
        bk_check_guard(d_outs[j], no, what);
        snprintf(what, sizeof what, "%s matmul_forward out %d", MODE_NAME[mode], j);
        if (no) expect_precision(d_one[j], outs[j], no, mode, what);
    }
    // backward: both sides, against k CPU matmul_backward calls in fp32
    for (int j = 0; j < k; j++)
        if (N && dims[j]) matmul_backward_cpu(m.dinp, m.dw[j], m.dout[j], m.inp, m.w[j], N, IN, dims[j]);
    matmul_many_backward_cuda(m.d_dinp, m.d_dw, (const float *const *)m.d_dout, m.d_inp, (const float *const *)m.d_w,
                              dims, k, N, IN);
    snprintf(what, sizeof what, "%s many_backward dinp", MODE_NAME[mode]);
    if (N) expect_precision(m.d_dinp, m.dinp, (size_t)N * IN, mode, what);
    for (int j = 0; j < k; j++) {
        snprintf(what, sizeof what, "%s many_backward dweight %d", MODE_NAME[mode], j);
        if (N) expect_precision(m.d_dw[j], m.dw[j], (size_t)dims[j] * IN, mode, what);
        else bk_expect_close(m.d_dw[j], m.dw[j], (size_t)dims[j] * IN, 0.0, what); // untouched
    }
    cr_assert(precision_set_cuda(OPS_PRECISION_FP32, NULL, 0, err) == 0);
    for (int j = 0; j < k; j++) common_free(outs[j]), bk_dev_free(d_outs[j]), bk_dev_free(d_one[j]);
    many_free(&m);
}

static void run_many_fp32(void) {
    const int qkv[3] = {67, 17, 17}, w13[2] = {160, 160}, odd[3] = {5, 0, 33};
    many_case(OPS_PRECISION_FP32, 3, 51, 67, qkv, 0, 100); // GQA: K and V narrower than Q
    many_case(OPS_PRECISION_FP32, 2, 51, 67, w13, 1, 110);
    many_case(OPS_PRECISION_FP32, 3, 3, 67, qkv, 0, 120); // a decode-sized product
    many_case(OPS_PRECISION_FP32, 3, 20, 9, odd, 0, 130); // an empty product among them
}

// A cuBLAS that refuses the grouped call (the emulator's CUEMU_NO_GROUPED_GEMM=1): the same products one call each.
// The fallback then holds for the process (Criterion runs each test in its own). On a GPU the variable means
// nothing and this repeats the grouped cases.
static void run_many_ungrouped(void) {
    setenv("CUEMU_NO_GROUPED_GEMM", "1", 1);
    const int qkv[3] = {67, 17, 17};
    many_case(OPS_PRECISION_FP32, 3, 51, 67, qkv, 0, 160);
    many_case(OPS_PRECISION_TF32, 3, 51, 64, qkv, 0, 170);
    unsetenv("CUEMU_NO_GROUPED_GEMM");
}

// Empty N: nothing written, nothing read.
static void run_many_empty(void) {
    const int qkv[3] = {67, 17, 17};
    many_case(OPS_PRECISION_FP32, 3, 0, 67, qkv, 0, 140);
    many_case(OPS_PRECISION_BF16, 3, 0, 67, qkv, 1, 150);
}

// Every product in tf32 and bf16: weights in the registered block (bf16: the shadow) and outside it (rounded per
// product); the two give the same bits.
static void run_precisions(void) {
    const int qkv[3] = {64, 16, 16};
    for (int mode = OPS_PRECISION_TF32; mode <= OPS_PRECISION_BF16; mode++) {
        many_case(mode, 3, 51, 64, qkv, 1, 200 + mode);
        many_case(mode, 3, 51, 64, qkv, 0, 200 + mode);
        const int wide[1] = {300};
        many_case(mode, 1, 40, 1000, wide, 1, 210 + mode); // K = 1000
    }
    // shadow and per-product rounding agree bit for bit
    const int dims[1] = {33};
    Many a, b;
    many_init(&a, 1, 19, 70, dims, 1, 300);
    many_init(&b, 1, 19, 70, dims, 0, 300);
    char err[ERR_LEN];
    cr_assert(precision_set_cuda(OPS_PRECISION_BF16, a.d_block, (size_t)33 * 70, err) == 0, "%s", err);
    float *d_x = bk_dev_poisoned(19 * 33), *d_y = bk_dev_poisoned(19 * 33);
    matmul_forward_cuda(d_x, a.d_inp, a.d_w[0], 19, 70, 33);
    matmul_forward_cuda(d_y, b.d_inp, b.d_w[0], 19, 70, 33);
    float *x = bk_download(d_x, 19 * 33), *y = bk_download(d_y, 19 * 33);
    cr_expect(memcmp(x, y, 19 * 33 * sizeof(float)) == 0, "bf16: the shadow and a per-product rounding differ");
    cr_assert(precision_set_cuda(OPS_PRECISION_FP32, NULL, 0, err) == 0);
    common_free(x), common_free(y), bk_dev_free(d_x), bk_dev_free(d_y);
    many_free(&a), many_free(&b);
}

static float bf16_round_host(float f) { // round to nearest even, finite inputs
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

// out = inp @ w^T with both operands rounded to bf16, the sum in double: what a bf16 product must give (TOL_RED).
static float *bf16_reference(const float *inp, const float *w, int N, int IN, int OUT) {
    float *out = common_calloc((size_t)N * OUT, sizeof(float));
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OUT; o++) {
            double s = 0.0;
            for (int c = 0; c < IN; c++)
                s += (double)bf16_round_host(inp[(size_t)i * IN + c]) * bf16_round_host(w[(size_t)o * IN + c]);
            out[(size_t)i * OUT + o] = (float)s;
        }
    return out;
}

// The shadow follows the master weights: after adamw_update_cuda moves them (lr 0.5: every weight moves by about
// half its range) and after ops_cuda.mem_upload writes new ones into part of the block, a product reads the new
// values (a stale shadow misses by an NMSE near 1).
static void run_bf16_shadow(void) {
    const int N = 23, IN = 70, OUT = 31;
    size_t nw = (size_t)OUT * IN, nblock = 3 * nw; // the weight is the block's middle third
    float *block = bk_host_random(nblock, 400, 1.0f), *inp = bk_host_random((size_t)N * IN, 401, 1.0f);
    float *d_block = ops_cuda.mem_alloc(nblock * sizeof(float)), *d_inp = bk_dev_from_host(inp, (size_t)N * IN);
    ops_cuda.mem_upload(d_block, block, nblock * sizeof(float));
    char err[ERR_LEN];
    cr_assert(ops_cuda.precision_set(OPS_PRECISION_BF16, d_block, nblock, err) == 0, "%s", err);
    float *d_out = bk_dev_poisoned((size_t)N * OUT), *w = block + nw, *d_w = d_block + nw;
    float *ref = bf16_reference(inp, w, N, IN, OUT);
    matmul_forward_cuda(d_out, d_inp, d_w, N, IN, OUT);
    bk_expect_close(d_out, ref, (size_t)N * OUT, TOL_RED, "bf16 product of the registered weights");
    common_free(ref);
    // AdamW over the whole block on the device and on the host
    float *g = bk_host_random(nblock, 402, 1.0f), *mv = common_calloc(nblock, sizeof(float));
    float *v = common_calloc(nblock, sizeof(float));
    float *d_g = bk_dev_from_host(g, nblock), *d_m = bk_dev_from_host(mv, nblock), *d_v = bk_dev_from_host(v, nblock);
    AdamwSegments seg = {.n = 2, .end = {nblock / 3, nblock}, .decay = {0.0f, 0.1f}}; // the shadow across segments
    adamw_update_segments_cpu(block, g, mv, v, &seg, 0.5f, 0.9f, 0.95f, 1e-8f, 1);
    ops_cuda.adamw_update(d_block, d_g, d_m, d_v, &seg, 0.5f, 0.9f, 0.95f, 1e-8f, 1);
    ref = bf16_reference(inp, w, N, IN, OUT);
    matmul_forward_cuda(d_out, d_inp, d_w, N, IN, OUT);
    bk_expect_close(d_out, ref, (size_t)N * OUT, TOL_RED, "bf16 product after adamw_update (stale shadow?)");
    common_free(ref);
    // new values uploaded into a part of the block that covers the weight and more
    float *fresh = bk_host_random(nw + 5, 403, 2.0f);
    memcpy(block + nw - 3, fresh, (nw + 5) * sizeof(float));
    ops_cuda.mem_upload(d_block + nw - 3, fresh, (nw + 5) * sizeof(float));
    ref = bf16_reference(inp, w, N, IN, OUT);
    matmul_forward_cuda(d_out, d_inp, d_w, N, IN, OUT);
    bk_expect_close(d_out, ref, (size_t)N * OUT, TOL_RED, "bf16 product after mem_upload (stale shadow?)");
    common_free(ref);
    // freeing the block drops the shadow: a new buffer at the same address is not mistaken for it
    ops_cuda.mem_free(d_block);
    cr_expect(precision_shadow_cuda(d_w, nw) == NULL, "mem_free kept the shadow of a freed block");
    cr_assert(ops_cuda.precision_set(OPS_PRECISION_FP32, NULL, 0, err) == 0);
    cr_expect(precision_get_cuda() == OPS_PRECISION_FP32);
    bk_dev_free(d_inp), bk_dev_free(d_out), bk_dev_free(d_g), bk_dev_free(d_m), bk_dev_free(d_v);
    common_free(block), common_free(inp), common_free(g), common_free(mv), common_free(v), common_free(fresh);
}

#endif // KVLAB_CUDA

#define BACKEND_TEST(name)                                                                                     \
    Test(backend_matmul, name) {                                                                               \
        BACKEND_REQUIRE_CUDA();                                                                                \
        BK_RUN(run_##name);                                                                                    \
    }

BACKEND_TEST(many_fp32)
BACKEND_TEST(many_empty)
BACKEND_TEST(many_ungrouped)
BACKEND_TEST(precisions)
BACKEND_TEST(bf16_shadow)
