// Backend-ops tests, suite `backend_ops` (ggml test-backend-ops style): every CUDA op of layers/cuda_ops.h and
// the optimizer ops of layers/adamw.cu against the CPU reference on the same random, odd-shaped inputs
// (B=3, T=17, C=67, sizes that are not multiples of any block size, V=65 and V=1000). Overwritten outputs
// start as NaN on the device; accumulated outputs start with the same random values on both sides, so the
// += is checked too. Every device buffer carries guard words that must survive. Without a usable GPU (or in a
// build without CUDA) every test is skipped and says why. Attention: tests/test_backend_attention.c.
//
// Tolerances (normalised MSE, fp32): 0 (bit-identical) where the CUDA op does exactly the CPU's float
// operations in the CPU's order (copies, the encoder's ordered accumulation, RoPE from the host's angle table,
// residual/dropout/scale and AdamW with round-to-nearest intrinsics, the counter-based dropout mask);
// TOL_ELEM = 1e-10 for elementwise ops where nvcc's expf or an FMA contraction may differ by an ulp;
// TOL_RED = 1e-8 for reductions and matrix products (other summation order).
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "../layers/cpu_ops.h"
#include "../common/upload.cuh"
#include "../layers/cuda_ops.h"
#include "backend_util.h"

#define TOL_EXACT 0.0
#define TOL_ELEM 1e-10
#define TOL_RED 1e-8

#if KVLAB_CUDA

// --- encoder ------------------------------------------------------------------------------------------------

static void encoder_forward_case(int B, int T, int C, int V, uint64_t seed) {
    size_t BT = (size_t)B * T, n = BT * C;
    int *tok = bk_host_tokens(BT, seed, V);
    float *wte = bk_host_random((size_t)V * C, seed + 1, 1.0f), *ref = common_calloc(n, sizeof(float));
    encoder_forward_cpu(ref, tok, wte, B, T, C);
    int *d_tok = bk_dev_ints(tok, BT);
    float *d_wte = bk_dev_from_host(wte, (size_t)V * C), *d_out = bk_dev_poisoned(n);
    encoder_forward_cuda(d_out, d_tok, d_wte, B, T, C);
    bk_expect_close(d_out, ref, n, TOL_EXACT, "encoder_forward out"); // a copy
    bk_check_guard(d_wte, (size_t)V * C, "encoder_forward wte");
    bk_dev_free(d_tok), bk_dev_free(d_wte), bk_dev_free(d_out);
    common_free(tok), common_free(wte), common_free(ref);
}

static void run_encoder_forward(void) {
    encoder_forward_case(3, 17, 67, 65, 1);
    encoder_forward_case(2, 9, 33, 1000, 2);
}

static void encoder_backward_case(int B, int T, int C, int V, uint64_t seed) {
    size_t BT = (size_t)B * T, n = BT * C, nw = (size_t)V * C;
    int *tok = bk_host_tokens(BT, seed, V);
    float *dout = bk_host_random(n, seed + 1, 1.0f), *dwte = bk_host_random(nw, seed + 2, 1.0f);
    int *d_tok = bk_dev_ints(tok, BT);
    float *d_dout = bk_dev_from_host(dout, n), *d_dwte = bk_dev_from_host(dwte, nw);
    encoder_backward_cpu(dwte, dout, tok, B, T, C);
    encoder_backward_cuda(d_dwte, d_dout, d_tok, B, T, C);
    // the same ascending-position sum per row as the CPU: bit-identical
    bk_expect_close(d_dwte, dwte, nw, TOL_EXACT, "encoder_backward dwte");
    bk_dev_free(d_tok), bk_dev_free(d_dout), bk_dev_free(d_dwte);
    common_free(tok), common_free(dout), common_free(dwte);
}

static void run_encoder_backward(void) {
    encoder_backward_case(3, 17, 67, 65, 3);    // the odd shape
    encoder_backward_case(2, 100, 40, 7, 4);    // heavy duplicates, walks across many 32-token tiles
    encoder_backward_case(3, 17, 31, 1000, 5);  // mostly distinct tokens, C below one warp
}

// --- rmsnorm ------------------------------------------------------------------------------------------------

static void rmsnorm_forward_case(int N, int C, uint64_t seed) {
    size_t n = (size_t)N * C;
    float *inp = bk_host_random(n, seed, 2.0f), *w = bk_host_random(C, seed + 1, 1.5f);
    float *out = common_calloc(n, sizeof(float)), *rstd = common_calloc(N, sizeof(float));
    rmsnorm_forward_cpu(out, rstd, inp, w, N, C, 1e-5f);
    float *d_inp = bk_dev_from_host(inp, n), *d_w = bk_dev_from_host(w, C);
    float *d_out = bk_dev_poisoned(n), *d_rstd = bk_dev_poisoned(N);
    rmsnorm_forward_cuda(d_out, d_rstd, d_inp, d_w, N, C, 1e-5f);
    bk_expect_close(d_out, out, n, TOL_RED, "rmsnorm_forward out"); // the sum of squares reduces in another order
    bk_expect_close(d_rstd, rstd, N, TOL_RED, "rmsnorm_forward rstd");
    bk_dev_free(d_inp), bk_dev_free(d_w), bk_dev_free(d_out), bk_dev_free(d_rstd);
    common_free(inp), common_free(w), common_free(out), common_free(rstd);
}

static void run_rmsnorm_forward(void) {
    rmsnorm_forward_case(3 * 17, 67, 6);
    rmsnorm_forward_case(1, 1000, 7);
    rmsnorm_forward_case(300, 5, 8);
}

static void rmsnorm_backward_case(int N, int C, uint64_t seed) {
    size_t n = (size_t)N * C;
    float *inp = bk_host_random(n, seed, 2.0f), *w = bk_host_random(C, seed + 1, 1.5f);
    float *dout = bk_host_random(n, seed + 2, 1.0f), *dinp = bk_host_random(n, seed + 3, 1.0f);
    float *dw = bk_host_random(C, seed + 4, 1.0f), *out = common_calloc(n, sizeof(float));
    float *rstd = common_calloc(N, sizeof(float));
    rmsnorm_forward_cpu(out, rstd, inp, w, N, C, 1e-5f);
    float *d_inp = bk_dev_from_host(inp, n), *d_w = bk_dev_from_host(w, C), *d_dout = bk_dev_from_host(dout, n);
    float *d_dinp = bk_dev_from_host(dinp, n), *d_dw = bk_dev_from_host(dw, C);
    float *d_rstd = bk_dev_from_host(rstd, N);
    rmsnorm_backward_cpu(dinp, dw, dout, inp, w, rstd, N, C);
    rmsnorm_backward_cuda(d_dinp, d_dw, d_dout, d_inp, d_w, d_rstd, N, C);
    bk_expect_close(d_dinp, dinp, n, TOL_RED, "rmsnorm_backward dinp");
    bk_expect_close(d_dw, dw, C, TOL_RED, "rmsnorm_backward dweight");
    bk_check_guard(d_rstd, N, "rmsnorm_backward rstd");
    bk_dev_free(d_inp), bk_dev_free(d_w), bk_dev_free(d_dout), bk_dev_free(d_dinp), bk_dev_free(d_dw);
    bk_dev_free(d_rstd);
    common_free(inp), common_free(w), common_free(dout), common_free(dinp), common_free(dw), common_free(out);
    common_free(rstd);
}

static void run_rmsnorm_backward(void) {
    rmsnorm_backward_case(3 * 17, 67, 9);
    rmsnorm_backward_case(600, 67, 10); // several row chunks in the dweight reduction
    rmsnorm_backward_case(2, 1000, 11);
}

// --- matmul -------------------------------------------------------------------------------------------------

static void matmul_forward_case(int N, int IN, int OUT, uint64_t seed) {
    float *inp = bk_host_random((size_t)N * IN, seed, 1.0f), *w = bk_host_random((size_t)OUT * IN, seed + 1, 1.0f);
    float *out = common_calloc((size_t)N * OUT, sizeof(float));
    matmul_forward_cpu(out, inp, w, N, IN, OUT);
    float *d_inp = bk_dev_from_host(inp, (size_t)N * IN), *d_w = bk_dev_from_host(w, (size_t)OUT * IN);
    float *d_out = bk_dev_poisoned((size_t)N * OUT); // beta = 0 must not read the NaNs
    matmul_forward_cuda(d_out, d_inp, d_w, N, IN, OUT);
    bk_expect_close(d_out, out, (size_t)N * OUT, TOL_RED, "matmul_forward out");
    bk_dev_free(d_inp), bk_dev_free(d_w), bk_dev_free(d_out);
    common_free(inp), common_free(w), common_free(out);
}

static void run_matmul_forward(void) {
    matmul_forward_case(3 * 17, 67, 65, 12);
    matmul_forward_case(3, 1000, 17, 13);
    matmul_forward_case(51, 67, 1000, 14); // the tied output projection's shape
}

// which: 3 = both outputs, 1 = dinp only (dweight NULL), 2 = dweight only (dinp NULL)
static void matmul_backward_case(int N, int IN, int OUT, int which, uint64_t seed) {
    size_t ni = (size_t)N * IN, nw = (size_t)OUT * IN, no = (size_t)N * OUT;
    float *inp = bk_host_random(ni, seed, 1.0f), *w = bk_host_random(nw, seed + 1, 1.0f);
    float *dout = bk_host_random(no, seed + 2, 1.0f), *dinp = bk_host_random(ni, seed + 3, 1.0f);
    float *dw = bk_host_random(nw, seed + 4, 1.0f);
    float *d_inp = bk_dev_from_host(inp, ni), *d_w = bk_dev_from_host(w, nw), *d_dout = bk_dev_from_host(dout, no);
    float *d_dinp = bk_dev_from_host(dinp, ni), *d_dw = bk_dev_from_host(dw, nw);
    matmul_backward_cpu(which & 1 ? dinp : NULL, which & 2 ? dw : NULL, dout, inp, w, N, IN, OUT);
    matmul_backward_cuda(which & 1 ? d_dinp : NULL, which & 2 ? d_dw : NULL, d_dout, d_inp, d_w, N, IN, OUT);
    bk_expect_close(d_dinp, dinp, ni, which & 1 ? TOL_RED : TOL_EXACT, "matmul_backward dinp");
    bk_expect_close(d_dw, dw, nw, which & 2 ? TOL_RED : TOL_EXACT, "matmul_backward dweight");
    bk_dev_free(d_inp), bk_dev_free(d_w), bk_dev_free(d_dout), bk_dev_free(d_dinp), bk_dev_free(d_dw);
    common_free(inp), common_free(w), common_free(dout), common_free(dinp), common_free(dw);
}

static void run_matmul_backward(void) {
    matmul_backward_case(3 * 17, 67, 65, 3, 15);
    matmul_backward_case(3, 1000, 17, 3, 16);
    matmul_backward_case(51, 67, 1000, 3, 17);
    matmul_backward_case(51, 67, 65, 1, 18); // dweight NULL: untouched
    matmul_backward_case(51, 67, 65, 2, 19); // dinp NULL: untouched
}

// --- rope ---------------------------------------------------------------------------------------------------

static void rope_case(int backward, int B, int T, int NH, int HD, int pos0, float theta, uint64_t seed) {
    size_t n = (size_t)B * T * NH * HD;
    float *x = bk_host_random(n, seed, 1.0f);
    float *d_x = bk_dev_from_host(x, n);
    if (backward) {
        rope_backward_cpu(x, B, T, NH, HD, pos0, theta);
        rope_backward_cuda(d_x, B, T, NH, HD, pos0, theta);
    } else {
        rope_forward_cpu(x, B, T, NH, HD, pos0, theta);
        rope_forward_cuda(d_x, B, T, NH, HD, pos0, theta);
    }
    // the host's float angles, the CPU's products and sums without FMA: bit-identical
    bk_expect_close(d_x, x, n, TOL_EXACT, backward ? "rope_backward dx" : "rope_forward x");
    bk_dev_free(d_x);
    common_free(x);
}

static void run_rope(int backward) {
    rope_case(backward, 3, 17, 5, 14, 0, 10000.0f, 20);
    rope_case(backward, 2, 9, 3, 64, 100, 10000.0f, 21);
    rope_case(backward, 1, 1, 4, 14, 4097, 10000.0f, 22); // a decode step past the first table: rebuilt
    rope_case(backward, 3, 17, 5, 14, 3, 500.0f, 23);     // another theta: rebuilt
    rope_case(backward, 1, 2, 2, 64, 100000, 10000.0f, 24); // far out: a table of just these
}

static void run_rope_forward(void) { run_rope(0); }
static void run_rope_backward(void) { run_rope(1); }

// --- swiglu -------------------------------------------------------------------------------------------------

static void run_swiglu_forward(void) {
    size_t N = 3 * 17 * 67;
    float *a = bk_host_random(N, 25, 6.0f), *b = bk_host_random(N, 26, 2.0f), *out = common_calloc(N, sizeof(float));
    swiglu_forward_cpu(out, a, b, N);
    float *d_a = bk_dev_from_host(a, N), *d_b = bk_dev_from_host(b, N), *d_out = bk_dev_poisoned(N);
    swiglu_forward_cuda(d_out, d_a, d_b, N);
    bk_expect_close(d_out, out, N, TOL_ELEM, "swiglu_forward out"); // expf ulps
    bk_dev_free(d_a), bk_dev_free(d_b), bk_dev_free(d_out);
    common_free(a), common_free(b), common_free(out);
}

static void run_swiglu_backward(void) {
    size_t N = 3 * 17 * 67;
    float *a = bk_host_random(N, 27, 6.0f), *b = bk_host_random(N, 28, 2.0f), *dout = bk_host_random(N, 29, 1.0f);
    float *da = bk_host_random(N, 30, 1.0f), *db = bk_host_random(N, 31, 1.0f);
    float *d_a = bk_dev_from_host(a, N), *d_b = bk_dev_from_host(b, N), *d_dout = bk_dev_from_host(dout, N);
    float *d_da = bk_dev_from_host(da, N), *d_db = bk_dev_from_host(db, N);
    swiglu_backward_cpu(da, db, dout, a, b, N);
    swiglu_backward_cuda(d_da, d_db, d_dout, d_a, d_b, N);
    bk_expect_close(d_da, da, N, TOL_ELEM, "swiglu_backward da");
    bk_expect_close(d_db, db, N, TOL_ELEM, "swiglu_backward db");
    bk_dev_free(d_a), bk_dev_free(d_b), bk_dev_free(d_dout), bk_dev_free(d_da), bk_dev_free(d_db);
    common_free(a), common_free(b), common_free(dout), common_free(da), common_free(db);
}

// --- residual, dropout, fill_zero ---------------------------------------------------------------------------

static void run_residual_forward(void) {
    size_t N = 3 * 17 * 67;
    Rng rng;
    rng_init(&rng, 32);
    float *a = bk_host_random(N, 33, 1.0f), *b = bk_host_random(N, 34, 1.0f), *keep = common_calloc(N, sizeof(float));
    dropout_mask_cpu(keep, N, 0.3f, &rng);
    float *out = common_calloc(N, sizeof(float)), *out_s = common_calloc(N, sizeof(float));
    residual_forward_cpu(out, a, b, NULL, N);
    residual_forward_cpu(out_s, a, b, keep, N);
    float *d_a = bk_dev_from_host(a, N), *d_b = bk_dev_from_host(b, N), *d_keep = bk_dev_from_host(keep, N);
    float *d_out = bk_dev_poisoned(N), *d_out_s = bk_dev_poisoned(N);
    residual_forward_cuda(d_out, d_a, d_b, NULL, N);
    residual_forward_cuda(d_out_s, d_a, d_b, d_keep, N);
    bk_expect_close(d_out, out, N, TOL_EXACT, "residual_forward out");
    bk_expect_close(d_out_s, out_s, N, TOL_EXACT, "residual_forward out (scaled)");
    residual_forward_cuda(d_a, d_a, d_b, NULL, N); // in place, as the decode step calls it
    bk_expect_close(d_a, out, N, TOL_EXACT, "residual_forward in place");
    bk_dev_free(d_a), bk_dev_free(d_b), bk_dev_free(d_keep), bk_dev_free(d_out), bk_dev_free(d_out_s);
    common_free(a), common_free(b), common_free(keep), common_free(out), common_free(out_s);
}

static void run_dropout(void) {
    size_t N = 3 * 17 * 67;
    Rng r_cpu, r_cuda;
    rng_init(&r_cpu, 35);
    rng_init(&r_cuda, 35);
    float *keep = common_calloc(N, sizeof(float)), *inp = bk_host_random(N, 36, 1.0f);
    float *out = common_calloc(N, sizeof(float));
    dropout_mask_cpu(keep, N, 0.25f, &r_cpu);
    dropout_apply_cpu(out, inp, keep, N);
    float *d_keep = bk_dev_poisoned(N), *d_inp = bk_dev_from_host(inp, N), *d_out = bk_dev_poisoned(N);
    dropout_mask_cuda(d_keep, N, 0.25f, &r_cuda);
    cr_expect(r_cuda.state == r_cpu.state, "dropout_mask: the RNG must advance exactly as on the CPU");
    bk_expect_close(d_keep, keep, N, TOL_EXACT, "dropout_mask keep"); // the same Philox words from the same draws
    dropout_apply_cuda(d_out, d_inp, d_keep, N);
    bk_expect_close(d_out, out, N, TOL_EXACT, "dropout_apply out");
    dropout_apply_cuda(d_inp, d_inp, d_keep, N); // in place
    bk_expect_close(d_inp, out, N, TOL_EXACT, "dropout_apply in place");
    bk_dev_free(d_keep), bk_dev_free(d_inp), bk_dev_free(d_out);
    common_free(keep), common_free(inp), common_free(out);
}

static void run_fill_zero(void) {
    size_t N = 3 * 17 * 67;
    float *zero = common_calloc(N, sizeof(float));
    float *d_x = bk_dev_poisoned(N);
    fill_zero_cuda(d_x, N);
    bk_expect_close(d_x, zero, N, TOL_EXACT, "fill_zero x");
    bk_dev_free(d_x);
    common_free(zero);
}

// --- cross-entropy ------------------------------------------------------------------------------------------

static void crossentropy_forward_case(int N, int V, int with_targets, uint64_t seed) {
    size_t nv = (size_t)N * V;
    float *logits = bk_host_random(nv, seed, 8.0f), *probs = common_calloc(nv, sizeof(float));
    float *losses = common_calloc(N, sizeof(float));
    int *tgt = bk_host_tokens(N, seed + 1, V);
    crossentropy_forward_cpu(with_targets ? losses : NULL, probs, logits, with_targets ? tgt : NULL, N, V);
    float *d_logits = bk_dev_from_host(logits, nv), *d_probs = bk_dev_poisoned(nv), *d_losses = bk_dev_poisoned(N);
    int *d_tgt = bk_dev_ints(tgt, N);
    crossentropy_forward_cuda(with_targets ? d_losses : NULL, d_probs, d_logits, with_targets ? d_tgt : NULL, N, V);
    bk_expect_close(d_probs, probs, nv, TOL_RED, "crossentropy_forward probs"); // the row sum reduces in another order
    if (with_targets) {
        bk_expect_close(d_losses, losses, N, TOL_RED, "crossentropy_forward losses");
    } else {
        float *h = bk_download(d_losses, N);
        for (int i = 0; i < N; i++) cr_expect(isnan(h[i]), "crossentropy_forward wrote losses without targets");
        common_free(h);
        bk_check_guard(d_losses, N, "crossentropy_forward losses");
    }
    bk_dev_free(d_logits), bk_dev_free(d_probs), bk_dev_free(d_losses), bk_dev_free(d_tgt);
    common_free(logits), common_free(probs), common_free(losses), common_free(tgt);
}

static void run_crossentropy_forward(void) {
    crossentropy_forward_case(3 * 17, 65, 1, 37);
    crossentropy_forward_case(7, 1000, 1, 38);
    crossentropy_forward_case(5, 65, 0, 39);
    crossentropy_forward_case(3, 1, 1, 40); // V = 1: probability 1, loss 0
}

// in_place: dlogits is the logits buffer; with_losses: losses given (else NULL)
static void crossentropy_fused_case(int N, int V, int in_place, int with_losses, uint64_t seed) {
    size_t nv = (size_t)N * V;
    float *logits = bk_host_random(nv, seed, 8.0f), *probs = common_calloc(nv, sizeof(float));
    float *dlogits = common_calloc(nv, sizeof(float)), *losses = common_calloc(N, sizeof(float));
    int *tgt = bk_host_tokens(N, seed + 1, V);
    float dloss = 1.0f / N;
    crossentropy_forward_cpu(losses, probs, logits, tgt, N, V); // the losses from the scoring op
    crossentropy_fused_cpu(NULL, dlogits, logits, tgt, dloss, N, V);
    float *d_logits = bk_dev_from_host(logits, nv), *d_losses = bk_dev_poisoned(N);
    float *d_dlogits = in_place ? d_logits : bk_dev_poisoned(nv);
    int *d_tgt = bk_dev_ints(tgt, N);
    crossentropy_fused_forward_backward_cuda(with_losses ? d_losses : NULL, d_dlogits, d_logits, d_tgt, dloss, N, V);
    bk_expect_close(d_dlogits, dlogits, nv, TOL_RED, "crossentropy_fused dlogits");
    if (with_losses) bk_expect_close(d_losses, losses, N, TOL_RED, "crossentropy_fused losses");
    if (!in_place) bk_expect_close(d_logits, logits, nv, TOL_EXACT, "crossentropy_fused logits (unchanged)");
    bk_dev_free(d_logits), bk_dev_free(d_losses), bk_dev_free(d_tgt);
    if (!in_place) bk_dev_free(d_dlogits);
    common_free(logits), common_free(probs), common_free(dlogits), common_free(losses), common_free(tgt);
}

static void run_crossentropy_fused(void) {
    crossentropy_fused_case(3 * 17, 65, 0, 1, 43);
    crossentropy_fused_case(3 * 17, 65, 1, 1, 44);
    crossentropy_fused_case(7, 1000, 1, 0, 45);
    crossentropy_fused_case(7, 1000, 0, 1, 46);
}

// --- optimizer ----------------------------------------------------------------------------------------------

// AdamW against adamw_update_cpu; grad_norm and scale against grad_norm_cpu and scale_cpu (layers/adamw.c).
static void run_adamw(void) {
    size_t n = 1000 + 7;
    float *p = bk_host_random(n, 47, 1.0f), *m = bk_host_random(n, 48, 0.01f), *v = bk_host_random(n, 49, 0.01f);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *d_p = bk_dev_from_host(p, n), *d_m = bk_dev_from_host(m, n), *d_v = bk_dev_from_host(v, n);
    for (int t = 1; t <= 3; t++) {
        float *g = bk_host_random(n, 50 + t, 0.5f);
        float *d_g = bk_dev_from_host(g, n);
        float wd = t == 2 ? 0.0f : 0.1f;
        adamw_update_cpu(p, g, m, v, n, 3e-3f, 0.9f, 0.95f, 1e-8f, wd, t);
        adamw_update_cuda(d_p, d_g, d_m, d_v, n, 3e-3f, 0.9f, 0.95f, 1e-8f, wd, t);
        bk_check_guard(d_g, n, "adamw grads");
        bk_dev_free(d_g);
        common_free(g);
    }
    // the CPU's float operations in its order, no FMA: bit-identical
    bk_expect_close(d_p, p, n, TOL_EXACT, "adamw params");
    bk_expect_close(d_m, m, n, TOL_EXACT, "adamw m");
    bk_expect_close(d_v, v, n, TOL_EXACT, "adamw v");
    bk_dev_free(d_p), bk_dev_free(d_m), bk_dev_free(d_v);
    common_free(p), common_free(m), common_free(v);
}

static float *host_dup(const float *x, size_t n) {
    float *c = common_calloc(n, sizeof(float));
    memcpy(c, x, n * sizeof(float));
    return c;
}

// The op table's AdamW: one launch over segments with their own weight decay (an empty one and one shorter than a
// block among them) against adamw_update_cpu per segment, and against the CPU's segmented form: bit-identical.
static void run_adamw_segments(void) {
    AdamwSegments seg = {.n = 5, .end = {300, 300, 301, 70000, 70011}, .decay = {0.1f, 0.5f, 0.0f, 0.1f, 0.0f}};
    size_t n = seg.end[seg.n - 1];
    float *p = bk_host_random(n, 81, 1.0f), *m = bk_host_random(n, 82, 0.01f), *v = bk_host_random(n, 83, 0.01f);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *d_p = bk_dev_from_host(p, n), *d_m = bk_dev_from_host(m, n), *d_v = bk_dev_from_host(v, n);
    float *p2 = host_dup(p, n), *m2 = host_dup(m, n), *v2 = host_dup(v, n);
    float *g = bk_host_random(n, 84, 0.5f), *d_g = bk_dev_from_host(g, n);
    for (int t = 1; t <= 2; t++) {
        size_t lo = 0;
        for (int i = 0; i < seg.n; i++) {
            adamw_update_cpu(p + lo, g + lo, m + lo, v + lo, seg.end[i] - lo, 3e-3f, 0.9f, 0.95f, 1e-8f, seg.decay[i], t);
            lo = seg.end[i];
        }
        adamw_update_segments_cpu(p2, g, m2, v2, &seg, 3e-3f, 0.9f, 0.95f, 1e-8f, t);
        ops_cuda.adamw_update(d_p, d_g, d_m, d_v, &seg, 3e-3f, 0.9f, 0.95f, 1e-8f, t);
    }
    cr_expect(memcmp(p2, p, n * sizeof(float)) == 0, "adamw_update_segments_cpu differs from per-segment updates");
    cr_expect(memcmp(m2, m, n * sizeof(float)) == 0 && memcmp(v2, v, n * sizeof(float)) == 0, "segmented moments");
    bk_expect_close(d_p, p, n, TOL_EXACT, "adamw segments params");
    bk_expect_close(d_m, m, n, TOL_EXACT, "adamw segments m");
    bk_expect_close(d_v, v, n, TOL_EXACT, "adamw segments v");
    float *host[] = {p, m, v, p2, m2, v2, g}, *dev[] = {d_p, d_m, d_v, d_g};
    for (int i = 0; i < 7; i++) common_free(host[i]);
    for (int i = 0; i < 4; i++) bk_dev_free(dev[i]);
}

static void run_grad_norm(void) {
    size_t sizes[] = {1, 255, 100003, 3000017}; // the last needs the capped grid's grid-stride loop
    for (int k = 0; k < 4; k++) {
        size_t n = sizes[k];
        float *g = bk_host_random(n, 60 + k, 0.1f);
        float ref = grad_norm_cpu(g, n);
        float *d_g = bk_dev_from_host(g, n);
        float a = grad_norm_cuda(d_g, n), b = grad_norm_cuda(d_g, n);
        cr_expect(memcmp(&a, &b, sizeof(float)) == 0, "grad_norm n=%zu: two runs differ (%.9g, %.9g)", n, (double)a,
                  (double)b);
        // double accumulation: at most a float rounding from the CPU's value
        cr_expect(fabs((double)a - ref) <= 2e-7 * ref, "grad_norm n=%zu: cuda %.9g, cpu %.9g", n, (double)a,
                  (double)ref);
        bk_check_guard(d_g, n, "grad_norm grads");
        bk_dev_free(d_g);
        common_free(g);
    }
    cr_expect(grad_norm_cuda(NULL, 0) == 0.0f);
}

static void run_scale(void) {
    size_t n = 3 * 17 * 67;
    float *x = bk_host_random(n, 70, 1.0f);
    float *d_x = bk_dev_from_host(x, n);
    float k = 0.37f;
    scale_cpu(x, n, k);
    scale_cuda(d_x, n, k);
    bk_expect_close(d_x, x, n, TOL_EXACT, "scale x");
    bk_dev_free(d_x);
    common_free(x);
}

// --- determinism: the same backward twice gives the same bits -----------------------------------------------

static void expect_same_bits(const float *d_a, const float *d_b, size_t n, const char *what) {
    float *a = bk_download(d_a, n), *b = bk_download(d_b, n);
    cr_expect(memcmp(a, b, n * sizeof(float)) == 0, "%s: two identical runs differ", what);
    common_free(a), common_free(b);
}

static void run_deterministic(void) {
    int B = 4, T = 200, C = 96, V = 13, N = B * T;
    size_t n = (size_t)N * C;
    int *tok = bk_host_tokens(N, 71, V);
    float *dout = bk_host_random(n, 72, 1.0f), *inp = bk_host_random(n, 73, 1.0f), *w = bk_host_random(C, 74, 1.0f);
    float *rstd = bk_host_random(N, 75, 1.0f), *dwte = bk_host_random((size_t)V * C, 76, 1.0f);
    int *d_tok = bk_dev_ints(tok, N);
    float *d_dout = bk_dev_from_host(dout, n), *d_inp = bk_dev_from_host(inp, n), *d_w = bk_dev_from_host(w, C);
    float *d_rstd = bk_dev_from_host(rstd, N);
    float *d_e1 = bk_dev_from_host(dwte, (size_t)V * C), *d_e2 = bk_dev_from_host(dwte, (size_t)V * C);
    float *d_x1 = bk_dev_from_host(inp, n), *d_x2 = bk_dev_from_host(inp, n);
    float *d_w1 = bk_dev_from_host(w, C), *d_w2 = bk_dev_from_host(w, C);
    encoder_backward_cuda(d_e1, d_dout, d_tok, B, T, C);
    encoder_backward_cuda(d_e2, d_dout, d_tok, B, T, C);
    rmsnorm_backward_cuda(d_x1, d_w1, d_dout, d_inp, d_w, d_rstd, N, C);
    rmsnorm_backward_cuda(d_x2, d_w2, d_dout, d_inp, d_w, d_rstd, N, C);
    expect_same_bits(d_e1, d_e2, (size_t)V * C, "encoder_backward dwte");
    expect_same_bits(d_x1, d_x2, n, "rmsnorm_backward dinp");
    expect_same_bits(d_w1, d_w2, C, "rmsnorm_backward dweight");
    bk_dev_free(d_tok), bk_dev_free(d_dout), bk_dev_free(d_inp), bk_dev_free(d_w), bk_dev_free(d_rstd);
    bk_dev_free(d_e1), bk_dev_free(d_e2), bk_dev_free(d_x1), bk_dev_free(d_x2), bk_dev_free(d_w1), bk_dev_free(d_w2);
    common_free(tok), common_free(dout), common_free(inp), common_free(w), common_free(rstd), common_free(dwte);
}

// mem_upload stages small uploads through a ring of page-locked slots (common/upload.cuh): more uploads in a row than
// there are slots, from one source rewritten between them, land intact (each slot holds its copy until its
// transfer is done), and an upload past the staging size takes the synchronous path. On the emulator a staged transfer reads its slot only when the stream needs it (tests/cuda_emu/emu_host.cpp), so a
// slot rewritten before its transfer ran would show here as on a GPU. The uploads run back to back: nothing between
// them waits for the stream.
static void run_upload_staged(void) {
    enum { K = 3 * DEVICE_STAGE_SLOTS + 1 };
    size_t n = 257, big = DEVICE_STAGE_BYTES / sizeof(float) + 5;
    float *src = common_calloc(big, sizeof(float)), *back = common_calloc(big, sizeof(float));
    float *d[K];
    for (int k = 0; k < K; k++) d[k] = ops_cuda.mem_alloc(n * sizeof(float));
    for (int k = 0; k < K; k++) {
        for (size_t i = 0; i < n; i++) src[i] = (float)(k * 1000 + (int)i);
        ops_cuda.mem_upload(d[k], src, n * sizeof(float));
    }
    memset(src, 0, n * sizeof(float)); // the caller may reuse its source once mem_upload returns
    for (int k = 0; k < K; k++) {
        ops_cuda.mem_download(back, d[k], n * sizeof(float));
        int ok = 1;
        for (size_t i = 0; i < n; i++) ok &= back[i] == (float)(k * 1000 + (int)i);
        cr_expect(ok, "staged upload %d arrived changed", k);
        ops_cuda.mem_free(d[k]);
    }
    for (size_t i = 0; i < big; i++) src[i] = (float)i * 0.5f;
    float *dbig = ops_cuda.mem_alloc(big * sizeof(float));
    ops_cuda.mem_upload(dbig, src, big * sizeof(float));
    ops_cuda.mem_download(back, dbig, big * sizeof(float));
    cr_expect(memcmp(back, src, big * sizeof(float)) == 0, "an upload past the staging size");
    ops_cuda.mem_free(dbig);
    common_free(src);
    common_free(back);
}

// --- the table ----------------------------------------------------------------------------------------------

static void run_ops_table(void) {
    cr_expect_str_eq(ops_cuda.name, "cuda");
    // every field after the name is a function pointer: none may be missing
    const Ops *t = &ops_cuda;
    cr_expect(t->on_device == 1);
    cr_expect(t->mem_alloc && t->mem_free && t->mem_upload && t->mem_download && t->scale && t->grad_norm &&
              t->adamw_update);
    cr_expect(t->encoder_forward && t->encoder_backward && t->rmsnorm_forward && t->rmsnorm_backward &&
              t->matmul_forward && t->matmul_backward && t->rope_forward && t->rope_backward &&
              t->attention_forward && t->attention_backward && t->attention_decode && t->swiglu_forward &&
              t->attention_flash_forward == attention_flash_forward_cuda &&
              t->attention_flash_backward == attention_flash_backward_cuda &&
              t->swiglu_backward && t->residual_forward && t->dropout_apply && t->fill_zero && t->dropout_mask &&
              t->crossentropy_forward && t->crossentropy_fused == crossentropy_fused_forward_backward_cuda);
    cr_expect(t->precision_set == precision_set_cuda && t->matmul_many_forward == matmul_many_forward_cuda &&
              t->matmul_many_backward == matmul_many_backward_cuda, "ops_cuda: the precision and grouped products");
    cr_expect(t->encoder_backward == encoder_backward_cuda && t->rope_backward == rope_backward_cuda &&
              t->crossentropy_fused == crossentropy_fused_forward_backward_cuda && t->grad_norm == grad_norm_cuda,
              "ops_cuda fields out of order");
    // mem_alloc zeroes (ops.h); the round trip through mem_upload / mem_download
    size_t n = 1000 + 3;
    float *zero = common_calloc(n, sizeof(float)), *back = common_calloc(n, sizeof(float));
    float *x = bk_host_random(n, 80, 1.0f);
    float *d = t->mem_alloc(n * sizeof(float));
    t->mem_download(back, d, n * sizeof(float));
    cr_expect(memcmp(back, zero, n * sizeof(float)) == 0, "ops_cuda.mem_alloc did not zero");
    t->mem_upload(d, x, n * sizeof(float));
    t->mem_download(back, d, n * sizeof(float));
    cr_expect(memcmp(back, x, n * sizeof(float)) == 0, "ops_cuda.mem_upload / mem_download round trip");
    t->mem_free(d);
    common_free(zero), common_free(x), common_free(back);
}

#endif // KVLAB_CUDA

#define BACKEND_TEST(name)                                                                                     \
    Test(backend_ops, name) {                                                                                  \
        BACKEND_REQUIRE_CUDA();                                                                                \
        BK_RUN(run_##name);                                                                                    \
    }

BACKEND_TEST(encoder_forward)
BACKEND_TEST(encoder_backward)
BACKEND_TEST(rmsnorm_forward)
BACKEND_TEST(rmsnorm_backward)
BACKEND_TEST(matmul_forward)
BACKEND_TEST(matmul_backward)
BACKEND_TEST(rope_forward)
BACKEND_TEST(rope_backward)
BACKEND_TEST(swiglu_forward)
BACKEND_TEST(swiglu_backward)
BACKEND_TEST(residual_forward)
BACKEND_TEST(dropout)
BACKEND_TEST(fill_zero)
BACKEND_TEST(crossentropy_forward)
BACKEND_TEST(crossentropy_fused)
BACKEND_TEST(adamw)
BACKEND_TEST(adamw_segments)
BACKEND_TEST(grad_norm)
BACKEND_TEST(scale)
BACKEND_TEST(deterministic)
BACKEND_TEST(ops_table)
BACKEND_TEST(upload_staged)
