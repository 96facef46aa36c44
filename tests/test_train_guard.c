// End-to-end tests of build/train's guards, suite `train_guard`: what --out may replace and when that is
// checked, divergence stopping the run before anything non-finite is saved, checked --log writes, a run
// refused before it allocates more memory than the machine has, and the bounds on the long-running settings.
// The helpers (temporary directory, running the programs): cli_util.h.
#include <criterion/criterion.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cli_util.h"
#include "../checkpoints/checkpoint.h"

TestSuite(train_guard, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

static mode_t file_type(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s is gone", path);
    return st.st_mode & S_IFMT;
}

// A short run that would save at its end onto out: refused before training, one line, out left as it was.
static void expect_out_refused(const char *corpus, const char *out, const char *phrase) {
    Run r = RUN("train", "--preset", "tiny", "--steps", "2", "--data", corpus, "--out", out, "--quiet");
    EXPECT_ERROR(&r, "train", "cannot save checkpoint", out, phrase);
    cliutil_run_free(&r);
}

Test(train_guard, out_refuses_fifo_directory_and_device) {
    const char *corpus = cliutil_write_corpus();
    const char *fifo = cliutil_tmp("fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    expect_out_refused(corpus, fifo, "is a FIFO, not a regular file");
    cr_assert_eq(file_type(fifo), S_IFIFO, "the FIFO was replaced");

    const char *dir = cliutil_tmp("dir");
    cr_assert_eq(mkdir(dir, 0700), 0);
    expect_out_refused(corpus, dir, "is a directory");
    cr_assert_eq(file_type(dir), S_IFDIR);

    // a device node of our own (the null device's numbers), never the real /dev/null
    const char *dev = cliutil_tmp("null-device");
    if (mknod(dev, S_IFCHR | 0600, makedev(1, 3)) == 0) {
        expect_out_refused(corpus, dev, "is a character device");
        cr_assert_eq(file_type(dev), S_IFCHR, "the device node was replaced");
    } else {
        cr_log_warn("mknod is not allowed here, the device case is not run");
    }
}

Test(train_guard, out_refuses_a_file_that_is_not_a_checkpoint_unless_forced) {
    const char *corpus = cliutil_write_corpus();
    const char *precious = cliutil_tmp("notes.txt");
    cliutil_write_file(precious, cliutil_corpus_text, strlen(cliutil_corpus_text));
    Run r = RUN("train", "--preset", "tiny", "--steps", "2", "--data", corpus, "--out", precious, "--quiet");
    EXPECT_ERROR(&r, "train", "is not a kvlab checkpoint", precious, "--force");
    cliutil_run_free(&r);
    size_t len = 0;
    char *kept = cliutil_read_file(precious, &len);
    cr_assert(kept && len == strlen(cliutil_corpus_text) && memcmp(kept, cliutil_corpus_text, len) == 0,
              "the file was modified");
    free(kept);

    r = RUN("train", "--preset", "tiny", "--steps", "2", "--data", corpus, "--out", precious, "--quiet", "--force");
    cliutil_expect_ok(&r, "--force");
    cliutil_run_free(&r);
    // replacing one's own checkpoint needs no --force
    r = RUN("train", "--preset", "tiny", "--steps", "2", "--data", corpus, "--out", precious, "--quiet");
    cliutil_expect_ok(&r, "replacing a checkpoint");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", precious, "--prompt", "the", "-n", "3");
    cliutil_expect_ok(&r, "infer on the forced checkpoint");
    cliutil_run_free(&r);
}

Test(train_guard, out_directory_is_checked_before_training) {
    const char *corpus = cliutil_write_corpus();
    const char *bad = cliutil_tmp("no-such-dir/x.ckpt");
    // one line and nothing else: no banner, no training, then a failed first save
    Run r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", bad);
    EXPECT_ERROR(&r, "train", "cannot save checkpoint", bad, "No such file or directory");
    cliutil_run_free(&r);
    cr_assert_eq(cliutil_count_entries(), 1, "only the corpus may be there");
}

// Whether text holds a bare nan or inf (any case) starting a word: what a JSON reader refuses. The log's keys
// hold neither word.
static int has_bare_nonfinite(const char *text) {
    for (const char *p = text; *p; p++) {
        if (p > text && (isalnum((unsigned char)p[-1]) || p[-1] == '_')) continue;
        if (strncasecmp(p, "nan", 3) == 0 || strncasecmp(p, "inf", 3) == 0) return 1;
    }
    return 0;
}

Test(train_guard, divergence_stops_before_saving_and_keeps_the_last_good_checkpoint) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_tmp("d.ckpt"), *log = cliutil_tmp("d.jsonl");
    Run r = RUN("train", "--preset", "tiny", "--steps", "60", "--eval-interval", "1", "--lr", "9.9", "--grad-clip",
                "0", "--warmup", "0", "--weight-decay", "0", "--beta2", "0", "--data", corpus, "--out", ckpt, "--log",
                log, "--quiet");
    cr_assert_eq(r.status, 1, "a diverged run must exit 1; stderr:\n%s", r.err);
    char line[1024];
    cliutil_last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: diverged at step ", 24) == 0, "the last line should say so, got:\n%s", r.err);
    cr_assert(strstr(line, "last good checkpoint kept: ") && strstr(line, ckpt), "%s", line);
    cr_assert_null(strstr(r.err, "train: done"), "%s", r.err);
    cr_assert_null(strstr(r.err, "internal check"), "%s", r.err);
    cliutil_run_free(&r);

    // the checkpoint on disk is the last good one: it loads, every weight finite
    Model m;
    Tokenizer tok;
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_load(ckpt, &m, &ops_cpu, &tok, NULL, NULL, NULL, err), 0, "%s", err);
    char what[160];
    cr_assert_eq(model_params_describe_nonfinite(&m.cfg, m.params_memory, what, sizeof what), 0, "%s", what);
    model_free(&m);

    // every log line is JSON: a number that is not finite is null
    char *text = cliutil_read_file(log, NULL);
    cr_assert_not_null(text);
    cr_assert_not(has_bare_nonfinite(text), "the log holds a bare nan/inf:\n%s", text);
    cr_assert_not_null(strstr(text, "null"), "the diverged step's line should carry a null:\n%s", text);
    free(text);
}

Test(train_guard, failed_log_write_stops_the_run) {
    const char *corpus = cliutil_write_corpus();
    Run r = RUN("train", "--preset", "tiny", "--steps", "2", "--data", corpus, "--log", "/dev/full", "--out",
                cliutil_tmp("x.ckpt"), "--quiet");
    cr_assert_eq(r.status, 1, "a failed log write must fail the run; stderr:\n%s", r.err);
    char line[1024];
    cliutil_last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: cannot write log file '/dev/full'", 40) == 0, "got:\n%s", r.err);
    cr_assert(strstr(line, "No space left on device"), "%s", line);
    cr_assert_null(strstr(r.err, "train: done"), "%s", r.err);
    cliutil_run_free(&r);
}

Test(train_guard, run_larger_than_memory_is_refused_before_allocating) {
    const char *corpus = cliutil_write_corpus();
    Run r = RUN("train", "--preset", "tiny", "--batch", "65536", "--context", "4096", "--steps", "1", "--data",
                corpus, "--out", cliutil_tmp("x.ckpt"));
    EXPECT_ERROR(&r, "train", "batch 65536 x context 4096 needs", "TiB of activations", "this machine has");
    cliutil_run_free(&r);
    cr_assert_eq(cliutil_count_entries(), 1, "nothing may be written");
}

Test(train_guard, long_running_settings_are_bounded) {
    const char *missing = cliutil_tmp("never-read.txt"); // the flags are refused before any file is opened
    Run r = RUN("train", "--preset", "tiny", "--grad-accum", "65536", "--data", missing);
    EXPECT_ERROR(&r, "train", "--grad-accum must be in 1..1024", "got 65536");
    cliutil_run_free(&r);
    r = RUN("train", "--preset", "tiny", "--eval-windows", "1048576", "--data", missing);
    EXPECT_ERROR(&r, "train", "--eval-windows must be in 1..16384", "got 1048576");
    cliutil_run_free(&r);
    r = RUN("train", "--help");
    cr_assert(strstr(r.out, "--grad-accum 1..1024") && strstr(r.out, "--eval-windows 1..16384"), "%s", r.out);
    cliutil_run_free(&r);
}
