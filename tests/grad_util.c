// Shared helpers of the gradient tests; see grad_util.h.
#include "grad_util.h"

#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>
#include <string.h>

float *gradutil_falloc(size_t n) { return common_calloc(n, sizeof(float)); }

void gradutil_fill_normal(float *x, size_t n, Rng *rng, float mean, float std) {
    for (size_t i = 0; i < n; i++) x[i] = mean + std * rng_normal(rng);
}

double gradutil_dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

float *gradutil_dup(const float *x, size_t n) {
    float *y = gradutil_falloc(n);
    memcpy(y, x, n * sizeof(float));
    return y;
}

FdResult gradutil_fd_check(float *x, const float *grad, size_t n, const size_t *idx, size_t nidx, Objective f,
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

void gradutil_expect_fd(const char *what, FdResult r, double max_tol, double norm_tol) {
    cr_log_info("%-34s %4zu elems  max err %.2e  normalized err %.2e  (largest |grad| %.2e)", what, r.count,
                r.max_err, r.norm_err, r.max_grad);
    cr_expect(r.max_err <= max_tol, "%s: element %zu analytic %.6g numeric %.6g (err %.3e > %.1e)", what, r.worst,
              r.worst_analytic, r.worst_numeric, r.max_err, max_tol);
    cr_expect(r.norm_err <= norm_tol, "%s: normalized gradient error %.3e > %.1e", what, r.norm_err, norm_tol);
}

void gradutil_expect_accumulated(const char *what, const float *after, const float *prefill, const float *once,
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

ModelConfig gradutil_fd_config(int n_kv_head, float dropout) {
    ModelConfig c = {.vocab_size = 7, .n_layer = 2, .n_head = 4, .n_kv_head = n_kv_head, .n_embd = 16,
                     .n_hidden = 24, .block_size = 6, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                     .dropout = dropout};
    return c;
}

void gradutil_random_tokens(int *x, int n, int V, Rng *rng) {
    for (int i = 0; i < n; i++) x[i] = (int)rng_below(rng, V);
}

void gradutil_make_fd_model(Model *m, const ModelConfig *cfg, uint64_t seed) {
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

// The finite-difference checks run thousands of tiny OpenMP regions. Criterion runs tests in parallel
// processes, and with more OpenMP threads than free cores every barrier can wait a scheduler time slice
// (measured with build/tests run directly, where ninja test's OMP_WAIT_POLICY=passive is not set: the model
// suite 0.2 s alone, 2 minutes beside another test process). So these suites run on one thread, and
// grad/threads_agree checks the threaded paths against it.
void gradutil_one_thread(void) { omp_set_num_threads(1); }
