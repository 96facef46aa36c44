// End-to-end tests of build/train and build/infer as programs, suite `cli`: every user error gives exit status 1
// and exactly one line on stderr that starts with the program's name and says what is wrong; the success paths
// (training, generation, scoring, uptraining to MQA/GQA) work; and a failed save keeps the previous checkpoint.
// Stopping and resuming a run: test_resume.c. The helpers (temporary directory, running the programs): cli_util.h.
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"
#include "../common/device.h"

TestSuite(cli, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

// --- train: user errors -----------------------------------------------------------------------------------

Test(cli, train_help) {
    Run r = RUN("train", "--help");
    cliutil_expect_ok(&r, "train --help");
    cr_assert(strncmp(r.out, "usage: build/train", 18) == 0, "usage goes to stdout, got:\n%s", r.out);
    cr_assert_eq(r.err_len, 0);
    cliutil_run_free(&r);
}

Test(cli, train_unknown_flag) {
    Run r = RUN("train", "--bogus");
    EXPECT_ERROR(&r, "train", "unknown flag '--bogus'", "--help");
    cliutil_run_free(&r);
    r = RUN("train", "stray");
    EXPECT_ERROR(&r, "train", "unexpected argument 'stray'");
    cliutil_run_free(&r);
}

Test(cli, train_attn_malformed) {
    const char *specs[] = {"gqa", "gqa:x", "foo", "gqa:", "gqa:0", "gqa:-2", "MHA"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        char flag[64], quoted[64];
        snprintf(flag, sizeof flag, "--attn=%s", specs[i]);
        snprintf(quoted, sizeof quoted, "'%s'", specs[i]);
        Run r = RUN("train", flag);
        EXPECT_ERROR(&r, "train", "bad --attn", quoted, "mha", "gqa:G", "mqa");
        cliutil_run_free(&r);
    }
    Run r = RUN("train", "--attn"); // no value at all
    EXPECT_ERROR(&r, "train", "--attn needs a value");
    cliutil_run_free(&r);
}

Test(cli, train_attn_must_divide_heads) {
    // the default preset (small) has 16 heads
    Run r = RUN("train", "--attn=gqa:3");
    EXPECT_ERROR(&r, "train", "gqa:3", "divide", "n_head is 16");
    cliutil_run_free(&r);
    r = RUN("train", "--preset", "tiny", "--heads", "16", "--attn", "gqa:3");
    EXPECT_ERROR(&r, "train", "gqa:3", "divide", "n_head is 16");
    cliutil_run_free(&r);
    r = RUN("train", "--preset", "tiny", "--attn", "gqa:8"); // more groups than tiny's 4 heads
    EXPECT_ERROR(&r, "train", "gqa:8", "n_head is 4");
    cliutil_run_free(&r);
}

Test(cli, train_missing_data) {
    const char *missing = cliutil_tmp("no-such-corpus.txt");
    Run r = RUN("train", "--preset", "tiny", "--data", missing, "--out", cliutil_tmp("x.ckpt"), "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open", missing, "No such file");
    cliutil_run_free(&r);
    const char *under_missing_dir = cliutil_tmp("no-such-dir/corpus.txt");
    r = RUN("train", "--preset", "tiny", "--data", under_missing_dir, "--out", cliutil_tmp("x.ckpt"), "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open", under_missing_dir);
    cliutil_run_free(&r);
    cr_assert_neq(access(cliutil_tmp("x.ckpt"), F_OK), 0, "no checkpoint should be written");
}

Test(cli, train_log_unwritable) {
    const char *corpus = cliutil_write_corpus();
    const char *log = cliutil_tmp("no-such-dir/run.jsonl");
    Run r = RUN("train", "--preset", "tiny", "--steps", "2", "--data", corpus, "--log", log, "--out",
                cliutil_tmp("x.ckpt"), "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open log file", log);
    cliutil_run_free(&r);
    cr_assert_neq(access(cliutil_tmp("x.ckpt"), F_OK), 0, "no checkpoint should be written");
}

Test(cli, train_data_is_a_directory) {
    // Tests run as root, where chmod 000 does not stop reads; a directory is the unreadable file here.
    Run r = RUN("train", "--preset", "tiny", "--data", cliutil_dir, "--out", cliutil_tmp("x.ckpt"), "--quiet");
    EXPECT_ERROR(&r, "train", cliutil_dir);
    cr_assert(strstr(r.err, "directory") || strstr(r.err, "not a regular file"),
              "the message should say the path is a directory / not a regular file, got:\n%s", r.err);
    cliutil_run_free(&r);
}

Test(cli, train_resume_missing) {
    const char *missing = cliutil_tmp("missing.ckpt");
    Run r = RUN("train", "--resume", missing, "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open checkpoint", missing);
    cliutil_run_free(&r);
}

Test(cli, train_resume_garbage) {
    const char *garbage = cliutil_tmp("garbage.ckpt");
    unsigned char bytes[3000];
    unsigned s = 12345;
    for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (unsigned char)((s = s * 1103515245u + 12345u) >> 16);
    cliutil_write_file(garbage, bytes, sizeof bytes);
    Run r = RUN("train", "--resume", garbage, "--quiet");
    EXPECT_ERROR(&r, "train", garbage, "not a kvlab checkpoint");
    cliutil_run_free(&r);
    // an empty file, and one holding text
    const char *empty = cliutil_tmp("empty.ckpt");
    cliutil_write_file(empty, "", 0);
    r = RUN("train", "--resume", empty, "--quiet");
    EXPECT_ERROR(&r, "train", empty);
    cliutil_run_free(&r);
    const char *text = cliutil_tmp("text.ckpt");
    cliutil_write_file(text, cliutil_corpus_text, strlen(cliutil_corpus_text));
    r = RUN("train", "--resume", text, "--quiet");
    EXPECT_ERROR(&r, "train", text, "not a kvlab checkpoint");
    cliutil_run_free(&r);
}

Test(cli, train_bad_numbers) {
    Run r = RUN("train", "--steps", "abc");
    EXPECT_ERROR(&r, "train", "--steps expects an integer, got 'abc'");
    cliutil_run_free(&r);
    r = RUN("train", "--lr", "-1");
    EXPECT_ERROR(&r, "train", "--lr must be in", "got -1");
    cliutil_run_free(&r);
    r = RUN("train", "--steps", "0");
    EXPECT_ERROR(&r, "train", "--steps must be in", "got 0");
    cliutil_run_free(&r);
    r = RUN("train", "--steps", "12x");
    EXPECT_ERROR(&r, "train", "--steps expects an integer, got '12x'");
    cliutil_run_free(&r);
    r = RUN("train", "--lr", "fast");
    EXPECT_ERROR(&r, "train", "--lr expects a number, got 'fast'");
    cliutil_run_free(&r);
    r = RUN("train", "--lr", "nan");
    EXPECT_ERROR(&r, "train", "--lr expects a number, got 'nan'");
    cliutil_run_free(&r);
    r = RUN("train", "--dropout", "1.5");
    EXPECT_ERROR(&r, "train", "--dropout must be in", "got 1.5");
    cliutil_run_free(&r);
    r = RUN("train", "--seed", "-3");
    EXPECT_ERROR(&r, "train", "--seed expects a non-negative integer, got '-3'");
    cliutil_run_free(&r);
    r = RUN("train", "--steps");
    EXPECT_ERROR(&r, "train", "--steps needs a value");
    cliutil_run_free(&r);
}

Test(cli, train_unknown_preset) {
    Run r = RUN("train", "--preset", "huge");
    EXPECT_ERROR(&r, "train", "unknown preset 'huge'", "small", "baby", "shakespeare", "tiny");
    cliutil_run_free(&r);
}

Test(cli, train_device) {
    Run r;
    if (!device_cuda_available(NULL)) { // one line naming why, never a crash
        r = RUN("train", "--preset", "tiny", "--steps", "1", "--device", "cuda", "--out", cliutil_tmp("cuda.ckpt"));
        EXPECT_ERROR(&r, "train", "--device cuda: ");
        cliutil_run_free(&r);
    }
    r = RUN("train", "--device", "tpu");
    EXPECT_ERROR(&r, "train", "bad --device 'tpu'", "cpu");
    cliutil_run_free(&r);
}

Test(cli, train_conflicting_modes) {
    // both rejected before any file is opened
    Run r = RUN("train", "--resume", cliutil_tmp("a.ckpt"), "--init-from", cliutil_tmp("b.ckpt"));
    EXPECT_ERROR(&r, "train", "--resume and --init-from cannot be combined");
    cliutil_run_free(&r);
    r = RUN("train", "--resume", cliutil_tmp("a.ckpt"), "--attn", "mqa");
    EXPECT_ERROR(&r, "train", "--attn cannot be changed when resuming");
    cliutil_run_free(&r);
    r = RUN("train", "--resume", cliutil_tmp("a.ckpt"), "--lr", "0.1");
    EXPECT_ERROR(&r, "train", "cannot be changed when resuming");
    cliutil_run_free(&r);
}

// --- infer: user errors -----------------------------------------------------------------------------------

Test(cli, infer_help) {
    Run r = RUN("infer", "--help");
    cliutil_expect_ok(&r, "infer --help");
    cr_assert(strncmp(r.out, "usage: build/infer", 18) == 0, "usage goes to stdout, got:\n%s", r.out);
    cliutil_run_free(&r);
}

Test(cli, infer_missing_ckpt_flag) {
    Run r = RUN("infer", "--prompt", "the");
    EXPECT_ERROR(&r, "infer", "--ckpt FILE is required");
    cliutil_run_free(&r);
}

Test(cli, infer_missing_ckpt_file) {
    const char *missing = cliutil_tmp("missing.ckpt");
    Run r = RUN("infer", "--ckpt", missing, "--prompt", "the");
    EXPECT_ERROR(&r, "infer", "cannot open checkpoint", missing, "No such file");
    cliutil_run_free(&r);
}

Test(cli, infer_garbage_ckpt) {
    const char *garbage = cliutil_tmp("garbage.ckpt");
    char bytes[2048];
    for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (char)(i * 37 + 11);
    cliutil_write_file(garbage, bytes, sizeof bytes);
    Run r = RUN("infer", "--ckpt", garbage, "--prompt", "the");
    EXPECT_ERROR(&r, "infer", garbage, "not a kvlab checkpoint");
    cliutil_run_free(&r);
}

Test(cli, infer_truncated_ckpt) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "x.ckpt");
    size_t len = 0;
    char *bytes = cliutil_read_file(ckpt, &len);
    cr_assert_not_null(bytes);
    const char *half = cliutil_tmp("half.ckpt");
    cliutil_write_file(half, bytes, len / 2);
    free(bytes);
    Run r = RUN("infer", "--ckpt", half, "--prompt", "the");
    EXPECT_ERROR(&r, "infer", half, "truncated");
    cliutil_run_free(&r);
}

Test(cli, infer_prompt_outside_vocabulary) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "x.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--prompt", "theZ", "-n", "5");
    EXPECT_ERROR(&r, "infer", "prompt character 'Z'", "not in the model's vocabulary");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the caf\xc3\xa9", "-n", "5"); // UTF-8 e-acute
    EXPECT_ERROR(&r, "infer", "0xc3", "not in the model's vocabulary");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "two\nlines", "-n", "5"); // no newline in the corpus
    EXPECT_ERROR(&r, "infer", "0x0a", "not in the model's vocabulary");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "", "-n", "5");
    EXPECT_ERROR(&r, "infer", "--prompt is empty");
    cliutil_run_free(&r);
}

Test(cli, infer_mode_errors) {
    // all rejected before the checkpoint is opened
    const char *ckpt = cliutil_tmp("unused.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt);
    EXPECT_ERROR(&r, "infer", "--prompt", "--eval");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--eval", cliutil_tmp("c.txt"));
    EXPECT_ERROR(&r, "infer", "separate modes");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--bogus");
    EXPECT_ERROR(&r, "infer", "unknown flag '--bogus'");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--kv", "window");
    EXPECT_ERROR(&r, "infer", "bad --kv 'window'", "full");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--device", "tpu");
    EXPECT_ERROR(&r, "infer", "bad --device 'tpu'", "cpu, cuda");
    cliutil_run_free(&r);
    r = RUN("infer", "attention", "--ckpt", ckpt, "--matrix-out", "/tmp", "--device", "cuda");
    EXPECT_ERROR(&r, "infer attention", "--device cuda runs `build/infer score`, `generate` and `kv`");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--device", "cuda", "--kv", "h2o:8,4");
    EXPECT_ERROR(&r, "infer", "--kv 'h2o:8,4' does not run on cuda", "window:W");
    cliutil_run_free(&r);
    if (!device_cuda_available(NULL)) {
        r = RUN("infer", "--ckpt", ckpt, "--eval", ckpt, "--device", "cuda");
        EXPECT_ERROR(&r, "infer", "--device cuda: ");
        cliutil_run_free(&r);
    }
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "-n", "many");
    EXPECT_ERROR(&r, "infer", "-n expects an integer, got 'many'");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--top-p", "0");
    EXPECT_ERROR(&r, "infer", "--top-p must be in");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--temperature", "-1");
    EXPECT_ERROR(&r, "infer", "--temperature must be in");
    cliutil_run_free(&r);
}

Test(cli, infer_eval_errors) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "x.ckpt");
    const char *missing = cliutil_tmp("missing.txt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", missing);
    EXPECT_ERROR(&r, "infer", "cannot open", missing, "No such file");
    cliutil_run_free(&r);
    // nothing in the vocabulary: nothing to score
    const char *upper = cliutil_tmp("upper.txt");
    cliutil_write_file(upper, "ZZZZ", 4);
    r = RUN("infer", "--ckpt", ckpt, "--eval", upper);
    EXPECT_ERROR(&r, "infer", upper, "4 bytes outside the vocabulary");
    cliutil_run_free(&r);
}

Test(cli, infer_eval_directory) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "x.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", cliutil_dir);
    EXPECT_ERROR(&r, "infer", cliutil_dir);
    cr_assert(strstr(r.err, "directory") || strstr(r.err, "not a regular file"),
              "the message should say the path is a directory / not a regular file, got:\n%s", r.err);
    cliutil_run_free(&r);
}

// --- success paths ----------------------------------------------------------------------------------------

Test(cli, train_tiny_writes_checkpoint) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_tmp("x.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", ckpt, "--quiet");
    cliutil_expect_ok(&r, "train");
    cr_assert(strstr(r.err, "vocab 27"), "the lowercase corpus has 27 characters; stderr:\n%s", r.err);
    char line[512];
    cliutil_last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: done: step 5", 19) == 0, "last line: %s", line);
    cr_assert(strstr(line, ckpt), "last line should name the checkpoint: %s", line);
    cliutil_run_free(&r);
    struct stat st;
    cr_assert_eq(stat(ckpt, &st), 0, "no checkpoint at %s", ckpt);
    cr_assert_gt(st.st_size, 0);
    // the atomic save's temporary file is gone: the directory holds just the corpus and the checkpoint
    cr_assert_eq(cliutil_count_entries(), 2);
}

Test(cli, infer_generate_and_seeds) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "x.ckpt");
    char *a = cliutil_generate(ckpt, "the", 20, ARGS("--seed", "1"));
    char *b = cliutil_generate(ckpt, "the", 20, ARGS("--seed", "1"));
    cr_assert_str_eq(a, b, "the same seed must give the same text");
    char *c = cliutil_generate(ckpt, "the", 20, ARGS("--seed", "2"));
    cr_assert_str_neq(a, c, "a near-untrained model at temperature 0.8 should not repeat 20 characters exactly");
    free(a), free(b), free(c);
}

Test(cli, infer_greedy_is_deterministic) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "x.ckpt");
    char *a = cliutil_generate(ckpt, "the", 20, ARGS("--temperature", "0", "--seed", "1"));
    char *b = cliutil_generate(ckpt, "the", 20, ARGS("--temperature", "0", "--seed", "99"));
    cr_assert_str_eq(a, b, "greedy decoding must not depend on the seed");
    free(a), free(b);
}

Test(cli, infer_generate_past_context) {
    // tiny's context is 32: a 60-character prompt keeps its newest tokens, and generation runs past the
    // context by rebuilding the cache
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "x.ckpt");
    char *a = cliutil_generate(ckpt, "the quick brown fox jumps over the lazy dog and then it runs", 100,
                               ARGS("--seed", "3"));
    free(a);
    char *b = cliutil_generate(ckpt, "the", 0, NULL);
    cr_assert_str_eq(b, "the\n");
    free(b);
}

Test(cli, infer_eval) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "x.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", corpus);
    cliutil_expect_ok(&r, "infer --eval");
    cr_assert(strncmp(r.out, "eval: ", 6) == 0 && strchr(r.out, '\n') == r.out + r.out_len - 1,
              "one eval line expected, got:\n%s", r.out);
    double loss, ppl;
    size_t n;
    cliutil_parse_eval(r.out, &loss, &ppl, &n);
    cr_assert(isfinite(ppl) && ppl > 1.0, "perplexity should be a finite number > 1: %s", r.out);
    cr_assert(ppl < 2 * 27, "5 steps on a 27-character corpus should not be far worse than uniform: %s", r.out);
    cr_assert_lt(fabs(log(ppl) - loss), 1e-3, "perplexity should be exp(loss): %s", r.out);
    cr_assert_gt(n, 1000, "%s", r.out);
    cliutil_run_free(&r);
}

Test(cli, infer_eval_skips_oov) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "x.ckpt");
    // 6 bytes outside the vocabulary: T, Q, the comma, '!', the newline and T again
    const char *text = "The Quick brown fox, jumps over the lazy dog!\nand Then";
    const char *path = cliutil_tmp("oov.txt");
    cliutil_write_file(path, text, strlen(text));
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", path);
    cliutil_expect_ok(&r, "infer --eval with out-of-vocabulary bytes");
    double loss, ppl;
    size_t n;
    cliutil_parse_eval(r.out, &loss, &ppl, &n);
    cr_assert(isfinite(ppl) && ppl > 1.0, "%s", r.out);
    cr_assert(strstr(r.out, "6 bytes outside the model's vocabulary were skipped"), "got:\n%s", r.out);
    cr_assert_eq(n + 1 + 6, strlen(text), "every in-vocabulary token but the first is scored: %s", r.out);
    cliutil_run_free(&r);
}

Test(cli, train_gqa8_default_preset) {
    // the default preset (small, 16 heads) as is, on the real corpus: two steps, then the end-of-run eval
    if (access("data/tinyshakespeare.txt", R_OK) != 0)
        cr_assert_fail("data/tinyshakespeare.txt not found: run the tests from the repository root");
    const char *ckpt = cliutil_tmp("gqa8.ckpt");
    Run r = RUN("train", "--attn=gqa:8", "--steps", "2", "--quiet", "--out", ckpt);
    cliutil_expect_ok(&r, "train --attn=gqa:8");
    cr_assert(strstr(r.err, "16 heads, 8 kv heads (gqa8)"), "stderr:\n%s", r.err);
    cr_assert(strstr(r.err, "vocab 65"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "ROMEO:", "-n", "10");
    cliutil_expect_ok(&r, "infer on the gqa:8 checkpoint");
    cr_assert(strncmp(r.out, "ROMEO:", 6) == 0 && r.out_len == 6 + 10 + 1, "got:\n%s", r.out);
    cliutil_run_free(&r);
}

Test(cli, failed_save_keeps_previous_checkpoint) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "x.ckpt");
    const char *copy = cliutil_tmp("x-copy.ckpt");
    size_t len = 0;
    char *bytes = cliutil_read_file(ckpt, &len);
    cliutil_write_file(copy, bytes, len);
    free(bytes);

    // into a directory that does not exist
    const char *bad = cliutil_tmp("no-such-dir/x.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", bad, "--quiet");
    cr_assert_eq(r.status, 1, "a failed save must fail the run; stderr:\n%s", r.err);
    char line[1024];
    cliutil_last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: cannot save checkpoint", 29) == 0 && strstr(line, bad),
              "the last line should say the save failed, got:\n%s", r.err);
    cr_assert_null(strstr(r.err, "train: done"), "a failed run must not report 'done':\n%s", r.err);
    cliutil_run_free(&r);

    // through a regular file used as a directory
    char through[300];
    snprintf(through, sizeof through, "%s/sub.ckpt", ckpt);
    r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", through, "--quiet");
    cr_assert_eq(r.status, 1, "stderr:\n%s", r.err);
    cliutil_last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: cannot save checkpoint", 29) == 0, "got:\n%s", r.err);
    cliutil_run_free(&r);

    cr_assert(cliutil_files_equal(ckpt, copy), "the previous checkpoint must be untouched");
    cr_assert_eq(cliutil_count_entries(), 3, "no temporary files should be left behind (corpus, x.ckpt, its copy)");
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "-n", "5");
    cliutil_expect_ok(&r, "infer on the kept checkpoint");
    cliutil_run_free(&r);
}

Test(cli, init_from_mqa_and_gqa) {
    const char *corpus = cliutil_write_corpus();
    const char *mha = cliutil_train_tiny(corpus, "mha.ckpt");
    const char *mqa = cliutil_tmp("mqa.ckpt");
    Run r = RUN("train", "--init-from", mha, "--attn", "mqa", "--steps", "3", "--data", corpus, "--out", mqa,
                "--quiet");
    cliutil_expect_ok(&r, "train --init-from --attn mqa");
    cr_assert(strstr(r.err, "4 heads, 1 kv heads (mqa)"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
    char *text = cliutil_generate(mqa, "the", 20, ARGS("--seed", "1"));
    free(text);

    const char *gqa = cliutil_tmp("gqa.ckpt");
    r = RUN("train", "--preset", "tiny", "--init-from", mha, "--attn", "gqa:2", "--steps", "3", "--data", corpus,
            "--out", gqa, "--quiet");
    cliutil_expect_ok(&r, "train --init-from --attn gqa:2");
    cr_assert(strstr(r.err, "4 heads, 2 kv heads (gqa2)"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
    text = cliutil_generate(gqa, "the", 20, ARGS("--seed", "1"));
    free(text);

    // first-head initialisation instead of mean-pooling (layers/convert.c; model.convert_kv_heads_first_head)
    const char *first = cliutil_tmp("first.ckpt");
    r = RUN("train", "--preset", "tiny", "--init-from", mha, "--attn", "gqa:2", "--kv-init", "first", "--steps", "3",
            "--data", corpus, "--out", first, "--quiet");
    cliutil_expect_ok(&r, "train --init-from --attn gqa:2 --kv-init first");
    cliutil_run_free(&r);
    r = RUN("train", "--preset", "tiny", "--init-from", mha, "--attn", "gqa:2", "--kv-init", "median", "--out", first);
    EXPECT_ERROR(&r, "train", "bad --kv-init 'median': valid values are mean, first");
    r = RUN("train", "--preset", "tiny", "--kv-init", "first", "--out", first);
    EXPECT_ERROR(&r, "train", "--kv-init applies to --init-from with fewer key/value heads");
    r = RUN("train", "--preset", "tiny", "--init-from", mha, "--kv-init", "first", "--data", corpus, "--out", first);
    EXPECT_ERROR(&r, "train", "--kv-init: nothing to convert");

    // extending the context: the tiny preset's 32 becomes 48 (the banner names the training context)
    const char *longer = cliutil_tmp("long.ckpt");
    r = RUN("train", "--preset", "tiny", "--init-from", mha, "--context", "48", "--steps", "2", "--data", corpus,
            "--out", longer, "--quiet");
    cliutil_expect_ok(&r, "train --init-from --context 48");
    cr_assert(strstr(r.err, "context 48"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
}

Test(cli, init_from_errors) {
    const char *corpus = cliutil_write_corpus();
    const char *mha = cliutil_train_tiny(corpus, "mha.ckpt");
    const char *mqa = cliutil_tmp("mqa.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--init-from", mha, "--attn", "mqa", "--steps", "3", "--data", corpus,
                "--out", mqa, "--quiet");
    cliutil_expect_ok(&r, "train --init-from --attn mqa");
    cliutil_run_free(&r);
    // more key/value heads than the checkpoint has
    r = RUN("train", "--init-from", mqa, "--attn", "mha", "--steps", "3", "--data", corpus, "--out",
            cliutil_tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "--init-from can only reduce key/value heads", "1 -> 4");
    cliutil_run_free(&r);
    r = RUN("train", "--init-from", mqa, "--attn", "gqa:2", "--steps", "3", "--data", corpus, "--out",
            cliutil_tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "can only reduce key/value heads", "1 -> 2");
    cliutil_run_free(&r);
    // groups that do not divide the checkpoint's 4 heads
    r = RUN("train", "--init-from", mha, "--attn", "gqa:3", "--steps", "3", "--data", corpus, "--out",
            cliutil_tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "gqa:3", "n_head is 4");
    cliutil_run_free(&r);
    // the shape comes from the checkpoint
    r = RUN("train", "--init-from", mha, "--layers", "3", "--data", corpus, "--out", cliutil_tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "--init-from takes the model shape from the checkpoint");
    cliutil_run_free(&r);
    r = RUN("train", "--init-from", mha, "--context", "8", "--data", corpus, "--out", cliutil_tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "can only extend the context");
    cliutil_run_free(&r);
    r = RUN("train", "--init-from", cliutil_tmp("missing.ckpt"), "--data", corpus);
    EXPECT_ERROR(&r, "train", "cannot open checkpoint");
    cliutil_run_free(&r);
    cr_assert_neq(access(cliutil_tmp("y.ckpt"), F_OK), 0, "no checkpoint should be written by a failed run");
}

// --attention: a bad value is one line; flash and naive train the same model (the same function up to float
// rounding: the validation losses after 5 steps agree to 1e-3)
static double val_loss_of(const Run *r) {
    const char *p = strstr(r->err, "val loss ");
    cr_assert_not_null(p, "no 'val loss' in:\n%s", r->err);
    return atof(p + strlen("val loss "));
}

Test(cli, train_attention_flash_and_naive) {
    Run r = RUN("train", "--preset", "tiny", "--attention", "tiled");
    EXPECT_ERROR(&r, "train", "bad --attention 'tiled': valid values are naive, flash");
    cliutil_run_free(&r);
    const char *corpus = cliutil_write_corpus();
    double loss[2];
    const char *forms[] = {"naive", "flash"};
    for (int i = 0; i < 2; i++) {
        r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", cliutil_tmp(forms[i]),
                "--attention", forms[i], "--quiet");
        cliutil_expect_ok(&r, forms[i]);
        loss[i] = val_loss_of(&r);
        cliutil_run_free(&r);
    }
    cr_expect(fabs(loss[0] - loss[1]) < 1e-3, "val loss naive %.4f, flash %.4f", loss[0], loss[1]);
}
