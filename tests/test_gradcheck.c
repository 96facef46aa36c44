// build/train --check-grads compares one batch's gradients tensor by tensor (train/gradcheck.c). Here the "device"
// is a copy of the CPU op table, so the check runs on any machine: identical tables agree exactly, and a table
// with one wrong op is caught in the tensors that op feeds and only there.
#include <criterion/criterion.h>
#include <string.h>

#include "../layers/cpu_ops.h"
#include "../train/gradcheck.h"

static const ModelConfig CFG = {.n_layer = 1, .n_head = 4, .n_kv_head = 2, .n_embd = 32, .n_hidden = 96,
                                .block_size = 16, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.1f};
static const TrainConfig TC = {.batch_size = 2, .seq_len = 16, .grad_accum = 1, .seed = 5};

// The corpus (which keeps a pointer to tok: the caller's, alive while c is) and a model of CFG on its vocabulary
// (weights from seed 3).
static void setup(Corpus *c, Tokenizer *tok, Model *m) {
    char err[ERR_LEN];
    cr_assert_eq(corpus_load(c, tok, "data/tinyshakespeare.txt", 1, NULL, err), 0, "%s", err);
    ModelConfig mc = CFG;
    mc.vocab_size = tok->vocab_size;
    model_init(m, &mc, &ops_cpu);
    model_init_weights(m, 3);
}

static GradCheck check_with(const Ops *dev) {
    char err[ERR_LEN];
    Corpus c;
    Tokenizer tok;
    Model m;
    setup(&c, &tok, &m);
    GradCheck g;
    cr_assert_eq(train_grad_check(&m, dev, MODEL_ATTENTION_NAIVE, OPS_PRECISION_FP32, &TC, &c, TC.seed, &g, err), 0,
                 "%s", err);
    model_free(&m);
    corpus_free(&c);
    return g;
}

Test(gradcheck, identical_tables_agree_exactly) {
    GradCheck g = check_with(&ops_cpu);
    cr_expect(g.loss_cpu > 1.0f && memcmp(&g.loss_cpu, &g.loss_dev, sizeof(float)) == 0, "loss %g vs %g", g.loss_cpu,
              g.loss_dev);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        cr_expect_str_eq(g.t[i].name, model_param_name(i));
        cr_expect(g.t[i].max_abs_ref > 0.0, "%s: a zero gradient proves nothing", g.t[i].name);
        cr_expect(g.t[i].rel_l2 == 0.0 && g.t[i].max_abs_diff == 0.0, "%s differs: %g", g.t[i].name, g.t[i].rel_l2);
    }
    cr_expect(g.worst_rel_l2 == 0.0);
}

// The SwiGLU backward 1% too large: the gate and up projections (and every tensor below them: the attention
// weights, the norms, the embedding) get wrong gradients; the down projection, the final norm and the loss do not
// depend on it (one layer).
static void swiglu_backward_wrong(float *da, float *db, const float *dout, const float *a, const float *b, size_t N) {
    float *scaled = common_calloc(N, sizeof(float));
    for (size_t i = 0; i < N; i++) scaled[i] = dout[i] * 1.01f;
    swiglu_backward_cpu(da, db, scaled, a, b, N);
    common_free(scaled);
}

Test(gradcheck, a_wrong_op_fails_the_tensors_it_feeds) {
    Ops broken = ops_cpu;
    broken.swiglu_backward = swiglu_backward_wrong;
    GradCheck g = check_with(&broken);
    cr_expect(memcmp(&g.loss_cpu, &g.loss_dev, sizeof(float)) == 0, "the forward is unchanged");
    const char *hit[] = {"w1", "w3", "wq", "wk", "wv", "attn_norm", "mlp_norm"}, *clean[] = {"w2", "final_norm"};
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const GradDiff *d = &g.t[i];
        for (size_t k = 0; k < sizeof hit / sizeof *hit; k++)
            if (strcmp(d->name, hit[k]) == 0)
                cr_expect(d->rel_l2 > train_grad_check_tolerance(OPS_PRECISION_FP32), "%s: rel %g not caught", d->name, d->rel_l2);
        for (size_t k = 0; k < sizeof clean / sizeof *clean; k++)
            if (strcmp(d->name, clean[k]) == 0) cr_expect(d->rel_l2 == 0.0, "%s: rel %g", d->name, d->rel_l2);
    }
    cr_expect(g.worst_rel_l2 > 1e-3, "worst %g", g.worst_rel_l2);
}

// The device's precision is the check's: a table that refuses it stops the check with its line.
Test(gradcheck, a_refused_precision_is_an_error) {
    char err[ERR_LEN] = "";
    Corpus c;
    Tokenizer tok;
    Model m;
    setup(&c, &tok, &m);
    GradCheck g;
    cr_expect_eq(train_grad_check(&m, &ops_cpu, MODEL_ATTENTION_NAIVE, OPS_PRECISION_BF16, &TC, &c, 1, &g, err), -1);
    cr_expect(strstr(err, "fp32 only"), "%s", err);
    model_free(&m);
    corpus_free(&c);
}
