// End-to-end tests of build/train --bos and of build/infer on a model with a start symbol, suite `cli_bos`:
// the checkpoint's vocabulary holds STX and a stopped run resumes bit-exactly (with or without the flag); the
// refusals (a corpus holding byte 0x02, --bos with a checkpoint that has no STX) are one line and write
// nothing; score and generate put STX first, checked against the training forward on [STX, text].
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_util.h"
#include "../checkpoints/checkpoint.h"

TestSuite(cli_bos, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

// Trains the tiny preset with --bos for 10 steps on the lowercase corpus; returns the checkpoint's path.
static const char *train_bos(const char *corpus, const char *name) {
    const char *ckpt = cliutil_tmp(name);
    Run r = RUN("train", "--preset", "tiny", "--bos", "--steps", "10", "--seed", "7", "--data", corpus, "--out", ckpt,
                "--quiet");
    cliutil_expect_ok(&r, "train --bos");
    cr_assert(strstr(r.err, "vocab 28 (start symbol STX, id 0)"), "27 characters and STX; stderr:\n%s", r.err);
    cliutil_run_free(&r);
    return ckpt;
}

static void load(const char *ckpt, Model *m, Tokenizer *tok) {
    char err[ERR_LEN];
    cr_assert_eq(checkpoint_load(ckpt, m, &ops_cpu, tok, NULL, NULL, NULL, err), 0, "%s", err);
}

Test(cli_bos, help_names_the_flag) {
    Run r = RUN("train", "--help");
    cliutil_expect_ok(&r, "train --help");
    cr_assert(strstr(r.out, "--bos") && strstr(r.out, "STX"), "%s", r.out);
    cliutil_run_free(&r);
}

Test(cli_bos, checkpoint_holds_stx_and_resumes) {
    const char *corpus = cliutil_write_corpus();
    const char *a = train_bos(corpus, "a.ckpt");
    Model m;
    Tokenizer tok;
    load(a, &m, &tok);
    cr_assert_eq(tok.vocab_size, 28);
    cr_assert_eq(m.cfg.vocab_size, 28);
    cr_assert_eq(tokenizer_bos_id(&tok), 0);
    cr_assert_eq(tok.id_to_byte[0], TOKENIZER_BOS_BYTE);
    model_free(&m);
    // stopped at step 5 and resumed, without the flag and with it: the same bits as the straight run
    const char *resumed[2] = {cliutil_tmp("b.ckpt"), cliutil_tmp("c.ckpt")};
    for (int with_flag = 0; with_flag < 2; with_flag++) {
        Run r = RUN("train", "--preset", "tiny", "--bos", "--steps", "10", "--seed", "7", "--stop-after", "5",
                    "--data", corpus, "--out", resumed[with_flag], "--quiet");
        cliutil_expect_ok(&r, "train --bos --stop-after 5");
        cliutil_run_free(&r);
        r = with_flag ? RUN("train", "--resume", resumed[1], "--bos", "--data", corpus, "--quiet")
                      : RUN("train", "--resume", resumed[0], "--data", corpus, "--quiet");
        cliutil_expect_ok(&r, "train --resume");
        cr_assert(strstr(r.err, "start symbol STX") && strstr(r.err, "steps 5..10"), "stderr:\n%s", r.err);
        cliutil_run_free(&r);
        cr_assert(cliutil_files_equal(a, resumed[with_flag]), "the resumed --bos run (flag %d) differs", with_flag);
    }
    // --init-from a checkpoint with STX keeps it
    const char *up = cliutil_tmp("up.ckpt");
    Run r = RUN("train", "--init-from", a, "--attn", "mqa", "--steps", "2", "--data", corpus, "--out", up, "--quiet");
    cliutil_expect_ok(&r, "train --init-from a --bos checkpoint");
    cr_assert(strstr(r.err, "start symbol STX"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
}

Test(cli_bos, refusals) {
    const char *corpus = cliutil_write_corpus();
    const char *stx = cliutil_tmp("stx.txt");
    char text[4000];
    memset(text, 'a', sizeof text);
    text[1234] = TOKENIZER_BOS_BYTE;
    cliutil_write_file(stx, text, sizeof text);
    const char *out = cliutil_tmp("y.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--bos", "--steps", "3", "--data", stx, "--out", out);
    EXPECT_ERROR(&r, "train", "byte 0x02", "offset 1234");
    cliutil_run_free(&r);
    const char *plain = cliutil_train_tiny(corpus, "plain.ckpt");
    r = RUN("train", "--init-from", plain, "--bos", "--steps", "3", "--data", corpus, "--out", out);
    EXPECT_ERROR(&r, "train", "--bos", "without a start symbol");
    cliutil_run_free(&r);
    r = RUN("train", "--resume", plain, "--bos", "--steps", "8", "--data", corpus);
    EXPECT_ERROR(&r, "train", "--bos", "without a start symbol");
    cliutil_run_free(&r);
    cr_assert_neq(access(out, F_OK), 0, "no checkpoint should be written by a refused run");
    // a --bos model: a text or prompt holding 0x02 would read as a start
    const char *ckpt = train_bos(corpus, "bos.ckpt");
    memset(text, 'a', sizeof text);
    text[7] = TOKENIZER_BOS_BYTE;
    cliutil_write_file(stx, text, 100);
    r = RUN("infer", "score", "--ckpt", ckpt, "--eval", stx);
    EXPECT_ERROR(&r, "infer score", "0x02");
    cliutil_run_free(&r);
    r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", "ab\x02" "c", "-n", "2");
    EXPECT_ERROR(&r, "infer generate", "0x02", "start symbol");
    cliutil_run_free(&r);
}

// The training forward's mean loss over the text's windows of T tokens with STX first: the reference for score.
static double reference_loss(Model *m, const int *x, size_t n, int T, int bos) {
    model_alloc_inference_acts(m, 1, T);
    int in[64], tg[64];
    cr_assert_leq(T, 64);
    double sum = 0;
    for (size_t k = 0; k < n; k += (size_t)T) {
        int t = (int)(n - k < (size_t)T ? n - k : (size_t)T);
        in[0] = bos;
        for (int i = 0; i < t; i++) {
            tg[i] = x[k + (size_t)i];
            if (i + 1 < t) in[i + 1] = x[k + (size_t)i];
        }
        model_forward(m, in, tg, 1, t, 0);
        sum += (double)m->mean_loss * t;
    }
    return sum / (double)n;
}

Test(cli_bos, score_puts_stx_first_in_every_window) {
    const char *ckpt = train_bos(cliutil_write_corpus(), "bos.ckpt");
    const char *text = "the lazy dog runs into the forest and sleeps where the quick brown fox jumps";
    size_t n = strlen(text);
    const char *path = cliutil_tmp("t.txt");
    cliutil_write_file(path, text, n);
    Model m;
    Tokenizer tok;
    load(ckpt, &m, &tok);
    int ids[128];
    cr_assert_eq(tokenizer_encode(&tok, (const unsigned char *)text, n, ids, NULL), n);
    const char *contexts[] = {"8", "32", "13"};
    for (int i = 0; i < 3; i++) {
        Run r = RUN("infer", "score", "--ckpt", ckpt, "--eval", path, "--context", contexts[i]);
        cliutil_expect_ok(&r, "score");
        double loss, ppl;
        size_t scored;
        cliutil_parse_eval(r.out, &loss, &ppl, &scored);
        cr_assert_eq(scored, n, "every character is scored, the first from STX: %s", r.out);
        double want = reference_loss(&m, ids, n, atoi(contexts[i]), 0);
        cr_assert_lt(fabs(loss - want), 1e-4 + 1e-5, "--context %s: score %.5f, forward on [STX, text] %.5f",
                     contexts[i], loss, want);
        // without STX the windows would score otherwise (so the comparison could fail)
        double plain = reference_loss(&m, ids + 1, n - 1, atoi(contexts[i]), ids[0]);
        cr_assert_gt(fabs(plain - want), 1e-3, "--context %s", contexts[i]);
        cliutil_run_free(&r);
    }
    model_free(&m);
}

Test(cli_bos, generate_puts_stx_before_the_prompt) {
    const char *ckpt = train_bos(cliutil_write_corpus(), "bos.ckpt");
    const char *prompt = "the quick";
    const char *out = cliutil_tmp("logits.f32");
    Run r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", prompt, "-n", "1", "--temperature", "0",
                "--logits-out", out);
    cliutil_expect_ok(&r, "generate --logits-out");
    cliutil_run_free(&r);
    Model m;
    Tokenizer tok;
    load(ckpt, &m, &tok);
    int V = m.cfg.vocab_size, in[16];
    size_t n = strlen(prompt);
    in[0] = 0; // STX
    cr_assert_eq(tokenizer_encode(&tok, (const unsigned char *)prompt, n, in + 1, NULL), n);
    model_alloc_inference_acts(&m, 1, (int)n + 1);
    model_forward(&m, in, NULL, 1, (int)n + 1, 0);
    size_t len;
    char *got = cliutil_read_file(out, &len);
    cr_assert_eq(len, sizeof(float) * (size_t)V);
    double max_diff = 0, max_plain = 0;
    float *want = m.acts.logits + (size_t)n * V;
    float *with_stx = malloc(sizeof(float) * (size_t)V);
    memcpy(with_stx, want, sizeof(float) * (size_t)V);
    for (int v = 0; v < V; v++) {
        float g;
        memcpy(&g, got + sizeof(float) * v, sizeof g);
        max_diff = fmax(max_diff, fabs((double)g - with_stx[v]));
    }
    // the prompt alone gives other logits (so the comparison could fail)
    model_forward(&m, in + 1, NULL, 1, (int)n, 0);
    for (int v = 0; v < V; v++)
        max_plain = fmax(max_plain, fabs((double)m.acts.logits[(size_t)(n - 1) * V + v] - with_stx[v]));
    cr_assert_lt(max_diff, 1e-4, "generate's logits against the forward on [STX, prompt]: max |d| %g", max_diff);
    cr_assert_gt(max_plain, 1e-3, "without STX: max |d| %g", max_plain);
    free(with_stx);
    free(got);
    model_free(&m);
}
