// End-to-end tests of build/train, suite `resume`: a run that stops and resumes (--stop-after, --resume) is
// bit-identical to one that never stopped. The helpers (temporary directory, running the programs): cli_util.h.
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"

TestSuite(resume, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

// --- resume: a stopped and resumed run is the same run ----------------------------------------------------

#define N_STEPS 20

typedef struct {
    char train_loss[N_STEPS + 1][32], val_loss[N_STEPS + 1][32], lr[N_STEPS + 1][32], grad_norm[N_STEPS + 1][32];
} Log;

// Copies the number after "key": as printed (the text up to the next ',' or '}'); "" when absent.
static void field(const char *line, const char *key, char *out, size_t len) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    out[0] = 0;
    if (!p) return;
    p += strlen(pat);
    size_t n = strcspn(p, ",}");
    cr_assert_lt(n, len);
    memcpy(out, p, n);
    out[n] = 0;
}

static void read_log(const char *path, Log *log) {
    memset(log, 0, sizeof(*log));
    char *text = cliutil_read_file(path, NULL);
    cr_assert_not_null(text, "no log at %s", path);
    int expect = 1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), expect++) {
        char step[32];
        field(line, "step", step, sizeof step);
        cr_assert_eq(atoi(step), expect, "%s: line %d should be step %d: %s", path, expect, expect, line);
        cr_assert_leq(expect, N_STEPS, "%s: more than %d lines", path, N_STEPS);
        field(line, "train_loss", log->train_loss[expect], sizeof log->train_loss[0]);
        field(line, "val_loss", log->val_loss[expect], sizeof log->val_loss[0]);
        field(line, "lr", log->lr[expect], sizeof log->lr[0]);
        field(line, "grad_norm", log->grad_norm[expect], sizeof log->grad_norm[0]);
        cr_assert_neq(log->train_loss[expect][0], 0, "%s: no train_loss in: %s", path, line);
        int evaluated = expect % 5 == 0;
        cr_assert_eq(log->val_loss[expect][0] != 0, evaluated, "%s: val_loss %s at step %d: %s", path,
                     evaluated ? "missing" : "unexpected", expect, line);
    }
    cr_assert_eq(expect, N_STEPS + 1, "%s: %d steps logged, expected %d", path, expect - 1, N_STEPS);
    free(text);
}

Test(resume, bit_exact) {
    const char *corpus = cliutil_write_corpus();
    const char *a_log = cliutil_tmp("a.jsonl"), *a_ckpt = cliutil_tmp("a.ckpt"), *b_log = cliutil_tmp("b.jsonl"),
               *b_ckpt = cliutil_tmp("b.ckpt");
#define COMMON "--preset", "tiny", "--steps", "20", "--eval-interval", "5", "--seed", "7", "--dropout", "0.1", \
               "--data", corpus, "--quiet"
    Run r = RUN("train", COMMON, "--log", a_log, "--out", a_ckpt);
    cliutil_expect_ok(&r, "run A");
    cliutil_run_free(&r);
    r = RUN("train", COMMON, "--stop-after", "10", "--log", b_log, "--out", b_ckpt);
    cliutil_expect_ok(&r, "run B1 (--stop-after 10)");
    cr_assert(strstr(r.err, "train: done: step 10"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
#undef COMMON
    // resuming fixes everything but the data (and the log, which is appended to)
    r = RUN("train", "--resume", b_ckpt, "--log", b_log, "--data", corpus, "--quiet");
    cliutil_expect_ok(&r, "run B2 (--resume)");
    cr_assert(strstr(r.err, "steps 10..20"), "stderr:\n%s", r.err);
    cr_assert(strstr(r.err, "train: done: step 20"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);

    static Log a, b;
    read_log(a_log, &a);
    read_log(b_log, &b);
    for (int s = 1; s <= N_STEPS; s++) {
        cr_assert_str_eq(a.train_loss[s], b.train_loss[s], "train_loss differs at step %d: %s vs %s", s,
                         a.train_loss[s], b.train_loss[s]);
        cr_assert_str_eq(a.val_loss[s], b.val_loss[s], "val_loss differs at step %d: %s vs %s", s, a.val_loss[s],
                         b.val_loss[s]);
        cr_assert_str_eq(a.lr[s], b.lr[s], "lr differs at step %d", s);
        cr_assert_str_eq(a.grad_norm[s], b.grad_norm[s], "grad_norm differs at step %d", s);
    }
    cr_assert(cliutil_files_equal(a_ckpt, b_ckpt), "the final checkpoints of the straight and the resumed run differ");
}

Test(resume, dropout_changes_the_run) {
    // the same as run A without dropout gives other losses from step 1 on: the dropout masks are part of the
    // state the bit_exact test checks
    const char *corpus = cliutil_write_corpus();
    const char *with = cliutil_tmp("with.jsonl"), *without = cliutil_tmp("without.jsonl");
    Run r = RUN("train", "--preset", "tiny", "--steps", "20", "--eval-interval", "5", "--seed", "7", "--dropout",
                "0.1", "--data", corpus, "--quiet", "--log", with, "--out", cliutil_tmp("with.ckpt"));
    cliutil_expect_ok(&r, "dropout 0.1");
    cliutil_run_free(&r);
    r = RUN("train", "--preset", "tiny", "--steps", "20", "--eval-interval", "5", "--seed", "7", "--data", corpus,
            "--quiet", "--log", without, "--out", cliutil_tmp("without.ckpt"));
    cliutil_expect_ok(&r, "dropout 0");
    cliutil_run_free(&r);
    static Log a, b;
    read_log(with, &a);
    read_log(without, &b);
    cr_assert_str_neq(a.train_loss[1], b.train_loss[1], "dropout 0.1 should change the first step's loss");
}

Test(resume, stop_after_and_finished_runs) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_tmp("b.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "20", "--stop-after", "10", "--data", corpus, "--out", ckpt,
                "--quiet");
    cliutil_expect_ok(&r, "--stop-after 10");
    cliutil_run_free(&r);
    r = RUN("train", "--resume", ckpt, "--stop-after", "5", "--data", corpus, "--quiet");
    EXPECT_ERROR(&r, "train", "--stop-after 5 is not past the checkpoint's step 10");
    cliutil_run_free(&r);
    r = RUN("train", "--resume", ckpt, "--seed", "3", "--data", corpus, "--quiet");
    EXPECT_ERROR(&r, "train", "cannot be changed when resuming");
    cliutil_run_free(&r);
    // --steps may extend a resumed run
    r = RUN("train", "--resume", ckpt, "--steps", "25", "--stop-after", "12", "--data", corpus, "--quiet");
    cliutil_expect_ok(&r, "--resume --steps 25 --stop-after 12");
    cr_assert(strstr(r.err, "steps 10..25") && strstr(r.err, "train: done: step 12"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
}
