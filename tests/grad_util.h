// Shared helpers of the gradient tests (test_grad_ops.c, test_grad_threads.c, test_grad_model.c): float buffers
// and random fills, central finite differences and their error measures, the accumulation check, the small
// models the model-level checks use, and the one-thread suite init.
#ifndef KVLAB_TESTS_GRAD_UTIL_H
#define KVLAB_TESTS_GRAD_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "../layers/model.h"

// A zeroed float buffer of n elements (common_free it).
float *gradutil_falloc(size_t n);

// x[i] = mean + std * N(0, 1) for each of the n elements.
void gradutil_fill_normal(float *x, size_t n, Rng *rng, float mean, float std);

// sum a[i] * b[i], accumulated in double.
double gradutil_dot(const float *a, const float *b, size_t n);

// A fresh copy of x (common_free it).
float *gradutil_dup(const float *x, size_t n);

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
FdResult gradutil_fd_check(float *x, const float *grad, size_t n, const size_t *idx, size_t nidx, Objective f,
                           void *ctx, float eps);

// Logs r and expects its max error within max_tol and its normalized error within norm_tol.
void gradutil_expect_fd(const char *what, FdResult r, double max_tol, double norm_tol);

// A backward run a second time on a buffer holding `prefill` must leave prefill + (first result).
void gradutil_expect_accumulated(const char *what, const float *after, const float *prefill, const float *once,
                                 size_t n);

// The small model of the model-level finite-difference checks: 2 layers, 4 heads, n_kv_head kv heads.
ModelConfig gradutil_fd_config(int n_kv_head, float dropout);

// n tokens drawn uniformly from [0, V).
void gradutil_random_tokens(int *x, int n, int V, Rng *rng);

// model_init_weights, then larger matrices (std 0.02 -> 0.3) and norm gains away from one, so every
// gradient is well above the finite-difference noise and the softmaxes are far from uniform.
void gradutil_make_fd_model(Model *m, const ModelConfig *cfg, uint64_t seed);

// The suites' .init: one OpenMP thread (see grad_util.c for why).
void gradutil_one_thread(void);

#endif
