// Gradient tests, suite `grad`: every op in ops_cpu with a backward is checked against central finite
// differences of L = sum(w * out) for a random projection w (the analytic gradient comes from the backward
// with dout = w), over every input element, and each accumulating backward is checked to add into a
// non-zero gradient buffer. The suite runs single-threaded (see gradutil_one_thread); grad/threads_agree
// (test_grad_threads.c) compares the threaded paths with that. The whole model: test_grad_model.c.
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "../layers/ops.h"
#include "grad_util.h"

// Op-level tolerances: float32 forward, double objective, eps 1e-2 (the ops are smooth; the truncation
// error is O(eps^2) and the rounding noise O(1e-7 / eps)).
#define OP_EPS 1e-2f
#define OP_MAX_TOL 2e-3
#define OP_NORM_TOL 1e-3

TestSuite(grad, .init = gradutil_one_thread);

// --- encoder --------------------------------------------------------------------------------------------

typedef struct {
    float *out, *wte, *w;
    const int *tokens;
    int B, T, C;
} EncCtx;

static double enc_obj(void *p) {
    EncCtx *c = p;
    ops_cpu.encoder_forward(c->out, c->tokens, c->wte, c->B, c->T, c->C);
    return gradutil_dot(c->w, c->out, (size_t)c->B * c->T * c->C);
}

Test(grad, encoder) {
    enum { B = 2, T = 5, C = 6, V = 7 };
    Rng rng;
    rng_init(&rng, 11);
    int tokens[B * T] = {3, 1, 3, 0, 5, 1, 1, 2, 6, 3}; // repeats, and token 4 unused
    float *wte = gradutil_falloc(V * C), *out = gradutil_falloc(B * T * C), *w = gradutil_falloc(B * T * C),
          *dwte = gradutil_falloc(V * C);
    gradutil_fill_normal(wte, V * C, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(w, B * T * C, &rng, 0.0f, 1.0f);
    EncCtx c = {out, wte, w, tokens, B, T, C};
    enc_obj(&c);
    for (int i = 0; i < B * T; i++) cr_assert(memcmp(out + i * C, wte + tokens[i] * C, C * sizeof(float)) == 0);
    ops_cpu.encoder_backward(dwte, w, tokens, B, T, C);
    for (int j = 0; j < C; j++) cr_expect(dwte[4 * C + j] == 0.0f, "an unused token's row got a gradient");
    gradutil_expect_fd("encoder dwte", gradutil_fd_check(wte, dwte, V * C, NULL, 0, enc_obj, &c, OP_EPS), OP_MAX_TOL,
                       OP_NORM_TOL);

    float *pre = gradutil_falloc(V * C), *acc;
    gradutil_fill_normal(pre, V * C, &rng, 0.0f, 1.0f);
    acc = gradutil_dup(pre, V * C);
    ops_cpu.encoder_backward(acc, w, tokens, B, T, C);
    gradutil_expect_accumulated("encoder_backward", acc, pre, dwte, V * C);
    common_free(wte), common_free(out), common_free(w), common_free(dwte), common_free(pre), common_free(acc);
}

// --- rmsnorm --------------------------------------------------------------------------------------------

typedef struct {
    float *out, *rstd, *inp, *weight, *w;
    int N, C;
    float eps;
} NormCtx;

static double norm_obj(void *p) {
    NormCtx *c = p;
    ops_cpu.rmsnorm_forward(c->out, c->rstd, c->inp, c->weight, c->N, c->C, c->eps);
    return gradutil_dot(c->w, c->out, (size_t)c->N * c->C);
}

Test(grad, rmsnorm) {
    enum { N = 5, C = 8 };
    Rng rng;
    rng_init(&rng, 12);
    float *inp = gradutil_falloc(N * C), *weight = gradutil_falloc(C), *out = gradutil_falloc(N * C),
          *rstd = gradutil_falloc(N), *w = gradutil_falloc(N * C);
    float *dinp = gradutil_falloc(N * C), *dweight = gradutil_falloc(C);
    gradutil_fill_normal(inp, N * C, &rng, 0.0f, 1.0f);
    for (int c = 0; c < C; c++) inp[c] *= 0.1f; // one row with a small rms, where eps matters more
    gradutil_fill_normal(weight, C, &rng, 1.0f, 0.3f);
    gradutil_fill_normal(w, N * C, &rng, 0.0f, 1.0f);
    NormCtx c = {out, rstd, inp, weight, w, N, C, 1e-5f};
    norm_obj(&c);
    for (int n = 0; n < N; n++) { // forward against its definition
        double ss = 0.0;
        for (int j = 0; j < C; j++) ss += (double)inp[n * C + j] * inp[n * C + j];
        double r = 1.0 / sqrt(ss / C + 1e-5);
        cr_expect(fabs(rstd[n] - r) <= 1e-5 * r);
        for (int j = 0; j < C; j++)
            cr_expect(fabs(out[n * C + j] - inp[n * C + j] * r * weight[j]) <= 1e-5 * (1.0 + fabs(out[n * C + j])));
    }
    ops_cpu.rmsnorm_backward(dinp, dweight, w, inp, weight, rstd, N, C);
    gradutil_expect_fd("rmsnorm dinp", gradutil_fd_check(inp, dinp, N * C, NULL, 0, norm_obj, &c, 1e-3f), OP_MAX_TOL,
                       OP_NORM_TOL);
    gradutil_expect_fd("rmsnorm dweight", gradutil_fd_check(weight, dweight, C, NULL, 0, norm_obj, &c, OP_EPS),
                       OP_MAX_TOL, OP_NORM_TOL);

    norm_obj(&c); // restore rstd of the unperturbed input
    float *pi = gradutil_falloc(N * C), *pw = gradutil_falloc(C);
    gradutil_fill_normal(pi, N * C, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(pw, C, &rng, 0.0f, 1.0f);
    float *ai = gradutil_dup(pi, N * C), *aw = gradutil_dup(pw, C);
    ops_cpu.rmsnorm_backward(ai, aw, w, inp, weight, rstd, N, C);
    gradutil_expect_accumulated("rmsnorm_backward dinp", ai, pi, dinp, N * C);
    gradutil_expect_accumulated("rmsnorm_backward dweight", aw, pw, dweight, C);
    common_free(inp), common_free(weight), common_free(out), common_free(rstd), common_free(w);
    common_free(dinp), common_free(dweight), common_free(pi), common_free(pw), common_free(ai), common_free(aw);
}

// --- matmul ---------------------------------------------------------------------------------------------

typedef struct {
    float *out, *inp, *weight, *w;
    int N, IN, OUT;
} MatCtx;

static double mat_obj(void *p) {
    MatCtx *c = p;
    ops_cpu.matmul_forward(c->out, c->inp, c->weight, c->N, c->IN, c->OUT);
    return gradutil_dot(c->w, c->out, (size_t)c->N * c->OUT);
}

Test(grad, matmul) {
    enum { N = 5, IN = 7, OUT = 6 };
    Rng rng;
    rng_init(&rng, 13);
    float *inp = gradutil_falloc(N * IN), *weight = gradutil_falloc(OUT * IN), *out = gradutil_falloc(N * OUT),
          *w = gradutil_falloc(N * OUT);
    float *dinp = gradutil_falloc(N * IN), *dweight = gradutil_falloc(OUT * IN);
    gradutil_fill_normal(inp, N * IN, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(weight, OUT * IN, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(w, N * OUT, &rng, 0.0f, 1.0f);
    for (int i = 0; i < N * OUT; i++) out[i] = 1e30f; // forward overwrites
    MatCtx c = {out, inp, weight, w, N, IN, OUT};
    mat_obj(&c);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OUT; o++) {
            double s = gradutil_dot(inp + n * IN, weight + o * IN, IN);
            cr_expect(fabs(out[n * OUT + o] - s) <= 1e-5 * (1.0 + fabs(s)));
        }
    ops_cpu.matmul_backward(dinp, dweight, w, inp, weight, N, IN, OUT);
    gradutil_expect_fd("matmul dinp", gradutil_fd_check(inp, dinp, N * IN, NULL, 0, mat_obj, &c, OP_EPS), OP_MAX_TOL,
                       OP_NORM_TOL);
    gradutil_expect_fd("matmul dweight", gradutil_fd_check(weight, dweight, OUT * IN, NULL, 0, mat_obj, &c, OP_EPS),
                       OP_MAX_TOL, OP_NORM_TOL);

    float *pi = gradutil_falloc(N * IN), *pw = gradutil_falloc(OUT * IN);
    gradutil_fill_normal(pi, N * IN, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(pw, OUT * IN, &rng, 0.0f, 1.0f);
    float *ai = gradutil_dup(pi, N * IN), *aw = gradutil_dup(pw, OUT * IN);
    ops_cpu.matmul_backward(ai, aw, w, inp, weight, N, IN, OUT);
    gradutil_expect_accumulated("matmul_backward dinp", ai, pi, dinp, N * IN);
    gradutil_expect_accumulated("matmul_backward dweight", aw, pw, dweight, OUT * IN);
    // either output may be NULL: the other is still computed (and accumulated)
    float *ai2 = gradutil_dup(pi, N * IN), *aw2 = gradutil_dup(pw, OUT * IN);
    ops_cpu.matmul_backward(ai2, NULL, w, inp, weight, N, IN, OUT);
    ops_cpu.matmul_backward(NULL, aw2, w, inp, weight, N, IN, OUT);
    cr_expect(memcmp(ai2, ai, N * IN * sizeof(float)) == 0, "matmul_backward with dweight NULL differs");
    cr_expect(memcmp(aw2, aw, OUT * IN * sizeof(float)) == 0, "matmul_backward with dinp NULL differs");
    common_free(inp), common_free(weight), common_free(out), common_free(w), common_free(dinp);
    common_free(dweight), common_free(pi), common_free(pw), common_free(ai), common_free(aw);
    common_free(ai2), common_free(aw2);
}

// --- rope -----------------------------------------------------------------------------------------------

typedef struct {
    float *x, *y, *w;
    int B, T, NH, HD, pos0;
    float theta;
} RopeCtx;

static double rope_obj(void *p) {
    RopeCtx *c = p;
    size_t n = (size_t)c->B * c->T * c->NH * c->HD;
    memcpy(c->y, c->x, n * sizeof(float));
    ops_cpu.rope_forward(c->y, c->B, c->T, c->NH, c->HD, c->pos0, c->theta);
    return gradutil_dot(c->w, c->y, n);
}

Test(grad, rope) {
    enum { B = 2, T = 5, NH = 3, HD = 6, N = B * T * NH * HD };
    Rng rng;
    rng_init(&rng, 14);
    float *x = gradutil_falloc(N), *y = gradutil_falloc(N), *w = gradutil_falloc(N), *dx = gradutil_falloc(N);
    gradutil_fill_normal(x, N, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(w, N, &rng, 0.0f, 1.0f);
    for (int pos0 = 0; pos0 <= 3; pos0 += 3) {
        RopeCtx c = {x, y, w, B, T, NH, HD, pos0, 10000.0f};
        memcpy(dx, w, N * sizeof(float));
        ops_cpu.rope_backward(dx, B, T, NH, HD, pos0, 10000.0f);
        gradutil_expect_fd(pos0 ? "rope dx (pos0 3)" : "rope dx (pos0 0)",
                           gradutil_fd_check(x, dx, N, NULL, 0, rope_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);

        // orthogonal: backward(forward(x)) == x, and every pair keeps its length
        memcpy(y, x, N * sizeof(float));
        ops_cpu.rope_forward(y, B, T, NH, HD, pos0, 10000.0f);
        for (int i = 0; i < N; i += 2) {
            double l0 = hypot(x[i], x[i + 1]), l1 = hypot(y[i], y[i + 1]);
            cr_expect(fabs(l0 - l1) <= 1e-5 * (1.0 + l0), "rope changed a pair's length");
        }
        ops_cpu.rope_backward(y, B, T, NH, HD, pos0, 10000.0f);
        double worst = 0.0;
        for (int i = 0; i < N; i++) worst = fmax(worst, fabs(y[i] - x[i]));
        cr_log_info("rope backward(forward(x)) - x      max abs %.2e (pos0 %d)", worst, pos0);
        cr_expect(worst <= 1e-5, "rope backward(forward(x)) differs from x by %.3e", worst);
    }
    // token 0 at pos0 0 is not rotated
    memcpy(y, x, N * sizeof(float));
    ops_cpu.rope_forward(y, 1, 1, NH, HD, 0, 10000.0f);
    cr_expect(memcmp(y, x, NH * HD * sizeof(float)) == 0, "rope at position 0 is not the identity");

    // relative: <rope(q, p), rope(k, s)> depends on p - s only
    float q[HD], k[HD], q1[HD], k1[HD], q2[HD], k2[HD];
    gradutil_fill_normal(q, HD, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(k, HD, &rng, 0.0f, 1.0f);
    memcpy(q1, q, sizeof q), memcpy(k1, k, sizeof k), memcpy(q2, q, sizeof q), memcpy(k2, k, sizeof k);
    ops_cpu.rope_forward(q1, 1, 1, 1, HD, 7, 10000.0f);
    ops_cpu.rope_forward(k1, 1, 1, 1, HD, 3, 10000.0f);
    ops_cpu.rope_forward(q2, 1, 1, 1, HD, 107, 10000.0f);
    ops_cpu.rope_forward(k2, 1, 1, 1, HD, 103, 10000.0f);
    double d1 = gradutil_dot(q1, k1, HD), d2 = gradutil_dot(q2, k2, HD);
    cr_expect(fabs(d1 - d2) <= 1e-4 * (1.0 + fabs(d1)), "rope scores are not relative: %g vs %g", d1, d2);
    common_free(x), common_free(y), common_free(w), common_free(dx);
}

// --- attention ------------------------------------------------------------------------------------------

typedef struct {
    float *out, *att, *q, *k, *v, *w;
    int B, T, NH, NKV, HD;
} AttCtx;

static double att_obj(void *p) {
    AttCtx *c = p;
    ops_cpu.attention_forward(c->out, c->att, c->q, c->k, c->v, c->B, c->T, c->NH, c->NKV, c->HD);
    return gradutil_dot(c->w, c->out, (size_t)c->B * c->T * c->NH * c->HD);
}

// Direct double-precision causal attention, query head h on kv head h / (NH / NKV).
static void att_reference(double *out, const float *q, const float *k, const float *v, int B, int T, int NH,
                          int NKV, int HD) {
    int rep = NH / NKV;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
                double s[64], mx = -1e300, sum = 0.0;
                for (int u = 0; u <= t; u++) {
                    s[u] = gradutil_dot(qt, k + (((size_t)b * T + u) * NKV + h / rep) * HD, HD) / sqrt((double)HD);
                    mx = fmax(mx, s[u]);
                }
                for (int u = 0; u <= t; u++) sum += (s[u] = exp(s[u] - mx));
                double *o = out + (((size_t)b * T + t) * NH + h) * HD;
                for (int d = 0; d < HD; d++) {
                    o[d] = 0.0;
                    for (int u = 0; u <= t; u++) o[d] += s[u] / sum * v[(((size_t)b * T + u) * NKV + h / rep) * HD + d];
                }
            }
}

static void attention_case(int B, int T, int NH, int NKV, int HD, uint64_t seed) {
    size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, natt = (size_t)B * NH * T * T;
    Rng rng;
    rng_init(&rng, seed);
    float *q = gradutil_falloc(nq), *k = gradutil_falloc(nk), *v = gradutil_falloc(nk), *out = gradutil_falloc(nq),
          *w = gradutil_falloc(nq);
    float *att = gradutil_falloc(natt), *scratch = gradutil_falloc(natt), *dq = gradutil_falloc(nq),
          *dk = gradutil_falloc(nk), *dv = gradutil_falloc(nk);
    gradutil_fill_normal(q, nq, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(k, nk, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(v, nk, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(w, nq, &rng, 0.0f, 1.0f);
    AttCtx c = {out, att, q, k, v, w, B, T, NH, NKV, HD};
    att_obj(&c);

    double *ref = common_calloc(nq, sizeof(double)), worst = 0.0;
    att_reference(ref, q, k, v, B, T, NH, NKV, HD);
    for (size_t i = 0; i < nq; i++) worst = fmax(worst, fabs(out[i] - ref[i]));
    cr_expect(worst <= 1e-5, "attention forward (NH %d NKV %d) differs from the reference by %.3e", NH, NKV, worst);
    for (int bh = 0; bh < B * NH; bh++) // causal softmax rows: sum to one, zero above the diagonal
        for (int t = 0; t < T; t++) {
            const float *row = att + ((size_t)bh * T + t) * T;
            double s = 0.0;
            for (int u = 0; u < T; u++) s += row[u];
            cr_expect(fabs(s - 1.0) <= 1e-5);
            for (int u = t + 1; u < T; u++) cr_expect(row[u] == 0.0f, "attention is not causal");
        }

    for (size_t i = 0; i < natt; i++) scratch[i] = 1e30f; // scratch is clobbered, its contents must not matter
    ops_cpu.attention_backward(dq, dk, dv, scratch, w, att, q, k, v, B, T, NH, NKV, HD);
    char name[64];
    snprintf(name, sizeof name, "attention NH %d NKV %d dq", NH, NKV);
    gradutil_expect_fd(name, gradutil_fd_check(q, dq, nq, NULL, 0, att_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    snprintf(name, sizeof name, "attention NH %d NKV %d dk", NH, NKV);
    gradutil_expect_fd(name, gradutil_fd_check(k, dk, nk, NULL, 0, att_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    snprintf(name, sizeof name, "attention NH %d NKV %d dv", NH, NKV);
    gradutil_expect_fd(name, gradutil_fd_check(v, dv, nk, NULL, 0, att_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);

    att_obj(&c); // att of the unperturbed inputs
    float *pq = gradutil_falloc(nq), *pk = gradutil_falloc(nk), *pv = gradutil_falloc(nk);
    gradutil_fill_normal(pq, nq, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(pk, nk, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(pv, nk, &rng, 0.0f, 1.0f);
    float *aq = gradutil_dup(pq, nq), *ak = gradutil_dup(pk, nk), *av = gradutil_dup(pv, nk);
    ops_cpu.attention_backward(aq, ak, av, scratch, w, att, q, k, v, B, T, NH, NKV, HD);
    gradutil_expect_accumulated("attention_backward dq", aq, pq, dq, nq);
    gradutil_expect_accumulated("attention_backward dk", ak, pk, dk, nk);
    gradutil_expect_accumulated("attention_backward dv", av, pv, dv, nk);

    common_free(q), common_free(k), common_free(v), common_free(out), common_free(w), common_free(att);
    common_free(scratch), common_free(dq), common_free(dk), common_free(dv), common_free(ref);
    common_free(pq), common_free(pk), common_free(pv), common_free(aq), common_free(ak), common_free(av);
}

Test(grad, attention_mha) { attention_case(2, 5, 4, 4, 6, 21); }
Test(grad, attention_gqa) { attention_case(2, 5, 4, 2, 6, 22); }
Test(grad, attention_gqa_rep3) { attention_case(2, 5, 6, 2, 4, 23); }
Test(grad, attention_mqa) { attention_case(2, 5, 4, 1, 6, 24); }
Test(grad, attention_single_token) { attention_case(3, 1, 4, 2, 6, 25); }
// T past one causal block of attention.c (32 query rows): a full block and a partial one, and two full blocks
Test(grad, attention_causal_blocks) { attention_case(2, 37, 4, 2, 6, 26); }
Test(grad, attention_causal_blocks_exact_multiple) { attention_case(1, 64, 2, 1, 4, 27); }

// --- swiglu ---------------------------------------------------------------------------------------------

typedef struct {
    float *out, *a, *b, *w;
    size_t N;
} GluCtx;

static double glu_obj(void *p) {
    GluCtx *c = p;
    ops_cpu.swiglu_forward(c->out, c->a, c->b, c->N);
    return gradutil_dot(c->w, c->out, c->N);
}

Test(grad, swiglu) {
    enum { N = 37 };
    Rng rng;
    rng_init(&rng, 15);
    float *a = gradutil_falloc(N), *b = gradutil_falloc(N), *out = gradutil_falloc(N), *w = gradutil_falloc(N),
          *da = gradutil_falloc(N), *db = gradutil_falloc(N);
    gradutil_fill_normal(a, N, &rng, 0.0f, 2.5f);
    gradutil_fill_normal(b, N, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(w, N, &rng, 0.0f, 1.0f);
    GluCtx c = {out, a, b, w, N};
    glu_obj(&c);
    for (int i = 0; i < N; i++) {
        double want = a[i] / (1.0 + exp(-(double)a[i])) * b[i];
        cr_expect(fabs(out[i] - want) <= 1e-5 * (1.0 + fabs(want)));
    }
    ops_cpu.swiglu_backward(da, db, w, a, b, N);
    gradutil_expect_fd("swiglu da", gradutil_fd_check(a, da, N, NULL, 0, glu_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    gradutil_expect_fd("swiglu db", gradutil_fd_check(b, db, N, NULL, 0, glu_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);

    float *pa = gradutil_falloc(N), *pb = gradutil_falloc(N);
    gradutil_fill_normal(pa, N, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(pb, N, &rng, 0.0f, 1.0f);
    float *aa = gradutil_dup(pa, N), *ab = gradutil_dup(pb, N);
    ops_cpu.swiglu_backward(aa, ab, w, a, b, N);
    gradutil_expect_accumulated("swiglu_backward da", aa, pa, da, N);
    gradutil_expect_accumulated("swiglu_backward db", ab, pb, db, N);
    common_free(a), common_free(b), common_free(out), common_free(w), common_free(da), common_free(db);
    common_free(pa), common_free(pb), common_free(aa), common_free(ab);
}

// --- crossentropy ---------------------------------------------------------------------------------------

typedef struct {
    float *losses, *probs, *logits;
    const int *targets;
    int N, V;
    float dloss;
} CeCtx;

static double ce_obj(void *p) {
    CeCtx *c = p;
    ops_cpu.crossentropy_forward(c->losses, c->probs, c->logits, c->targets, c->N, c->V);
    double s = 0.0;
    for (int n = 0; n < c->N; n++) s += c->losses[n];
    return c->dloss * s;
}

Test(grad, crossentropy) {
    enum { N = 5, V = 7 };
    Rng rng;
    rng_init(&rng, 16);
    int targets[N] = {0, 6, 3, 3, 2};
    float *logits = gradutil_falloc(N * V), *probs = gradutil_falloc(N * V), *losses = gradutil_falloc(N),
          *dlogits = gradutil_falloc(N * V);
    gradutil_fill_normal(logits, N * V, &rng, 0.0f, 2.0f);
    CeCtx c = {losses, probs, logits, targets, N, V, 0.37f};
    ce_obj(&c);
    for (int n = 0; n < N; n++) {
        double mx = -1e300, s = 0.0, ps = 0.0;
        for (int i = 0; i < V; i++) mx = fmax(mx, logits[n * V + i]);
        for (int i = 0; i < V; i++) s += exp(logits[n * V + i] - mx);
        double want = -(logits[n * V + targets[n]] - mx - log(s));
        cr_expect(fabs(losses[n] - want) <= 1e-5 * (1.0 + want));
        for (int i = 0; i < V; i++) ps += probs[n * V + i];
        cr_expect(fabs(ps - 1.0) <= 1e-5);
    }
    for (int i = 0; i < N * V; i++) dlogits[i] = 1e30f; // the fused pass overwrites
    float *fused_losses = gradutil_falloc(N);
    ops_cpu.crossentropy_fused(fused_losses, dlogits, logits, targets, 0.37f, N, V);
    cr_expect(memcmp(fused_losses, losses, N * sizeof(float)) == 0, "the fused pass's losses are the forward's");
    gradutil_expect_fd("crossentropy dlogits", gradutil_fd_check(logits, dlogits, N * V, NULL, 0, ce_obj, &c, OP_EPS),
                       OP_MAX_TOL, OP_NORM_TOL);
    // in place (the logits become their gradient): the same bits
    float *inplace = gradutil_dup(logits, N * V);
    ops_cpu.crossentropy_fused(NULL, inplace, inplace, targets, 0.37f, N, V);
    cr_expect(memcmp(inplace, dlogits, (size_t)N * V * sizeof(float)) == 0, "in place differs");
    common_free(inplace);
    common_free(fused_losses);

    // a vanishing target probability still gives a finite loss (computed from the logits, not log(p))
    float big[3] = {0.0f, 200.0f, -200.0f}, p3[3], l1;
    int t1 = 2;
    ops_cpu.crossentropy_forward(&l1, p3, big, &t1, 1, 3);
    cr_expect(isfinite(l1) && fabsf(l1 - 400.0f) <= 1e-3f, "loss %g for a logit gap of 400", l1);
    common_free(logits), common_free(probs), common_free(losses), common_free(dlogits);
}

// --- residual + dropout ---------------------------------------------------------------------------------

typedef struct {
    float *out, *a, *b, *keep, *w;
    size_t N;
} ResCtx;

static double res_obj(void *p) {
    ResCtx *c = p;
    ops_cpu.residual_forward(c->out, c->a, c->b, c->keep, c->N);
    return gradutil_dot(c->w, c->out, c->N);
}

Test(grad, residual_dropout) {
    enum { N = 50 };
    const float p = 0.3f;
    Rng rng;
    rng_init(&rng, 17);
    float *a = gradutil_falloc(N), *b = gradutil_falloc(N), *keep = gradutil_falloc(N), *out = gradutil_falloc(N),
          *w = gradutil_falloc(N), *db = gradutil_falloc(N);
    gradutil_fill_normal(a, N, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(b, N, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(w, N, &rng, 0.0f, 1.0f);
    ops_cpu.dropout_mask(keep, N, p, &rng);
    int zeros = 0;
    for (int i = 0; i < N; i++) {
        cr_expect(keep[i] == 0.0f || keep[i] == 1.0f / (1.0f - p), "mask value %g", keep[i]);
        zeros += keep[i] == 0.0f;
    }
    cr_expect(zeros > 0 && zeros < N, "a mask of %d elements with p %g dropped %d", N, p, zeros);

    // with a fixed mask: out = a + b * keep, so da = dout and db = dropout_apply(dout, keep)
    ResCtx c = {out, a, b, keep, w, N};
    res_obj(&c);
    for (int i = 0; i < N; i++) cr_expect(out[i] == a[i] + b[i] * keep[i]);
    ops_cpu.dropout_apply(db, w, keep, N);
    gradutil_expect_fd("residual da (identity)", gradutil_fd_check(a, w, N, NULL, 0, res_obj, &c, OP_EPS), OP_MAX_TOL,
                       OP_NORM_TOL);
    gradutil_expect_fd("residual+dropout db", gradutil_fd_check(b, db, N, NULL, 0, res_obj, &c, OP_EPS), OP_MAX_TOL,
                       OP_NORM_TOL);
    // no scale means scale one
    ResCtx c1 = {out, a, b, NULL, w, N};
    res_obj(&c1);
    for (int i = 0; i < N; i++) cr_expect(out[i] == a[i] + b[i]);

    // the mask drops about p of a large tensor, and the same RNG state draws the same mask
    enum { M = 20000 };
    float *big = gradutil_falloc(M), *big2 = gradutil_falloc(M);
    Rng r1, r2;
    rng_init(&r1, 5);
    r2 = r1;
    ops_cpu.dropout_mask(big, M, p, &r1);
    ops_cpu.dropout_mask(big2, M, p, &r2);
    cr_expect(memcmp(big, big2, M * sizeof(float)) == 0);
    cr_expect(r1.state == r2.state);
    zeros = 0;
    for (int i = 0; i < M; i++) zeros += big[i] == 0.0f;
    cr_expect(fabs((double)zeros / M - p) < 0.02, "dropped fraction %g for p %g", (double)zeros / M, p);
    ops_cpu.fill_zero(big, M);
    for (int i = 0; i < M; i++) cr_expect(big[i] == 0.0f);
    common_free(a), common_free(b), common_free(keep), common_free(out), common_free(w), common_free(db);
    common_free(big), common_free(big2);
}
