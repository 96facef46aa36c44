// Gradient tests, suite `grad` (declared with its one-thread init in test_grad_ops.c): grad/threads_agree, the
// threaded paths of the ops and of the whole model against one thread; grad/chunked_threads_bit_identical, the
// chunked schedule of the model on 1, 2 and 4 threads.
#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>
#include <string.h>

#include "../layers/model.h"
#include "../layers/ops.h"
#include "grad_util.h"

// --- threads ------------------------------------------------------------------------------------------

// The grad and model suites run on one thread; the threaded loops must give the same results on several.
// Attention is bit-exact: the forward splits batch x query heads, the backward batch x kv heads so the query
// heads of a group add into their shared dK/dV rows in a fixed order (split over query heads instead, the sums
// land in thread order and differ in the last bits). The whole model (rmsnorm's weight gradient over channels,
// the elementwise ops, dropout masks) is compared with a tight tolerance, since BLAS may thread differently.
static void attention_threads_case(int B, int T, int NH, int NKV, int HD, uint64_t seed) {
    size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, natt = (size_t)B * NH * T * T;
    Rng rng;
    rng_init(&rng, seed);
    float *q = gradutil_falloc(nq), *k = gradutil_falloc(nk), *v = gradutil_falloc(nk), *w = gradutil_falloc(nq);
    gradutil_fill_normal(q, nq, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(k, nk, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(v, nk, &rng, 0.0f, 1.0f);
    gradutil_fill_normal(w, nq, &rng, 0.0f, 1.0f);
    float *out[2], *att[2], *scratch[2], *dq[2], *dk[2], *dv[2];
    const int threads[2] = {1, 4};
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(threads[r]);
        out[r] = gradutil_falloc(nq), att[r] = gradutil_falloc(natt), scratch[r] = gradutil_falloc(natt);
        dq[r] = gradutil_falloc(nq), dk[r] = gradutil_falloc(nk), dv[r] = gradutil_falloc(nk);
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
    ModelConfig cfg = gradutil_fd_config(2, 0.2f);
    Rng rng;
    rng_init(&rng, 704);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, cfg.vocab_size, &rng);
    float *grads[2], loss[2];
    size_t np = 0;
    const int threads[2] = {1, 4};
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(threads[r]);
        Model m;
        gradutil_make_fd_model(&m, &cfg, 705);
        model_alloc_acts(&m, B, T);
        rng_init(&m.dropout_rng, 706);
        model_forward(&m, tokens, targets, B, T, 1);
        model_zero_grad(&m);
        model_backward(&m, tokens, targets, B, T);
        loss[r] = m.mean_loss;
        grads[r] = gradutil_dup(m.grads_memory, m.n_params);
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

// The chunked schedule (layers/transformer.c) hands chunks and weight tasks to whichever thread is free; each
// computes the same thing on any thread, so 1, 2 and 4 threads give the same bits (a race or a task that
// depended on its thread would not). The automatic schedule aims at two chunks per thread.
Test(grad, chunked_threads_bit_identical) {
    enum { B = 6, T = 6 };
    ModelConfig cfg = gradutil_fd_config(2, 0.2f);
    cfg.n_layer = 3;
    Rng rng;
    rng_init(&rng, 720);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, cfg.vocab_size, &rng);
    const int threads[3] = {1, 2, 4};
    float *grads[3], *logits[3], loss[3];
    size_t np = 0, nl = (size_t)B * T * cfg.vocab_size;
    for (int r = 0; r < 3; r++) {
        omp_set_num_threads(threads[r]);
        Model m;
        gradutil_make_fd_model(&m, &cfg, 721);
        m.schedule = MODEL_SCHEDULE_CHUNKED;
        model_alloc_acts(&m, B, T);
        rng_init(&m.dropout_rng, 722);
        model_forward(&m, tokens, targets, B, T, 1);
        model_zero_grad(&m);
        model_backward(&m, tokens, targets, B, T);
        loss[r] = m.mean_loss;
        grads[r] = gradutil_dup(m.grads_memory, m.n_params);
        logits[r] = gradutil_dup(m.acts.logits, nl);
        np = m.n_params;
        // automatic: one thread runs the whole batch; 2 threads aim at 4 chunks (2 sequences each: 3 chunks),
        // 4 threads at 8 (1 sequence each: 6 chunks)
        m.schedule = MODEL_SCHEDULE_AUTO;
        const int want[3] = {1, 3, 6};
        cr_expect_eq(model_pass_chunks(&m, B, T), want[r], "%d threads: %d chunks", threads[r], model_pass_chunks(&m, B, T));
        model_free(&m);
    }
    omp_set_num_threads(1);
    for (int r = 1; r < 3; r++) {
        cr_expect(memcmp(&loss[r], &loss[0], sizeof(float)) == 0, "%d threads: loss %.9g, 1 thread %.9g",
                  threads[r], loss[r], loss[0]);
        cr_expect(memcmp(logits[r], logits[0], nl * sizeof(float)) == 0, "%d threads: logits differ", threads[r]);
        cr_expect(memcmp(grads[r], grads[0], np * sizeof(float)) == 0, "%d threads: gradients differ", threads[r]);
    }
    for (int r = 0; r < 3; r++) common_free(grads[r]), common_free(logits[r]);
}
