// Gradient tests. Suite `grad`: every op in ops_cpu with a backward is checked against central finite
// differences of L = sum(w * out) for a random projection w (the analytic gradient comes from the backward
// with dout = w), over every input element, and each accumulating backward is checked to add into a
// non-zero gradient buffer. Suite `model`: finite differences of the whole model's mean loss (MHA, GQA,
// MQA, and with dropout under a fixed mask), GQA/MHA equivalences, the MHA -> GQA conversion, overfitting
// one batch with AdamW, and dropout's train/eval behaviour. Both suites run single-threaded (see one_thread);
// grad/threads_agree compares the threaded paths with that.
#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../layers/model.h"
#include "../layers/ops.h"
#include "../train/trainer.h"

// --- helpers --------------------------------------------------------------------------------------------

static float *falloc(size_t n) { return common_calloc(n, sizeof(float)); }

static void fill_normal(float *x, size_t n, Rng *rng, float mean, float std) {
    for (size_t i = 0; i < n; i++) x[i] = mean + std * rng_normal(rng);
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

typedef double (*Objective)(void *ctx);

typedef struct {
    double max_err;  // max over the checked elements of |a - n| / max(1, |n|)
    double norm_err; // ||a - n|| / max(||a||, ||n||) over the checked elements
    size_t worst;    // element with the largest max_err
    double worst_analytic, worst_numeric;
    size_t count;
    double max_grad; // largest |numeric gradient| checked
} FdResult;

// Central differences of f with respect to x[idx[k]] (every element when idx is NULL), compared with the
// analytic gradient grad (same layout as x). The step actually taken is (x+eps) - (x-eps) as floats.
static FdResult fd_check(float *x, const float *grad, size_t n, const size_t *idx, size_t nidx, Objective f,
                         void *ctx, float eps) {
    FdResult r = {0};
    double diff2 = 0.0, num2 = 0.0, ana2 = 0.0;
    size_t count = idx ? nidx : n;
    for (size_t k = 0; k < count; k++) {
        size_t i = idx ? idx[k] : k;
        float x0 = x[i], xp = x0 + eps, xm = x0 - eps;
        x[i] = xp;
        double fp = f(ctx);
        x[i] = xm;
        double fm = f(ctx);
        x[i] = x0;
        double num = (fp - fm) / ((double)xp - (double)xm), ana = grad[i];
        double err = fabs(ana - num) / fmax(1.0, fabs(num));
        if (err > r.max_err || k == 0) {
            r.max_err = err;
            r.worst = i;
            r.worst_analytic = ana;
            r.worst_numeric = num;
        }
        r.max_grad = fmax(r.max_grad, fabs(num));
        diff2 += (ana - num) * (ana - num);
        num2 += num * num;
        ana2 += ana * ana;
    }
    double den = sqrt(fmax(num2, ana2));
    r.norm_err = den > 0.0 ? sqrt(diff2) / den : sqrt(diff2);
    r.count = count;
    return r;
}

static void expect_fd(const char *what, FdResult r, double max_tol, double norm_tol) {
    cr_log_info("%-34s %4zu elems  max err %.2e  normalized err %.2e  (largest |grad| %.2e)", what, r.count,
                r.max_err, r.norm_err, r.max_grad);
    cr_expect(r.max_err <= max_tol, "%s: element %zu analytic %.6g numeric %.6g (err %.3e > %.1e)", what, r.worst,
              r.worst_analytic, r.worst_numeric, r.max_err, max_tol);
    cr_expect(r.norm_err <= norm_tol, "%s: normalized gradient error %.3e > %.1e", what, r.norm_err, norm_tol);
}

// Op-level tolerances: float32 forward, double objective, eps 1e-2 (the ops are smooth; the truncation
// error is O(eps^2) and the rounding noise O(1e-7 / eps)).
#define OP_EPS 1e-2f
#define OP_MAX_TOL 2e-3
#define OP_NORM_TOL 1e-3

// A backward run a second time on a buffer holding `prefill` must leave prefill + (first result).
static void expect_accumulated(const char *what, const float *after, const float *prefill, const float *once,
                               size_t n) {
    for (size_t i = 0; i < n; i++) {
        double want = (double)prefill[i] + once[i];
        if (fabs(after[i] - want) > 1e-6 + 1e-5 * (fabs(prefill[i]) + fabs(once[i]))) {
            cr_expect(0, "%s does not accumulate: element %zu is %.8g, prefill %.8g + gradient %.8g = %.8g", what,
                      i, after[i], prefill[i], once[i], want);
            return;
        }
    }
}

// A fresh copy of x.
static float *dup(const float *x, size_t n) {
    float *y = falloc(n);
    memcpy(y, x, n * sizeof(float));
    return y;
}

// The finite-difference checks run thousands of tiny OpenMP regions. Criterion runs tests in parallel
// processes, and with more OpenMP threads than free cores every barrier can wait a scheduler time slice
// (measured with build/tests run directly, where ninja test's OMP_WAIT_POLICY=passive is not set: the model
// suite 0.2 s alone, 2 minutes beside another test process). So these suites run on one thread, and
// grad/threads_agree checks the threaded paths against it.
static void one_thread(void) { omp_set_num_threads(1); }

TestSuite(grad, .init = one_thread);
TestSuite(model, .init = one_thread);

// --- encoder --------------------------------------------------------------------------------------------

typedef struct {
    float *out, *wte, *w;
    const int *tokens;
    int B, T, C;
} EncCtx;

static double enc_obj(void *p) {
    EncCtx *c = p;
    ops_cpu.encoder_forward(c->out, c->tokens, c->wte, c->B, c->T, c->C);
    return dot(c->w, c->out, (size_t)c->B * c->T * c->C);
}

Test(grad, encoder) {
    enum { B = 2, T = 5, C = 6, V = 7 };
    Rng rng;
    rng_init(&rng, 11);
    int tokens[B * T] = {3, 1, 3, 0, 5, 1, 1, 2, 6, 3}; // repeats, and token 4 unused
    float *wte = falloc(V * C), *out = falloc(B * T * C), *w = falloc(B * T * C), *dwte = falloc(V * C);
    fill_normal(wte, V * C, &rng, 0.0f, 1.0f);
    fill_normal(w, B * T * C, &rng, 0.0f, 1.0f);
    EncCtx c = {out, wte, w, tokens, B, T, C};
    enc_obj(&c);
    for (int i = 0; i < B * T; i++) cr_assert(memcmp(out + i * C, wte + tokens[i] * C, C * sizeof(float)) == 0);
    ops_cpu.encoder_backward(dwte, w, tokens, B, T, C);
    for (int j = 0; j < C; j++) cr_expect(dwte[4 * C + j] == 0.0f, "an unused token's row got a gradient");
    expect_fd("encoder dwte", fd_check(wte, dwte, V * C, NULL, 0, enc_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);

    float *pre = falloc(V * C), *acc;
    fill_normal(pre, V * C, &rng, 0.0f, 1.0f);
    acc = dup(pre, V * C);
    ops_cpu.encoder_backward(acc, w, tokens, B, T, C);
    expect_accumulated("encoder_backward", acc, pre, dwte, V * C);
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
    return dot(c->w, c->out, (size_t)c->N * c->C);
}

Test(grad, rmsnorm) {
    enum { N = 5, C = 8 };
    Rng rng;
    rng_init(&rng, 12);
    float *inp = falloc(N * C), *weight = falloc(C), *out = falloc(N * C), *rstd = falloc(N), *w = falloc(N * C);
    float *dinp = falloc(N * C), *dweight = falloc(C);
    fill_normal(inp, N * C, &rng, 0.0f, 1.0f);
    for (int c = 0; c < C; c++) inp[c] *= 0.1f; // one row with a small rms, where eps matters more
    fill_normal(weight, C, &rng, 1.0f, 0.3f);
    fill_normal(w, N * C, &rng, 0.0f, 1.0f);
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
    expect_fd("rmsnorm dinp", fd_check(inp, dinp, N * C, NULL, 0, norm_obj, &c, 1e-3f), OP_MAX_TOL, OP_NORM_TOL);
    expect_fd("rmsnorm dweight", fd_check(weight, dweight, C, NULL, 0, norm_obj, &c, OP_EPS), OP_MAX_TOL,
              OP_NORM_TOL);

    norm_obj(&c); // restore rstd of the unperturbed input
    float *pi = falloc(N * C), *pw = falloc(C);
    fill_normal(pi, N * C, &rng, 0.0f, 1.0f);
    fill_normal(pw, C, &rng, 0.0f, 1.0f);
    float *ai = dup(pi, N * C), *aw = dup(pw, C);
    ops_cpu.rmsnorm_backward(ai, aw, w, inp, weight, rstd, N, C);
    expect_accumulated("rmsnorm_backward dinp", ai, pi, dinp, N * C);
    expect_accumulated("rmsnorm_backward dweight", aw, pw, dweight, C);
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
    return dot(c->w, c->out, (size_t)c->N * c->OUT);
}

Test(grad, matmul) {
    enum { N = 5, IN = 7, OUT = 6 };
    Rng rng;
    rng_init(&rng, 13);
    float *inp = falloc(N * IN), *weight = falloc(OUT * IN), *out = falloc(N * OUT), *w = falloc(N * OUT);
    float *dinp = falloc(N * IN), *dweight = falloc(OUT * IN);
    fill_normal(inp, N * IN, &rng, 0.0f, 1.0f);
    fill_normal(weight, OUT * IN, &rng, 0.0f, 1.0f);
    fill_normal(w, N * OUT, &rng, 0.0f, 1.0f);
    for (int i = 0; i < N * OUT; i++) out[i] = 1e30f; // forward overwrites
    MatCtx c = {out, inp, weight, w, N, IN, OUT};
    mat_obj(&c);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OUT; o++) {
            double s = dot(inp + n * IN, weight + o * IN, IN);
            cr_expect(fabs(out[n * OUT + o] - s) <= 1e-5 * (1.0 + fabs(s)));
        }
    ops_cpu.matmul_backward(dinp, dweight, w, inp, weight, N, IN, OUT);
    expect_fd("matmul dinp", fd_check(inp, dinp, N * IN, NULL, 0, mat_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    expect_fd("matmul dweight", fd_check(weight, dweight, OUT * IN, NULL, 0, mat_obj, &c, OP_EPS), OP_MAX_TOL,
              OP_NORM_TOL);

    float *pi = falloc(N * IN), *pw = falloc(OUT * IN);
    fill_normal(pi, N * IN, &rng, 0.0f, 1.0f);
    fill_normal(pw, OUT * IN, &rng, 0.0f, 1.0f);
    float *ai = dup(pi, N * IN), *aw = dup(pw, OUT * IN);
    ops_cpu.matmul_backward(ai, aw, w, inp, weight, N, IN, OUT);
    expect_accumulated("matmul_backward dinp", ai, pi, dinp, N * IN);
    expect_accumulated("matmul_backward dweight", aw, pw, dweight, OUT * IN);
    // either output may be NULL: the other is still computed (and accumulated)
    float *ai2 = dup(pi, N * IN), *aw2 = dup(pw, OUT * IN);
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
    return dot(c->w, c->y, n);
}

Test(grad, rope) {
    enum { B = 2, T = 5, NH = 3, HD = 6, N = B * T * NH * HD };
    Rng rng;
    rng_init(&rng, 14);
    float *x = falloc(N), *y = falloc(N), *w = falloc(N), *dx = falloc(N);
    fill_normal(x, N, &rng, 0.0f, 1.0f);
    fill_normal(w, N, &rng, 0.0f, 1.0f);
    for (int pos0 = 0; pos0 <= 3; pos0 += 3) {
        RopeCtx c = {x, y, w, B, T, NH, HD, pos0, 10000.0f};
        memcpy(dx, w, N * sizeof(float));
        ops_cpu.rope_backward(dx, B, T, NH, HD, pos0, 10000.0f);
        expect_fd(pos0 ? "rope dx (pos0 3)" : "rope dx (pos0 0)", fd_check(x, dx, N, NULL, 0, rope_obj, &c, OP_EPS),
                  OP_MAX_TOL, OP_NORM_TOL);

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
    fill_normal(q, HD, &rng, 0.0f, 1.0f);
    fill_normal(k, HD, &rng, 0.0f, 1.0f);
    memcpy(q1, q, sizeof q), memcpy(k1, k, sizeof k), memcpy(q2, q, sizeof q), memcpy(k2, k, sizeof k);
    ops_cpu.rope_forward(q1, 1, 1, 1, HD, 7, 10000.0f);
    ops_cpu.rope_forward(k1, 1, 1, 1, HD, 3, 10000.0f);
    ops_cpu.rope_forward(q2, 1, 1, 1, HD, 107, 10000.0f);
    ops_cpu.rope_forward(k2, 1, 1, 1, HD, 103, 10000.0f);
    double d1 = dot(q1, k1, HD), d2 = dot(q2, k2, HD);
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
    return dot(c->w, c->out, (size_t)c->B * c->T * c->NH * c->HD);
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
                    s[u] = dot(qt, k + (((size_t)b * T + u) * NKV + h / rep) * HD, HD) / sqrt((double)HD);
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
    float *q = falloc(nq), *k = falloc(nk), *v = falloc(nk), *out = falloc(nq), *w = falloc(nq);
    float *att = falloc(natt), *scratch = falloc(natt), *dq = falloc(nq), *dk = falloc(nk), *dv = falloc(nk);
    fill_normal(q, nq, &rng, 0.0f, 1.0f);
    fill_normal(k, nk, &rng, 0.0f, 1.0f);
    fill_normal(v, nk, &rng, 0.0f, 1.0f);
    fill_normal(w, nq, &rng, 0.0f, 1.0f);
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
    expect_fd(name, fd_check(q, dq, nq, NULL, 0, att_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    snprintf(name, sizeof name, "attention NH %d NKV %d dk", NH, NKV);
    expect_fd(name, fd_check(k, dk, nk, NULL, 0, att_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    snprintf(name, sizeof name, "attention NH %d NKV %d dv", NH, NKV);
    expect_fd(name, fd_check(v, dv, nk, NULL, 0, att_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);

    att_obj(&c); // att of the unperturbed inputs
    float *pq = falloc(nq), *pk = falloc(nk), *pv = falloc(nk);
    fill_normal(pq, nq, &rng, 0.0f, 1.0f);
    fill_normal(pk, nk, &rng, 0.0f, 1.0f);
    fill_normal(pv, nk, &rng, 0.0f, 1.0f);
    float *aq = dup(pq, nq), *ak = dup(pk, nk), *av = dup(pv, nk);
    ops_cpu.attention_backward(aq, ak, av, scratch, w, att, q, k, v, B, T, NH, NKV, HD);
    expect_accumulated("attention_backward dq", aq, pq, dq, nq);
    expect_accumulated("attention_backward dk", ak, pk, dk, nk);
    expect_accumulated("attention_backward dv", av, pv, dv, nk);

    common_free(q), common_free(k), common_free(v), common_free(out), common_free(w), common_free(att);
    common_free(scratch), common_free(dq), common_free(dk), common_free(dv), common_free(ref);
    common_free(pq), common_free(pk), common_free(pv), common_free(aq), common_free(ak), common_free(av);
}

Test(grad, attention_mha) { attention_case(2, 5, 4, 4, 6, 21); }
Test(grad, attention_gqa) { attention_case(2, 5, 4, 2, 6, 22); }
Test(grad, attention_gqa_rep3) { attention_case(2, 5, 6, 2, 4, 23); }
Test(grad, attention_mqa) { attention_case(2, 5, 4, 1, 6, 24); }
Test(grad, attention_single_token) { attention_case(3, 1, 4, 2, 6, 25); }

// --- swiglu ---------------------------------------------------------------------------------------------

typedef struct {
    float *out, *a, *b, *w;
    size_t N;
} GluCtx;

static double glu_obj(void *p) {
    GluCtx *c = p;
    ops_cpu.swiglu_forward(c->out, c->a, c->b, c->N);
    return dot(c->w, c->out, c->N);
}

Test(grad, swiglu) {
    enum { N = 37 };
    Rng rng;
    rng_init(&rng, 15);
    float *a = falloc(N), *b = falloc(N), *out = falloc(N), *w = falloc(N), *da = falloc(N), *db = falloc(N);
    fill_normal(a, N, &rng, 0.0f, 2.5f);
    fill_normal(b, N, &rng, 0.0f, 1.0f);
    fill_normal(w, N, &rng, 0.0f, 1.0f);
    GluCtx c = {out, a, b, w, N};
    glu_obj(&c);
    for (int i = 0; i < N; i++) {
        double want = a[i] / (1.0 + exp(-(double)a[i])) * b[i];
        cr_expect(fabs(out[i] - want) <= 1e-5 * (1.0 + fabs(want)));
    }
    ops_cpu.swiglu_backward(da, db, w, a, b, N);
    expect_fd("swiglu da", fd_check(a, da, N, NULL, 0, glu_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    expect_fd("swiglu db", fd_check(b, db, N, NULL, 0, glu_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);

    float *pa = falloc(N), *pb = falloc(N);
    fill_normal(pa, N, &rng, 0.0f, 1.0f);
    fill_normal(pb, N, &rng, 0.0f, 1.0f);
    float *aa = dup(pa, N), *ab = dup(pb, N);
    ops_cpu.swiglu_backward(aa, ab, w, a, b, N);
    expect_accumulated("swiglu_backward da", aa, pa, da, N);
    expect_accumulated("swiglu_backward db", ab, pb, db, N);
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
    float *logits = falloc(N * V), *probs = falloc(N * V), *losses = falloc(N), *dlogits = falloc(N * V);
    fill_normal(logits, N * V, &rng, 0.0f, 2.0f);
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
    for (int i = 0; i < N * V; i++) dlogits[i] = 1e30f; // the backward overwrites
    ops_cpu.crossentropy_backward(dlogits, probs, targets, 0.37f, N, V);
    expect_fd("crossentropy dlogits", fd_check(logits, dlogits, N * V, NULL, 0, ce_obj, &c, OP_EPS), OP_MAX_TOL,
              OP_NORM_TOL);

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
    return dot(c->w, c->out, c->N);
}

Test(grad, residual_dropout) {
    enum { N = 50 };
    const float p = 0.3f;
    Rng rng;
    rng_init(&rng, 17);
    float *a = falloc(N), *b = falloc(N), *keep = falloc(N), *out = falloc(N), *w = falloc(N), *db = falloc(N);
    fill_normal(a, N, &rng, 0.0f, 1.0f);
    fill_normal(b, N, &rng, 0.0f, 1.0f);
    fill_normal(w, N, &rng, 0.0f, 1.0f);
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
    expect_fd("residual da (identity)", fd_check(a, w, N, NULL, 0, res_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    expect_fd("residual+dropout db", fd_check(b, db, N, NULL, 0, res_obj, &c, OP_EPS), OP_MAX_TOL, OP_NORM_TOL);
    // no scale means scale one
    ResCtx c1 = {out, a, b, NULL, w, N};
    res_obj(&c1);
    for (int i = 0; i < N; i++) cr_expect(out[i] == a[i] + b[i]);

    // the mask drops about p of a large tensor, and the same RNG state draws the same mask
    enum { M = 20000 };
    float *big = falloc(M), *big2 = falloc(M);
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

// --- whole model ----------------------------------------------------------------------------------------

static const char *const tensor_names[NUM_PARAM_TENSORS] = {"wte", "attn_norm", "wq", "wk", "wv", "wo",
                                                            "mlp_norm", "w1", "w3", "w2", "final_norm"};

static ModelConfig fd_config(int n_kv_head, float dropout) {
    ModelConfig c = {.vocab_size = 7, .n_layer = 2, .n_head = 4, .n_kv_head = n_kv_head, .n_embd = 16,
                     .n_hidden = 24, .block_size = 6, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                     .dropout = dropout};
    return c;
}

static void random_tokens(int *x, int n, int V, Rng *rng) {
    for (int i = 0; i < n; i++) x[i] = (int)rng_below(rng, V);
}

// model_init_weights, then larger matrices (std 0.02 -> 0.3) and norm gains away from one, so every
// gradient is well above the finite-difference noise and the softmaxes are far from uniform.
static void make_fd_model(Model *m, const ModelConfig *cfg, uint64_t seed) {
    char err[ERR_LEN];
    cr_assert(model_config_validate(cfg, err) == 0, "%s", err);
    model_init(m, cfg, &ops_cpu);
    model_init_weights(m, seed);
    size_t s[NUM_PARAM_TENSORS];
    model_param_sizes(cfg, s);
    Rng rng;
    rng_init(&rng, seed ^ 0x9e3779b97f4a7c15ull);
    float *p = m->params_memory;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        for (size_t j = 0; j < s[t]; j++)
            p[j] = model_param_is_decayed(t) ? p[j] * 15.0f : 1.0f + 0.3f * rng_normal(&rng);
        p += s[t];
    }
}

typedef struct {
    Model *m;
    const int *tokens, *targets;
    int B, T, train;
    Rng saved_rng; // dropout masks of the base forward, replayed for every perturbed forward
} ModelCtx;

// The mean loss, summed in double from the per-position float losses (mean_loss is that sum cast to float;
// the double sum keeps the cast's rounding out of the differences).
static double model_obj(void *p) {
    ModelCtx *c = p;
    if (c->train) c->m->dropout_rng = c->saved_rng;
    model_forward(c->m, c->tokens, c->targets, c->B, c->T, c->train);
    double s = 0.0;
    for (int i = 0; i < c->B * c->T; i++) s += c->m->acts.losses[i];
    return s / (c->B * c->T);
}

// Model-level tolerances. The loss is float32, so eps 3e-3 balances truncation (O(eps^2), larger at 1e-2
// for wte) against rounding (O(1e-7 / eps)); measured errors are <= 2e-4 absolute and <= 1e-3 normalized.
// Each tensor's largest sampled gradient is 0.05..0.9, so a wrong sign or a missing term on a tensor gives
// an absolute error of 0.05 or more and a normalized error O(0.1..1), far above these bounds.
#define MODEL_EPS 3e-3f
#define MODEL_MAX_TOL 2e-3
#define MODEL_NORM_TOL 1e-2

static void model_fd_case(int n_kv_head, float dropout, uint64_t seed) {
    enum { B = 2, T = 5, SAMPLES = 20 };
    ModelConfig cfg = fd_config(n_kv_head, dropout);
    Model m;
    make_fd_model(&m, &cfg, seed);
    model_alloc_acts(&m, B, T);
    Rng rng;
    rng_init(&rng, seed + 1);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    random_tokens(targets, B * T, cfg.vocab_size, &rng);
    int train = dropout > 0.0f;
    rng_init(&m.dropout_rng, seed + 2);
    ModelCtx c = {&m, tokens, targets, B, T, train, m.dropout_rng};

    double loss = model_obj(&c);
    cr_assert(m.dropout_active == train);
    cr_assert(fabs(m.mean_loss - loss) <= 1e-6 * loss, "mean_loss %g, mean of losses %g", m.mean_loss, loss);
    model_zero_grad(&m);
    model_backward(&m, tokens, targets, B, T);
    float *grads = dup(m.grads_memory, m.n_params);
    for (size_t i = 0; i < m.n_params; i++) cr_assert(isfinite(grads[i]));
    if (train) { // replaying the RNG state replays the masks exactly
        float l0 = m.mean_loss;
        model_obj(&c);
        cr_assert(m.mean_loss == l0, "same dropout RNG state, different loss: %.9g vs %.9g", m.mean_loss, l0);
    }

    size_t s[NUM_PARAM_TENSORS], off = 0;
    model_param_sizes(&cfg, s);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        size_t idx[SAMPLES], n = s[t] <= SAMPLES ? s[t] : SAMPLES;
        for (size_t k = 0; k < n; k++) idx[k] = s[t] <= SAMPLES ? k : (size_t)rng_below(&rng, s[t]);
        char name[64];
        snprintf(name, sizeof name, "model kv %d%s %s", n_kv_head, train ? " dropout" : "", tensor_names[t]);
        expect_fd(name, fd_check(m.params_memory + off, grads + off, s[t], idx, n, model_obj, &c, MODEL_EPS),
                  MODEL_MAX_TOL, MODEL_NORM_TOL);
        off += s[t];
    }

    // backward accumulates into the parameter gradients: a second call doubles them
    model_obj(&c);
    model_zero_grad(&m);
    model_backward(&m, tokens, targets, B, T);
    model_backward(&m, tokens, targets, B, T);
    expect_accumulated("model_backward", m.grads_memory, grads, grads, m.n_params);
    model_zero_grad(&m);
    for (size_t i = 0; i < m.n_params; i++) cr_assert(m.grads_memory[i] == 0.0f, "model_zero_grad left %zu", i);
    common_free(grads);
    model_free(&m);
}

Test(model, grad_fd_mha) { model_fd_case(4, 0.0f, 101); }
Test(model, grad_fd_gqa) { model_fd_case(2, 0.0f, 102); }
Test(model, grad_fd_mqa) { model_fd_case(1, 0.0f, 103); }
Test(model, grad_fd_gqa_dropout) { model_fd_case(2, 0.25f, 104); }

// --- GQA / MHA equivalences and conversion --------------------------------------------------------------

static void forward_backward(Model *m, const int *tokens, const int *targets, int B, int T) {
    model_alloc_acts(m, B, T);
    model_forward(m, tokens, targets, B, T, 0);
    model_zero_grad(m);
    model_backward(m, tokens, targets, B, T);
}

// n_kv_head = n_head, whether from the config or from converting with G = n_head, is MHA bit for bit.
Test(model, gqa_full_groups_is_mha) {
    enum { B = 2, T = 5 };
    ModelConfig cfg = fd_config(4, 0.0f);
    Model mha, gqa, conv;
    make_fd_model(&mha, &cfg, 201);
    model_init(&gqa, &cfg, &ops_cpu); // G = n_head built via the config, same weights
    memcpy(gqa.params_memory, mha.params_memory, mha.n_params * sizeof(float));
    char err[ERR_LEN] = "";
    cr_assert(model_convert_kv_heads(&conv, &mha, 4, err) == 0, "%s", err);
    cr_assert(conv.cfg.n_kv_head == 4 && conv.n_params == mha.n_params);
    cr_assert(memcmp(conv.params_memory, mha.params_memory, mha.n_params * sizeof(float)) == 0);

    Rng rng;
    rng_init(&rng, 202);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    random_tokens(targets, B * T, cfg.vocab_size, &rng);
    forward_backward(&mha, tokens, targets, B, T);
    Model *others[2] = {&gqa, &conv};
    for (int i = 0; i < 2; i++) {
        Model *o = others[i];
        forward_backward(o, tokens, targets, B, T);
        cr_expect(memcmp(&o->mean_loss, &mha.mean_loss, sizeof(float)) == 0, "loss %.9g vs MHA %.9g", o->mean_loss,
                  mha.mean_loss);
        cr_expect(memcmp(o->acts.logits, mha.acts.logits, (size_t)B * T * cfg.vocab_size * sizeof(float)) == 0,
                  "logits differ from MHA");
        cr_expect(memcmp(o->grads_memory, mha.grads_memory, mha.n_params * sizeof(float)) == 0,
                  "gradients differ from MHA");
    }
    model_free(&mha), model_free(&gqa), model_free(&conv);
}

// GQA with G kv heads is MHA whose kv heads are copies within each group (query head h reads kv head
// h / (NH/G), not h % G): same loss and logits, and each GQA kv gradient is the sum over its group's copies.
Test(model, gqa_is_mha_with_shared_kv_heads) {
    enum { B = 2, T = 5 };
    ModelConfig gcfg = fd_config(2, 0.0f), mcfg = fd_config(4, 0.0f);
    Model gqa, mha;
    make_fd_model(&gqa, &gcfg, 301);
    model_init(&mha, &mcfg, &ops_cpu);
    int L = gcfg.n_layer, C = gcfg.n_embd, HD = model_head_dim(&gcfg), G = 2, NH = 4, rep = NH / G;
    size_t gs[NUM_PARAM_TENSORS], ms[NUM_PARAM_TENSORS];
    model_param_sizes(&gcfg, gs);
    model_param_sizes(&mcfg, ms);
    const float *gsrc[NUM_PARAM_TENSORS];
    float *mdst[NUM_PARAM_TENSORS];
    const float *gp = gqa.params_memory;
    float *mp = mha.params_memory;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        gsrc[t] = gp, mdst[t] = mp;
        if (t != 3 && t != 4) memcpy(mp, gp, gs[t] * sizeof(float));
        gp += gs[t], mp += ms[t];
    }
    for (int t = 3; t <= 4; t++)
        for (int l = 0; l < L; l++)
            for (int h = 0; h < NH; h++)
                memcpy(mdst[t] + ((size_t)l * NH + h) * HD * C, gsrc[t] + ((size_t)l * G + h / rep) * HD * C,
                       (size_t)HD * C * sizeof(float));

    Rng rng;
    rng_init(&rng, 302);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, gcfg.vocab_size, &rng);
    random_tokens(targets, B * T, gcfg.vocab_size, &rng);
    forward_backward(&gqa, tokens, targets, B, T);
    forward_backward(&mha, tokens, targets, B, T);
    cr_expect(fabsf(gqa.mean_loss - mha.mean_loss) <= 1e-5f * mha.mean_loss, "loss GQA %.9g, MHA %.9g",
              gqa.mean_loss, mha.mean_loss);
    double worst = 0.0;
    for (int i = 0; i < B * T * gcfg.vocab_size; i++) worst = fmax(worst, fabs(gqa.acts.logits[i] - mha.acts.logits[i]));
    cr_expect(worst <= 1e-4, "logits differ by %.3e", worst);

    // gradients: the kv tensors sum over each group's copies, every other tensor is equal
    double gworst = 0.0, gscale = 0.0;
    const float *gg = gqa.grads_memory, *mg = mha.grads_memory;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        if (t == 3 || t == 4) {
            for (int l = 0; l < L; l++)
                for (int g = 0; g < G; g++)
                    for (size_t j = 0; j < (size_t)HD * C; j++) {
                        double sum = 0.0;
                        for (int h = g * rep; h < (g + 1) * rep; h++) sum += mg[((size_t)l * NH + h) * HD * C + j];
                        double a = gg[((size_t)l * G + g) * HD * C + j];
                        gworst = fmax(gworst, fabs(a - sum));
                        gscale = fmax(gscale, fabs(sum));
                    }
        } else {
            for (size_t j = 0; j < gs[t]; j++) {
                gworst = fmax(gworst, fabs(gg[j] - mg[j]));
                gscale = fmax(gscale, fabs(mg[j]));
            }
        }
        gg += gs[t], mg += ms[t];
    }
    cr_log_info("GQA vs MHA with shared kv heads: loss %.9g vs %.9g, logits %.2e, grads %.2e (scale %.2e)",
                gqa.mean_loss, mha.mean_loss, worst, gworst, gscale);
    cr_expect(gworst <= 1e-4 * gscale, "gradients differ by %.3e (largest %.3e)", gworst, gscale);
    model_free(&gqa), model_free(&mha);
}

static void convert_case(int from_kv, int to_kv) {
    ModelConfig cfg = fd_config(from_kv, 0.0f);
    Model src, dst;
    make_fd_model(&src, &cfg, 400 + to_kv);
    char err[ERR_LEN] = "";
    cr_assert(model_convert_kv_heads(&dst, &src, to_kv, err) == 0, "%s", err);
    cr_assert(dst.cfg.n_kv_head == to_kv);
    ModelConfig want = cfg;
    want.n_kv_head = to_kv;
    cr_assert(memcmp(&dst.cfg, &want, sizeof want) == 0, "conversion changed more than n_kv_head");
    cr_assert(dst.n_params == model_param_count(&want));
    size_t ss[NUM_PARAM_TENSORS], ds[NUM_PARAM_TENSORS];
    model_param_sizes(&cfg, ss);
    model_param_sizes(&want, ds);
    int L = cfg.n_layer, C = cfg.n_embd, HD = model_head_dim(&cfg), r = from_kv / to_kv;
    const float *sp = src.params_memory;
    const float *dp = dst.params_memory;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        if (t == 3 || t == 4) {
            cr_assert(ds[t] * r == ss[t]);
            double worst = 0.0;
            for (int l = 0; l < L; l++)
                for (int g = 0; g < to_kv; g++)
                    for (int row = 0; row < HD; row++)
                        for (int col = 0; col < C; col++) {
                            double mean = 0.0, mag = 0.0;
                            for (int h = g * r; h < (g + 1) * r; h++) {
                                float x = sp[(((size_t)l * from_kv + h) * HD + row) * C + col];
                                mean += x, mag += fabsf(x);
                            }
                            mean /= r, mag /= r;
                            double got = dp[(((size_t)l * to_kv + g) * HD + row) * C + col];
                            // float summation of r terms: a few ulps of the terms' magnitudes
                            worst = fmax(worst, fabs(got - mean) / (1e-30 + mag));
                        }
            cr_expect(worst <= 1e-6, "%s %d -> %d heads: not the group mean (relative err %.3e)", tensor_names[t],
                      from_kv, to_kv, worst);
        } else {
            cr_assert(ds[t] == ss[t]);
            cr_expect(memcmp(dp, sp, ss[t] * sizeof(float)) == 0, "%s not copied exactly", tensor_names[t]);
        }
        sp += ss[t], dp += ds[t];
    }
    // a few elements by hand: layer 1, group 0 and the last group, of wk
    const float *swk = src.params.wk, *dwk = dst.params.wk;
    size_t hs = (size_t)HD * C;
    if (r == 2) {
        float a = swk[(1 * from_kv + 0) * hs + 5], b = swk[(1 * from_kv + 1) * hs + 5];
        cr_expect(fabsf(dwk[(1 * to_kv + 0) * hs + 5] - 0.5f * (a + b)) <= 1e-6f * (fabsf(a) + fabsf(b)));
        a = swk[(1 * from_kv + from_kv - 2) * hs + 17], b = swk[(1 * from_kv + from_kv - 1) * hs + 17];
        cr_expect(fabsf(dwk[(1 * to_kv + to_kv - 1) * hs + 17] - 0.5f * (a + b)) <= 1e-6f * (fabsf(a) + fabsf(b)));
    }
    // the converted model runs
    enum { B = 2, T = 5 };
    int tokens[B * T] = {1, 2, 3, 4, 5, 6, 0, 1, 2, 3};
    model_alloc_acts(&dst, B, T);
    model_forward(&dst, tokens, tokens, B, T, 0);
    cr_expect(isfinite(dst.mean_loss) && dst.mean_loss > 0.0f);
    model_free(&src), model_free(&dst);
}

Test(model, convert_kv_heads_mha_to_gqa) { convert_case(4, 2); }
Test(model, convert_kv_heads_mha_to_mqa) { convert_case(4, 1); }
Test(model, convert_kv_heads_gqa_to_mqa) { convert_case(2, 1); }

Test(model, convert_kv_heads_rejects_non_divisor) {
    ModelConfig cfg = fd_config(4, 0.0f);
    Model src, dst;
    make_fd_model(&src, &cfg, 450);
    char err[ERR_LEN] = "";
    cr_expect(model_convert_kv_heads(&dst, &src, 3, err) == -1);
    cr_expect(strlen(err) > 0, "no message for 4 -> 3 kv heads");
    err[0] = '\0';
    cr_expect(model_convert_kv_heads(&dst, &src, 0, err) == -1);
    cr_expect(strlen(err) > 0, "no message for 4 -> 0 kv heads");
    model_free(&src);
}

// --- overfitting one batch ------------------------------------------------------------------------------

Test(model, overfit_one_batch) {
    enum { B = 2, T = 16, STEPS = 300 };
    ModelConfig cfg = {.vocab_size = 10, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 32,
                       .n_hidden = model_default_hidden(32), .block_size = T, .rope_theta = 10000.0f,
                       .norm_eps = 1e-5f, .dropout = 0.0f};
    char err[ERR_LEN];
    cr_assert(model_config_validate(&cfg, err) == 0, "%s", err);
    Model m;
    model_init(&m, &cfg, &ops_cpu);
    model_init_weights(&m, 500);
    model_alloc_acts(&m, B, T);
    Rng rng;
    rng_init(&rng, 501);
    int seq[B][T + 1], tokens[B * T], targets[B * T];
    for (int b = 0; b < B; b++) random_tokens(seq[b], T + 1, cfg.vocab_size, &rng);
    seq[1][0] = (seq[0][0] + 1) % cfg.vocab_size; // rows start differently, so every prefix is distinct
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tokens[b * T + t] = seq[b][t], targets[b * T + t] = seq[b][t + 1];
    float *mom = falloc(m.n_params), *var = falloc(m.n_params);
    float first = 0.0f;
    double t0 = common_now();
    for (int step = 1; step <= STEPS; step++) {
        model_forward(&m, tokens, targets, B, T, 1);
        if (step == 1) first = m.mean_loss;
        model_zero_grad(&m);
        model_backward(&m, tokens, targets, B, T);
        adamw_update(m.params_memory, m.grads_memory, mom, var, m.n_params, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f, step);
    }
    model_forward(&m, tokens, targets, B, T, 0);
    cr_log_info("overfit: loss %.4f -> %.5f after %d AdamW steps (%.2f s)", first, m.mean_loss, STEPS,
                common_now() - t0);
    cr_expect(first > 1.5f, "initial loss %g is not near log(V)", first);
    cr_expect(m.mean_loss < 0.05f, "loss %g after %d steps on one batch", m.mean_loss, STEPS);
    common_free(mom), common_free(var);
    model_free(&m);
}

// --- dropout train / eval -------------------------------------------------------------------------------

Test(model, dropout_train_and_eval) {
    enum { B = 2, T = 5 };
    ModelConfig dcfg = fd_config(2, 0.2f), cfg0 = fd_config(2, 0.0f);
    Model md, m0;
    make_fd_model(&md, &dcfg, 601);
    model_init(&m0, &cfg0, &ops_cpu);
    memcpy(m0.params_memory, md.params_memory, md.n_params * sizeof(float));
    model_alloc_acts(&md, B, T);
    model_alloc_acts(&m0, B, T);
    Rng rng;
    rng_init(&rng, 602);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, dcfg.vocab_size, &rng);
    random_tokens(targets, B * T, dcfg.vocab_size, &rng);

    // train: each forward draws fresh masks from the model's RNG
    Rng before = md.dropout_rng;
    model_forward(&md, tokens, targets, B, T, 1);
    float l1 = md.mean_loss;
    cr_expect(md.dropout_active);
    cr_expect(md.dropout_rng.state != before.state, "dropout did not advance the RNG");
    model_forward(&md, tokens, targets, B, T, 1);
    float l2 = md.mean_loss;
    cr_expect(l1 != l2, "two training forwards with dropout gave the same loss %.9g", l1);

    // eval: dropout off, the RNG untouched, and exactly the dropout-free model
    Rng mid = md.dropout_rng;
    model_forward(&md, tokens, targets, B, T, 0);
    cr_expect(!md.dropout_active);
    cr_expect(md.dropout_rng.state == mid.state, "an eval forward advanced the dropout RNG");
    model_forward(&m0, tokens, targets, B, T, 0);
    cr_expect(memcmp(&md.mean_loss, &m0.mean_loss, sizeof(float)) == 0, "eval loss %.9g, dropout-free %.9g",
              md.mean_loss, m0.mean_loss);
    cr_expect(memcmp(md.acts.logits, m0.acts.logits, (size_t)B * T * dcfg.vocab_size * sizeof(float)) == 0);
    cr_expect(md.mean_loss != l1 && md.mean_loss != l2);
    // dropout 0 draws nothing even when training
    Rng before0 = m0.dropout_rng;
    float e0 = m0.mean_loss;
    model_forward(&m0, tokens, targets, B, T, 1);
    cr_expect(!m0.dropout_active && m0.dropout_rng.state == before0.state);
    cr_expect(m0.mean_loss == e0);
    model_free(&md), model_free(&m0);
}

// --- threads ------------------------------------------------------------------------------------------

// The suites above run on one thread; the threaded loops must give the same results on several. Attention
// is bit-exact: the forward splits batch x query heads, the backward batch x kv heads so the query heads of a
// group add into their shared dK/dV rows in a fixed order (split over query heads instead, the sums land in
// thread order and differ in the last bits). The whole model (rmsnorm's weight gradient over channels, the
// elementwise ops, dropout masks) is compared with a tight tolerance, since BLAS may thread differently.
static void attention_threads_case(int B, int T, int NH, int NKV, int HD, uint64_t seed) {
    size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, natt = (size_t)B * NH * T * T;
    Rng rng;
    rng_init(&rng, seed);
    float *q = falloc(nq), *k = falloc(nk), *v = falloc(nk), *w = falloc(nq);
    fill_normal(q, nq, &rng, 0.0f, 1.0f);
    fill_normal(k, nk, &rng, 0.0f, 1.0f);
    fill_normal(v, nk, &rng, 0.0f, 1.0f);
    fill_normal(w, nq, &rng, 0.0f, 1.0f);
    float *out[2], *att[2], *scratch[2], *dq[2], *dk[2], *dv[2];
    const int threads[2] = {1, 4};
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(threads[r]);
        out[r] = falloc(nq), att[r] = falloc(natt), scratch[r] = falloc(natt);
        dq[r] = falloc(nq), dk[r] = falloc(nk), dv[r] = falloc(nk);
        ops_cpu.attention_forward(out[r], att[r], q, k, v, B, T, NH, NKV, HD);
        ops_cpu.attention_backward(dq[r], dk[r], dv[r], scratch[r], w, att[r], q, k, v, B, T, NH, NKV, HD);
    }
    omp_set_num_threads(1);
    cr_expect(memcmp(out[0], out[1], nq * sizeof(float)) == 0, "attention forward (NH %d NKV %d) depends on threads",
              NH, NKV);
    cr_expect(memcmp(dq[0], dq[1], nq * sizeof(float)) == 0, "attention dq (NH %d NKV %d) depends on threads", NH,
              NKV);
    cr_expect(memcmp(dk[0], dk[1], nk * sizeof(float)) == 0, "attention dk (NH %d NKV %d) depends on threads", NH,
              NKV);
    cr_expect(memcmp(dv[0], dv[1], nk * sizeof(float)) == 0, "attention dv (NH %d NKV %d) depends on threads", NH,
              NKV);
    for (int r = 0; r < 2; r++) {
        common_free(out[r]), common_free(att[r]), common_free(scratch[r]), common_free(dq[r]);
        common_free(dk[r]), common_free(dv[r]);
    }
    common_free(q), common_free(k), common_free(v), common_free(w);
}

Test(grad, threads_agree) {
    attention_threads_case(2, 48, 8, 1, 16, 701);
    attention_threads_case(2, 48, 8, 2, 16, 702);
    attention_threads_case(3, 7, 4, 4, 6, 703);

    enum { B = 2, T = 5 };
    ModelConfig cfg = fd_config(2, 0.2f);
    Rng rng;
    rng_init(&rng, 704);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    random_tokens(targets, B * T, cfg.vocab_size, &rng);
    float *grads[2], loss[2];
    size_t np = 0;
    const int threads[2] = {1, 4};
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(threads[r]);
        Model m;
        make_fd_model(&m, &cfg, 705);
        model_alloc_acts(&m, B, T);
        rng_init(&m.dropout_rng, 706);
        model_forward(&m, tokens, targets, B, T, 1);
        model_zero_grad(&m);
        model_backward(&m, tokens, targets, B, T);
        loss[r] = m.mean_loss;
        grads[r] = dup(m.grads_memory, m.n_params);
        np = m.n_params;
        model_free(&m);
    }
    omp_set_num_threads(1);
    double d = 0.0, scale = 0.0;
    for (size_t i = 0; i < np; i++) {
        d = fmax(d, fabs((double)grads[0][i] - grads[1][i]));
        scale = fmax(scale, fabs(grads[0][i]));
    }
    cr_log_info("1 vs 4 threads: model loss %.9g vs %.9g, gradients differ by %.1e (largest %.2e)", loss[0], loss[1],
                d, scale);
    cr_expect(fabsf(loss[0] - loss[1]) <= 1e-6f * loss[0], "model loss %.9g vs %.9g", loss[0], loss[1]);
    cr_expect(d <= 1e-6 * scale, "model gradients differ across thread counts by %.3e", d);
    common_free(grads[0]), common_free(grads[1]);
}
