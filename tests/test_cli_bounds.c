// End-to-end tests of build/infer's (and build/train's) bounds on what a run reads, allocates and runs for,
// suite `cli_bounds`: a FIFO or a device given as a file is refused at once instead of blocking; scoring sizes
// its buffers by the text, not by the checkpoint's context; a loss that is not finite exits 1; the values
// that meant an endless run or a huge allocation are refused with one line naming the bound. The other
// program tests: test_cli.c; the helpers: cli_util.h.
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"
#include "../checkpoints/checkpoint.h"
#include "../infer/eval.h"

// A blocked open would hang the run: the timeout turns that into a failure.
TestSuite(cli_bounds, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

// A model over the test corpus's 27 characters, random weights, written with the checkpoint API (build/train
// would allocate its training activations for the whole context first).
static void bounds_make_model(Model *m, Tokenizer *tok, int n_layer, int n_head, int n_embd, int context) {
    char err[ERR_LEN];
    const char *text = cliutil_corpus_text;
    cr_assert_eq(tokenizer_build(tok, (const unsigned char *)text, strlen(text), err), 0, "%s", err);
    ModelConfig cfg = {.vocab_size = tok->vocab_size, .n_layer = n_layer, .n_head = n_head, .n_kv_head = n_head,
                       .n_embd = n_embd, .n_hidden = 2 * n_embd, .block_size = context, .rope_theta = 10000.0f,
                       .norm_eps = 1e-5f, .dropout = 0.0f};
    cr_assert_eq(model_config_validate(&cfg, err), 0, "%s", err);
    model_init(m, &cfg, &ops_cpu);
    model_init_weights(m, 7);
}

static void bounds_save(const char *path, Model *m, const Tokenizer *tok) {
    char err[ERR_LEN];
    cr_assert_eq(checkpoint_save(path, m, tok, NULL, 0, err), 0, "%s", err);
}

Test(cli_bounds, fifo_given_as_a_file_is_refused_not_waited_on) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "tiny.ckpt");
    const char *fifo = cliutil_tmp("fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    Run r = RUN("infer", "--ckpt", fifo, "--prompt", "the", "-n", "2");
    EXPECT_ERROR(&r, "infer", fifo, "is not a regular file");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", fifo);
    EXPECT_ERROR(&r, "infer", fifo, "is not a regular file");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", fifo, "--kv", "full");
    EXPECT_ERROR(&r, "infer", fifo, "is not a regular file");
    cliutil_run_free(&r);
    r = RUN("infer", "recall", "--ckpt", ckpt, "--data", fifo);
    EXPECT_ERROR(&r, "infer recall", fifo, "is not a regular file");
    cliutil_run_free(&r);
    r = RUN("train", "--preset", "tiny", "--steps", "1", "--data", fifo, "--out", cliutil_tmp("x.ckpt"));
    EXPECT_ERROR(&r, "train", fifo, "is not a regular file");
    cliutil_run_free(&r);
    r = RUN("train", "--preset", "tiny", "--steps", "1", "--data", corpus, "--resume", fifo, "--out",
            cliutil_tmp("x.ckpt"));
    EXPECT_ERROR(&r, "train", fifo, "is not a regular file");
    cliutil_run_free(&r);
}

Test(cli_bounds, dev_zero_is_not_a_regular_file) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "tiny.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "1", "--data", "/dev/zero", "--out", cliutil_tmp("x.ckpt"));
    EXPECT_ERROR(&r, "train", "'/dev/zero' is not a regular file");
    cr_assert_null(strstr(r.err, "too short"), "%s", r.err);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "/dev/zero");
    EXPECT_ERROR(&r, "infer", "'/dev/zero' is not a regular file");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", "/dev/zero", "--prompt", "the");
    EXPECT_ERROR(&r, "infer", "'/dev/zero' is not a regular file");
    cliutil_run_free(&r);
}

// A valid checkpoint whose context is 65,536 with 2 layers of 16 heads: a full forward over its whole context
// would hold 2 x 16 x 65536^2 attention probabilities (550 GB). A 4 KB text needs a window of its own length
// only, and at that length (32 x 3999^2 floats, 2 GB) the window streams through a full KV cache instead.
Test(cli_bounds, score_sizes_by_the_text_not_the_checkpoint_context) {
    const char *corpus = cliutil_write_corpus();
    Model m;
    Tokenizer tok;
    bounds_make_model(&m, &tok, 2, 16, 32, 65536);
    const char *ckpt = cliutil_tmp("long.ckpt");
    bounds_save(ckpt, &m, &tok);
    model_free(&m);
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", corpus);
    cliutil_expect_ok(&r, "infer --eval on a 65536-context checkpoint");
    double loss = 0.0;
    double ppl = 0.0;
    size_t n = 0;
    cliutil_parse_eval(r.out, &loss, &ppl, &n);
    cr_assert(isfinite(loss) && loss > 0.0, "%s", r.out);
    cr_assert_eq(n, 40 * strlen(cliutil_corpus_text) - 1, "%s", r.out);
    cliutil_run_free(&r);
}

// The streaming path scores what the full forward scores (to float rounding), over several windows and a
// window that is not a multiple of the 64-row chunk; the automatic choice keeps small windows on the forward.
Test(cli_bounds, streaming_score_matches_the_full_forward) {
    Model m;
    Tokenizer tok;
    bounds_make_model(&m, &tok, 2, 4, 32, 100);
    int ids[350];
    const char *text = cliutil_corpus_text;
    size_t len = strlen(text);
    for (int i = 0; i < 350; i++) ids[i] = tok.byte_to_id[(unsigned char)text[(size_t)i * 7 % len]];
    char err[ERR_LEN];
    EvalResult fwd;
    EvalResult str;
    EvalResult aut;
    cr_assert_eq(eval_tokens(&m, ids, 350, 0, EVAL_PATH_FORWARD, &fwd, err), 0, "%s", err);
    cr_assert_eq(eval_tokens(&m, ids, 350, 0, EVAL_PATH_STREAM, &str, err), 0, "%s", err);
    cr_assert_eq(eval_tokens(&m, ids, 350, 0, EVAL_PATH_AUTO, &aut, err), 0, "%s", err);
    cr_assert_eq(fwd.n_scored, 349);
    cr_assert_eq(str.n_scored, 349);
    cr_assert_eq(fwd.window, 100);
    cr_assert(str.streamed && !fwd.streamed && !aut.streamed);
    cr_assert_float_eq(str.mean_loss, fwd.mean_loss, 1e-4, "stream %.6f forward %.6f", str.mean_loss, fwd.mean_loss);
    cr_assert_eq(aut.mean_loss, fwd.mean_loss);
    // a text shorter than the context scores in one window of its own length
    cr_assert_eq(eval_tokens(&m, ids, 30, 0, EVAL_PATH_AUTO, &aut, err), 0, "%s", err);
    cr_assert_eq(aut.window, 29);
    cr_assert_lt(eval_forward_bytes(&m.cfg, 29), eval_forward_bytes(&m.cfg, 100));
    model_free(&m);
}

// Finite weights whose products overflow: queries and keys of 1e30 give infinite attention scores, NaN
// probabilities and a NaN loss. The numbers are printed, the exit status says they are not a result.
Test(cli_bounds, a_loss_that_is_not_finite_exits_1) {
    const char *corpus = cliutil_write_corpus();
    Model m;
    Tokenizer tok;
    bounds_make_model(&m, &tok, 2, 4, 32, 32);
    size_t n_q = (size_t)m.cfg.n_layer * m.cfg.n_embd * m.cfg.n_embd;
    for (size_t i = 0; i < n_q; i++) {
        m.params.wq[i] = 1e30f;
        m.params.wk[i] = 1e30f;
    }
    const char *ckpt = cliutil_tmp("overflow.ckpt");
    bounds_save(ckpt, &m, &tok);
    model_free(&m);
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", corpus);
    cr_assert_eq(r.status, 1, "exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    cr_assert(strstr(r.out, "tokens scored"), "the computed numbers are printed first: %s", r.out);
    cr_assert(strstr(r.err, "infer: ") == r.err && strstr(r.err, "not finite"), "%s", r.err);
    cr_assert_eq(strchr(r.err, '\n'), r.err + r.err_len - 1, "one line: %s", r.err);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "window:8", "--context", "24", "--streams", "2");
    cr_assert_eq(r.status, 1, "exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    cr_assert(strstr(r.out, "ppl"), "%s", r.out);
    cr_assert(strstr(r.err, "infer: ") == r.err && strstr(r.err, "not finite"), "%s", r.err);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "full", "--context", "24", "--streams", "2", "--json");
    cr_assert_eq(r.status, 1, "exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    cr_assert(strstr(r.out, "null") && !strstr(r.out, "nan"), "JSON has no nan: %s", r.out);
    cliutil_run_free(&r);
}

// Each of these ran for hours or allocated gigabytes; now one line names the bound (and --help says it).
Test(cli_bounds, endless_or_huge_values_are_refused) {
    const char *ckpt = cliutil_tmp("shakespeare.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "1", "--out", ckpt, "--quiet");
    cliutil_expect_ok(&r, "train on the bundled corpus");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "recall", "--context", "1000000");
    EXPECT_ERROR(&r, "infer", "--context", "65536");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "/dev/null", "--kv", "full", "--context", "1000000");
    EXPECT_ERROR(&r, "infer", "--context", "65536");
    cliutil_run_free(&r);
    r = RUN("infer", "tier", "--ckpt", ckpt, "--kv", "paged:4+tier:2", "--context", "1000000");
    EXPECT_ERROR(&r, "infer tier", "--context", "65536");
    cliutil_run_free(&r);
    r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", "a", "-n", "16777215", "--kv", "window:16");
    EXPECT_ERROR(&r, "infer generate", "1048576");
    cliutil_run_free(&r);
    r = RUN("infer", "compare-gen", "--ckpt", ckpt, "--kv", "window:16", "-n", "1048576");
    EXPECT_ERROR(&r, "infer compare-gen", "65536");
    cliutil_run_free(&r);
    r = RUN("infer", "recall", "--help");
    cliutil_expect_ok(&r, "infer recall --help");
    cr_assert(strstr(r.out, "at most 65536"), "%s", r.out);
    cliutil_run_free(&r);
    r = RUN("infer", "generate", "--help");
    cliutil_expect_ok(&r, "infer generate --help");
    cr_assert(strstr(r.out, "at most 1048576"), "%s", r.out);
    cliutil_run_free(&r);
}

// A KV budget larger than any stream of the run is clamped (nothing allocated for it) and the user is told.
Test(cli_bounds, a_huge_kv_budget_is_clamped_and_said) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "clamp.ckpt");
    Run r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", "the", "-n", "16", "--kv", "h2o:16777216,16777216");
    cliutil_expect_ok(&r, "generate through a clamped h2o budget");
    cr_assert(strstr(r.err, "note: --kv 'h2o:16777216,16777216' keeps up to 33554432 tokens"), "%s", r.err);
    cliutil_run_free(&r);
    Run a = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "-n", "16", "--seed", "2", "--kv", "h2o:16777216,16777216");
    Run b = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "-n", "16", "--seed", "2");
    cliutil_expect_ok(&a, "clamped");
    cliutil_expect_ok(&b, "full");
    cr_assert_str_eq(a.out, b.out, "a budget past the stream keeps every token, as the full cache does");
    cliutil_run_free(&a);
    cliutil_run_free(&b);
}
