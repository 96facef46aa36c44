// Gradient tests, suite `model`: finite differences of the whole model's mean loss (MHA, GQA, MQA, and with
// dropout under a fixed mask), GQA/MHA equivalences, the MHA -> GQA conversion, overfitting one batch with
// AdamW, and dropout's train/eval behaviour. The suite runs single-threaded (see gradutil_one_thread);
// grad/threads_agree (test_grad_threads.c) compares the threaded paths with that. The ops: test_grad_ops.c.
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "../layers/cpu_ops.h"
#include "../layers/model.h"
#include "../layers/ops.h"
#include "grad_util.h"

TestSuite(model, .init = gradutil_one_thread);

// --- whole model ----------------------------------------------------------------------------------------

static const char *const tensor_names[NUM_PARAM_TENSORS] = {"wte", "attn_norm", "wq", "wk", "wv", "wo",
                                                            "mlp_norm", "w1", "w3", "w2", "final_norm"};

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

static void model_fd_case(int n_kv_head, float dropout, ModelSchedule schedule, ModelAttention attn, uint64_t seed) {
    enum { B = 2, T = 5, SAMPLES = 20 };
    ModelConfig cfg = gradutil_fd_config(n_kv_head, dropout);
    Model m;
    gradutil_make_fd_model(&m, &cfg, seed);
    m.schedule = schedule;
    m.attention = attn;
    cr_assert_eq(model_pass_chunks(&m, B, T), schedule == MODEL_SCHEDULE_CHUNKED ? B : 1);
    model_alloc_acts(&m, B, T);
    Rng rng;
    rng_init(&rng, seed + 1);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, cfg.vocab_size, &rng);
    int train = dropout > 0.0f;
    rng_init(&m.dropout_rng, seed + 2);
    ModelCtx c = {&m, tokens, targets, B, T, train, m.dropout_rng};

    double loss = model_obj(&c);
    cr_assert(m.dropout_active == train);
    cr_assert(fabs(m.mean_loss - loss) <= 1e-6 * loss, "mean_loss %g, mean of losses %g", m.mean_loss, loss);
    model_zero_grad(&m);
    model_backward(&m, tokens, targets, B, T);
    float *grads = gradutil_dup(m.grads_memory, m.n_params);
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
        snprintf(name, sizeof name, "model kv %d%s%s%s %s", n_kv_head, train ? " dropout" : "",
                 schedule == MODEL_SCHEDULE_CHUNKED ? " chunked" : "", attn == MODEL_ATTENTION_FLASH ? " flash" : "",
                 tensor_names[t]);
        gradutil_expect_fd(
            name, gradutil_fd_check(m.params_memory + off, grads + off, s[t], idx, n, model_obj, &c, MODEL_EPS),
            MODEL_MAX_TOL, MODEL_NORM_TOL);
        off += s[t];
    }

    // backward accumulates into the parameter gradients: a second call doubles them
    model_obj(&c);
    model_zero_grad(&m);
    model_backward(&m, tokens, targets, B, T);
    model_backward(&m, tokens, targets, B, T);
    gradutil_expect_accumulated("model_backward", m.grads_memory, grads, grads, m.n_params);
    model_zero_grad(&m);
    for (size_t i = 0; i < m.n_params; i++) cr_assert(m.grads_memory[i] == 0.0f, "model_zero_grad left %zu", i);
    common_free(grads);
    model_free(&m);
}

#define NAIVE MODEL_ATTENTION_NAIVE
#define FLASH MODEL_ATTENTION_FLASH
Test(model, grad_fd_mha) { model_fd_case(4, 0.0f, MODEL_SCHEDULE_AUTO, NAIVE, 101); }
Test(model, grad_fd_gqa) { model_fd_case(2, 0.0f, MODEL_SCHEDULE_AUTO, NAIVE, 102); }
Test(model, grad_fd_mqa) { model_fd_case(1, 0.0f, MODEL_SCHEDULE_AUTO, NAIVE, 103); }
Test(model, grad_fd_gqa_dropout) { model_fd_case(2, 0.25f, MODEL_SCHEDULE_AUTO, NAIVE, 104); }
// the chunked schedule (transformer.c: one sequence per chunk here), on its own finite differences
Test(model, grad_fd_mha_chunked) { model_fd_case(4, 0.0f, MODEL_SCHEDULE_CHUNKED, NAIVE, 105); }
Test(model, grad_fd_gqa_dropout_chunked) { model_fd_case(2, 0.25f, MODEL_SCHEDULE_CHUNKED, NAIVE, 106); }
// flash attention in the model (the op table's flash forward and backward), on its own finite differences
Test(model, grad_fd_gqa_flash) { model_fd_case(2, 0.0f, MODEL_SCHEDULE_AUTO, FLASH, 107); }
Test(model, grad_fd_mqa_dropout_chunked_flash) { model_fd_case(1, 0.25f, MODEL_SCHEDULE_CHUNKED, FLASH, 108); }

// Flash against naive attention in the whole model, on a context of several query tiles (T = 40, query tiles
// of HD = 8 rows; one key tile: attention/test_flash_cpu.c crosses key tiles): the same loss and parameter
// gradients up to float rounding, and flash's activations hold no (T, T) matrix.
static void flash_vs_naive_case(int n_kv_head, ModelSchedule schedule, uint64_t seed) {
    enum { B = 3, T = 40 };
    ModelConfig cfg = gradutil_fd_config(n_kv_head, 0.0f);
    cfg.block_size = T;
    Rng rng;
    rng_init(&rng, seed);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, cfg.vocab_size, &rng);
    float *grads[2], loss[2];
    for (int i = 0; i < 2; i++) {
        Model m;
        gradutil_make_fd_model(&m, &cfg, seed + 1);
        m.schedule = schedule;
        m.attention = i ? MODEL_ATTENTION_FLASH : MODEL_ATTENTION_NAIVE;
        model_alloc_acts(&m, B, T);
        model_forward(&m, tokens, targets, B, T, 1);
        model_zero_grad(&m);
        model_backward(&m, tokens, targets, B, T);
        loss[i] = m.mean_loss;
        grads[i] = gradutil_dup(m.grads_memory, m.n_params);
        for (size_t j = 0; j < m.n_params; j++) cr_assert(isfinite(grads[i][j]), "grad %zu not finite", j);
        model_free(&m);
    }
    cr_expect(fabsf(loss[0] - loss[1]) <= 1e-5f * loss[0], "loss naive %.9g, flash %.9g", loss[0], loss[1]);
    size_t n = 0, s[NUM_PARAM_TENSORS], off = 0;
    model_param_sizes(&cfg, s);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) n += s[t];
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        double max_ref = 0.0, max_diff = 0.0;
        for (size_t j = off; j < off + s[t]; j++) {
            max_ref = fmax(max_ref, fabs(grads[0][j]));
            max_diff = fmax(max_diff, fabs((double)grads[1][j] - grads[0][j]));
        }
        cr_expect(max_ref > 1e-4, "%s: gradients too small to compare", tensor_names[t]);
        cr_expect(max_diff <= 1e-4 * max_ref, "%s: max |flash - naive| %g against max |grad| %g", tensor_names[t], max_diff, max_ref);
        off += s[t];
    }
    cr_assert_eq(off, n);
    double saved = model_train_act_bytes(&cfg, B, T, MODEL_ATTENTION_NAIVE) - model_train_act_bytes(&cfg, B, T, MODEL_ATTENTION_FLASH);
    double tt = (double)cfg.n_head * T * T; // per sequence: L probability matrices and the backward's scratch
    cr_expect(saved == 4.0 * ((cfg.n_layer + 1) * B * tt - cfg.n_layer * B * (double)cfg.n_head * T),
              "flash saves %.0f bytes", saved);
    common_free(grads[0]), common_free(grads[1]);
}

Test(model, flash_matches_naive) {
    flash_vs_naive_case(4, MODEL_SCHEDULE_WHOLE, 201);
    flash_vs_naive_case(2, MODEL_SCHEDULE_CHUNKED, 202);
    flash_vs_naive_case(1, MODEL_SCHEDULE_AUTO, 203);
}

// The chunked schedule against the whole-batch one on a deeper model (4 layers: every set of the rotating
// gradient buffers is used and reused) with an uneven batch, with and without dropout: the same loss, logits
// and gradients up to float rounding (the products run over other row counts, the norm weights' gradients
// sum per chunk), and a second backward accumulates.
static void chunked_vs_whole_case(float dropout, int n_kv_head, uint64_t seed) {
    enum { B = 5, T = 6 };
    ModelConfig cfg = gradutil_fd_config(n_kv_head, dropout);
    cfg.n_layer = 4;
    Rng rng;
    rng_init(&rng, seed);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, cfg.vocab_size, &rng);
    Model m[2];
    const ModelSchedule sched[2] = {MODEL_SCHEDULE_WHOLE, MODEL_SCHEDULE_CHUNKED};
    for (int r = 0; r < 2; r++) {
        gradutil_make_fd_model(&m[r], &cfg, seed + 1);
        m[r].schedule = sched[r];
        model_alloc_acts(&m[r], B, T);
        rng_init(&m[r].dropout_rng, seed + 2);
        model_forward(&m[r], tokens, targets, B, T, 1);
        model_zero_grad(&m[r]);
        model_backward(&m[r], tokens, targets, B, T);
    }
    cr_assert_eq(model_pass_chunks(&m[0], B, T), 1);
    cr_assert_eq(model_pass_chunks(&m[1], B, T), B);
    cr_expect(fabsf(m[0].mean_loss - m[1].mean_loss) <= 1e-6f * m[0].mean_loss, "loss whole %.9g, chunked %.9g",
              m[0].mean_loss, m[1].mean_loss);
    double lw = 0.0;
    for (int i = 0; i < B * T * cfg.vocab_size; i++) lw = fmax(lw, fabs(m[0].acts.logits[i] - m[1].acts.logits[i]));
    cr_expect(lw <= 1e-5, "logits differ by %.3e", lw);
    double d = 0.0, scale = 0.0;
    for (size_t i = 0; i < m[0].n_params; i++) {
        d = fmax(d, fabs((double)m[0].grads_memory[i] - m[1].grads_memory[i]));
        scale = fmax(scale, fabs(m[0].grads_memory[i]));
    }
    cr_log_info("chunked vs whole (dropout %g, kv %d): loss %.9g vs %.9g, gradients differ by %.1e (largest %.2e)",
                dropout, n_kv_head, m[0].mean_loss, m[1].mean_loss, d, scale);
    cr_expect(scale > 0.01 && d <= 1e-5 * scale, "gradients differ by %.3e (largest %.3e)", d, scale);
    float *once = gradutil_dup(m[1].grads_memory, m[1].n_params);
    model_backward(&m[1], tokens, targets, B, T);
    gradutil_expect_accumulated("chunked model_backward", m[1].grads_memory, once, once, m[1].n_params);
    common_free(once);
    model_free(&m[0]), model_free(&m[1]);
}

Test(model, chunked_matches_whole) {
    chunked_vs_whole_case(0.0f, 4, 111);
    chunked_vs_whole_case(0.2f, 2, 112);
    chunked_vs_whole_case(0.0f, 1, 113);
}

// A training forward differentiates the loss in the same pass (crossentropy_fused, no probs); after a scoring
// forward (crossentropy_forward) the backward runs the fused op from the logits. Without dropout the two are the
// same function with the same float operations: the same loss and gradients, bit for bit, on both schedules.
Test(model, fused_loss_matches_separate) {
    enum { B = 4, T = 5 };
    ModelConfig cfg = gradutil_fd_config(2, 0.0f);
    Rng rng;
    rng_init(&rng, 121);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, cfg.vocab_size, &rng);
    const ModelSchedule sched[2] = {MODEL_SCHEDULE_WHOLE, MODEL_SCHEDULE_CHUNKED};
    for (int k = 0; k < 2; k++) {
        Model m[2];
        for (int train = 0; train < 2; train++) {
            gradutil_make_fd_model(&m[train], &cfg, 122);
            m[train].schedule = sched[k];
            model_alloc_acts(&m[train], B, T);
            model_forward(&m[train], tokens, targets, B, T, train);
            cr_expect_eq(m[train].loss_fused, train);
            model_zero_grad(&m[train]);
            model_backward(&m[train], tokens, targets, B, T);
        }
        cr_expect(memcmp(&m[0].mean_loss, &m[1].mean_loss, sizeof(float)) == 0, "loss %.9g vs fused %.9g",
                  m[0].mean_loss, m[1].mean_loss);
        cr_expect(memcmp(m[0].grads_memory, m[1].grads_memory, m[0].n_params * sizeof(float)) == 0,
                  "schedule %d: fused loss gradients differ from the separate ops'", k);
        // the scoring forward's probabilities share dlogits' memory: a second backward still accumulates the same
        // gradient (it starts again from the logits)
        float *once = gradutil_dup(m[0].grads_memory, m[0].n_params);
        model_backward(&m[0], tokens, targets, B, T);
        gradutil_expect_accumulated("backward after a scoring forward", m[0].grads_memory, once, once, m[0].n_params);
        common_free(once);
        model_free(&m[0]);
        model_free(&m[1]);
    }
}

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
    ModelConfig cfg = gradutil_fd_config(4, 0.0f);
    Model mha, gqa, conv;
    gradutil_make_fd_model(&mha, &cfg, 201);
    model_init(&gqa, &cfg, &ops_cpu); // G = n_head built via the config, same weights
    memcpy(gqa.params_memory, mha.params_memory, mha.n_params * sizeof(float));
    char err[ERR_LEN] = "";
    cr_assert(model_convert_kv_heads(&conv, &mha, 4, KV_INIT_MEAN, err) == 0, "%s", err);
    cr_assert(conv.cfg.n_kv_head == 4 && conv.n_params == mha.n_params);
    cr_assert(memcmp(conv.params_memory, mha.params_memory, mha.n_params * sizeof(float)) == 0);

    Rng rng;
    rng_init(&rng, 202);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, cfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, cfg.vocab_size, &rng);
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
    ModelConfig gcfg = gradutil_fd_config(2, 0.0f), mcfg = gradutil_fd_config(4, 0.0f);
    Model gqa, mha;
    gradutil_make_fd_model(&gqa, &gcfg, 301);
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
    gradutil_random_tokens(tokens, B * T, gcfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, gcfg.vocab_size, &rng);
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
    ModelConfig cfg = gradutil_fd_config(from_kv, 0.0f);
    Model src, dst;
    gradutil_make_fd_model(&src, &cfg, 400 + to_kv);
    char err[ERR_LEN] = "";
    cr_assert(model_convert_kv_heads(&dst, &src, to_kv, KV_INIT_MEAN, err) == 0, "%s", err);
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

// First-head initialisation: each group's key and value heads are its first head's, exactly; the rest copied.
Test(model, convert_kv_heads_first_head) {
    ModelConfig cfg = gradutil_fd_config(4, 0.0f);
    Model src, dst;
    gradutil_make_fd_model(&src, &cfg, 460);
    char err[ERR_LEN] = "";
    cr_assert(model_convert_kv_heads(&dst, &src, 2, KV_INIT_FIRST, err) == 0, "%s", err);
    size_t hs = (size_t)model_head_dim(&cfg) * cfg.n_embd;
    for (int l = 0; l < cfg.n_layer; l++)
        for (int g = 0; g < 2; g++) {
            cr_assert(memcmp(dst.params.wk + (l * 2 + g) * hs, src.params.wk + (l * 4 + 2 * g) * hs, hs * sizeof(float)) == 0,
                      "layer %d group %d: wk is not head %d", l, g, 2 * g);
            cr_assert(memcmp(dst.params.wv + (l * 2 + g) * hs, src.params.wv + (l * 4 + 2 * g) * hs, hs * sizeof(float)) == 0);
        }
    cr_assert(memcmp(dst.params.wq, src.params.wq, (size_t)cfg.n_layer * cfg.n_embd * cfg.n_embd * sizeof(float)) == 0);
    model_free(&src), model_free(&dst);
}

Test(model, convert_kv_heads_rejects_non_divisor) {
    ModelConfig cfg = gradutil_fd_config(4, 0.0f);
    Model src, dst;
    gradutil_make_fd_model(&src, &cfg, 450);
    char err[ERR_LEN] = "";
    cr_expect(model_convert_kv_heads(&dst, &src, 3, KV_INIT_MEAN, err) == -1);
    cr_expect(strlen(err) > 0, "no message for 4 -> 3 kv heads");
    err[0] = '\0';
    cr_expect(model_convert_kv_heads(&dst, &src, 0, KV_INIT_MEAN, err) == -1);
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
    for (int b = 0; b < B; b++) gradutil_random_tokens(seq[b], T + 1, cfg.vocab_size, &rng);
    seq[1][0] = (seq[0][0] + 1) % cfg.vocab_size; // rows start differently, so every prefix is distinct
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tokens[b * T + t] = seq[b][t], targets[b * T + t] = seq[b][t + 1];
    float *mom = gradutil_falloc(m.n_params), *var = gradutil_falloc(m.n_params);
    float first = 0.0f;
    double t0 = common_now();
    for (int step = 1; step <= STEPS; step++) {
        model_forward(&m, tokens, targets, B, T, 1);
        if (step == 1) first = m.mean_loss;
        model_zero_grad(&m);
        model_backward(&m, tokens, targets, B, T);
        adamw_update_cpu(m.params_memory, m.grads_memory, mom, var, m.n_params, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f, step);
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
    ModelConfig dcfg = gradutil_fd_config(2, 0.2f), cfg0 = gradutil_fd_config(2, 0.0f);
    Model md, m0;
    gradutil_make_fd_model(&md, &dcfg, 601);
    model_init(&m0, &cfg0, &ops_cpu);
    memcpy(m0.params_memory, md.params_memory, md.n_params * sizeof(float));
    model_alloc_acts(&md, B, T);
    model_alloc_acts(&m0, B, T);
    Rng rng;
    rng_init(&rng, 602);
    int tokens[B * T], targets[B * T];
    gradutil_random_tokens(tokens, B * T, dcfg.vocab_size, &rng);
    gradutil_random_tokens(targets, B * T, dcfg.vocab_size, &rng);

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
