// End-to-end tests of build/infer's KV evaluations as a program, suite `cli_kv`: the --kv spec and the
// streaming, paged (--eval prefix), tier and reuse modes reject bad flags with one line and report what they
// promise on a tiny model. The other program tests: test_cli.c; the helpers: cli_util.h.
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_util.h"

TestSuite(cli_kv, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

Test(cli_kv, kv_eval_flags) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "kv.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "h2o:4");
    EXPECT_ERROR(&r, "infer", "bad --kv 'h2o:4'", "valid forms are", "h2o:H,R");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--json");
    EXPECT_ERROR(&r, "infer", "need --kv");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "full", "--kv-heads", "3");
    EXPECT_ERROR(&r, "infer", "cannot convert 4 key/value heads to 3");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "full", "--prefill", "40", "--context", "20");
    EXPECT_ERROR(&r, "infer", "prefill");
    cliutil_run_free(&r);
    // the test corpus has no '$': the recall task cannot be written in this vocabulary
    r = RUN("infer", "--ckpt", ckpt, "--eval", "recall", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "recall task needs the character");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "sink:2,window:6+int4", "--context", "64", "--json",
            "--kv-heads", "2", "--streams", "2");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"spec\": \"sink:2,window:6+int4\"") && strstr(r.out, "\"top1_agree\""), "%s", r.out);
    cliutil_run_free(&r);
    // the cache alone: nothing to compare with, so the reference's fields are null and its arrays absent
    r = RUN("infer", "kv", "--ckpt", ckpt, "--eval", corpus, "--kv", "window:6+fp16", "--context", "32", "--streams", "2",
            "--no-reference", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"ppl_full\": null, \"kl\": null, \"top1_agree\": null") && strstr(r.out, "\"reference\": 0") &&
              strstr(r.out, "\"stream_nll\"") && !strstr(r.out, "\"stream_nll_full\"") && !strstr(r.out, "\"stream_kl\""),
              "%s", r.out);
    cliutil_run_free(&r);
    // a per-token file that cannot be written says why
    r = RUN("infer", "kv", "--ckpt", ckpt, "--eval", corpus, "--kv", "window:6", "--context", "32", "--streams", "2",
            "--tokens-out", "/dev/full");
    EXPECT_ERROR(&r, "infer kv", "writing '/dev/full' failed: No space left on device");
    cliutil_run_free(&r);
}

// The paged pool's request workload: the spec and the mode go together, and reuse is exact.
Test(cli_kv, kv_eval_prefix) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "kv.ckpt");
    // a paged spec also runs the streaming eval: a window over pages of int4 rows
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "window:8+paged:4+int4", "--context", "32",
                "--streams", "2", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"spec\": \"window:8+paged:4+int4\"") && strstr(r.out, "\"kl\""), "%s", r.out);
    cliutil_run_free(&r);
    // perplexity against position: 4 buckets of the 16 scored positions start at 16, 20, 24, 28
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "window:8", "--context", "32", "--streams", "2",
            "--json", "--curve", "4");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"curve_position\": [16, 20, 24, 28]") && strstr(r.out, "\"curve_ppl_full\": ["), "%s", r.out);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "window:8", "--curve", "4");
    EXPECT_ERROR(&r, "infer", "--curve applies to the streaming eval with --json");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "window:8", "--context", "32", "--prefill", "30",
            "--json", "--curve", "4");
    EXPECT_ERROR(&r, "infer", "--curve 4: need 0..64 buckets");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "prefix", "--kv", "full", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "prefix (--eval prefix) needs a paged --kv");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "prefix", "--kv", "tova:8+paged:8", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "composes with full, window, sink, h2o or random selection only");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "prefix", "--kv", "paged:0", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "bad --kv 'paged:0'");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "prefix", "--kv", "paged:4", "--data", corpus, "--context", "20",
            "--prefill", "25");
    EXPECT_ERROR(&r, "infer", "--eval prefix: need 0 <= --prefill");
    cliutil_run_free(&r);
    // 4 requests of 30 tokens sharing 13: blocks of 4 reuse 3 shared blocks (12 tokens) from the second
    // request on; 30 tokens fill 8 blocks with 2 slots unused
    r = RUN("infer", "--ckpt", ckpt, "--eval", "prefix", "--kv", "paged:4", "--data", corpus, "--context", "30",
            "--prefill", "13", "--streams", "4", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"prefill_saved\": 36,") && strstr(r.out, "\"computed_tokens\": 84,"), "%s", r.out);
    cr_assert(strstr(r.out, "\"pool_bytes\": "), "%s", r.out);
    const char *d = strstr(r.out, "\"max_abs_logit_diff\": ");
    double diff = 1.0;
    cr_assert(d && sscanf(d + 22, "%lf", &diff) == 1 && diff <= 1e-5, "reuse is exact up to float order: %s", r.out);
    cr_assert(strstr(r.out, "\"top1_agree\": 1,"), "%s", r.out);
    cr_assert(strstr(r.out, "\"fragmentation\": 0.0625,"), "2 of 32 slots: %s", r.out);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "prefix", "--kv", "paged:4", "--data", corpus, "--context", "30",
            "--pool-blocks", "3");
    EXPECT_ERROR(&r, "infer", "pool exhausted");
    cliutil_run_free(&r);
    // int8 pages are shared like fp32 ones: the same blocks hit, the logits move a little
    r = RUN("infer", "--ckpt", ckpt, "--eval", "prefix", "--kv", "paged:4+int8", "--data", corpus, "--context", "30",
            "--prefill", "13", "--streams", "4", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"prefill_saved\": 36,"), "%s", r.out);
    d = strstr(r.out, "\"max_abs_logit_diff\": ");
    cr_assert(d && sscanf(d + 22, "%lf", &diff) == 1 && diff > 0 && diff < 0.5, "int8 pages: %s", r.out);
    cliutil_run_free(&r);
}

// The tier and reuse workloads: their flags go with their modes, and a small run reports what it promises.
Test(cli_kv, kv_eval_tier_and_reuse) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "kv.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "full", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "needs a paged --kv");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4+int8", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "--eval tier runs the plain fp32 pool");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "paged:4+tier:3");
    EXPECT_ERROR(&r, "infer", "--kv ...+tier:N applies to the tier mode");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4+tier:3", "--fast", "4", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "--fast 4 and tier:3 disagree");
    cliutil_run_free(&r);
    // the spec's tier:N is --fast N
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4+tier:3", "--data", corpus, "--prefetch",
            "reactive", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"fast_blocks\": 3,") && strstr(r.out, "\"top1_agree\": 1"), "%s", r.out);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--kv", "full", "--fast", "4");
    EXPECT_ERROR(&r, "infer", "--fast does not apply to kv (it is a flag of tier)");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4", "--data", corpus, "--slow-cold");
    EXPECT_ERROR(&r, "infer", "--slow-cold needs --slow-file PATH");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4", "--data", corpus, "--slow-file", corpus);
    EXPECT_ERROR(&r, "infer", "exists");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4", "--data", corpus, "--prefetch", "psychic");
    EXPECT_ERROR(&r, "infer", "psychic");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4", "--data", corpus, "--fast", "3",
            "--prefetch", "predictive", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"top1_agree\": 1"), "the tier never changes the result: %s", r.out);
    cliutil_run_free(&r);
    char slow[256];
    snprintf(slow, sizeof(slow), "%s.slow", corpus);
    remove(slow);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "tier", "--kv", "paged:4", "--data", corpus, "--fast", "3",
            "--prefetch", "reactive", "--slow-file", slow, "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"slow_tier\": \"file\"") && strstr(r.out, "\"top1_agree\": 1"), "%s", r.out);
    cr_assert(access(slow, F_OK) != 0, "the slow file is deleted after the run");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "reuse", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "--eval reuse needs --reuse lsh|semshare");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--reuse", "lsh");
    EXPECT_ERROR(&r, "infer", "--reuse does not apply to score (it is a flag of reuse)");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "reuse", "--reuse", "lsh", "--data", corpus, "--streams", "2",
            "--context", "24", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"identical\""), "%s", r.out);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "reuse", "--reuse", "lsh", "--data", corpus, "--deep-keep", "0.5");
    EXPECT_ERROR(&r, "infer", "--deep-keep applies to --reuse semshare");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "reuse", "--reuse", "semshare", "--data", corpus, "--streams", "2",
            "--context", "24", "--deep-keep", "0.5", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"deep_keep\": 0.5") && strstr(r.out, "\"kept_per_layer\""), "%s", r.out);
    cliutil_run_free(&r);
}

// Attention heat maps: the output directory goes with the mode; a run writes one PNG per layer and a summary.
Test(cli_kv, eval_attention) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "kv.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", "attention", "--data", corpus);
    EXPECT_ERROR(&r, "infer", "--eval attention needs --out DIR");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--eval", corpus, "--out", "/tmp");
    EXPECT_ERROR(&r, "infer", "--out does not apply to score (it is a flag of attention)");
    cliutil_run_free(&r);
    char dir[256], png[300];
    snprintf(dir, sizeof(dir), "%s.maps", corpus);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "attention", "--data", corpus, "--out", dir);
    EXPECT_ERROR(&r, "infer", "does not exist");
    cliutil_run_free(&r);
    mkdir(dir, 0755);
    r = RUN("infer", "--ckpt", ckpt, "--eval", "attention", "--data", corpus, "--out", dir, "--context", "20", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"type\": \"attn_summary\"") && strstr(r.out, "\"sink1\""), "%s", r.out);
    for (int l = 0; l < 2; l++) { // the tiny preset has 2 layers
        snprintf(png, sizeof(png), "%s/attn-layer%d.png", dir, l);
        cr_assert_eq(access(png, F_OK), 0, "%s", png);
    }
    cliutil_run_free(&r);
}

// Runs python3 scripts/heatmaps.py with args from the repository root; its output lands in *out (malloc'd).
static int heatmaps(const char *args, char **out) {
    char cmd[2048], log[300];
    snprintf(log, sizeof log, "%s", cliutil_tmp("heatmaps.log"));
    snprintf(cmd, sizeof cmd, "python3 scripts/heatmaps.py %s > '%s' 2>&1", args, log);
    int st = system(cmd);
    *out = cliutil_read_file(log, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void expect_png(const char *path) {
    size_t len = 0;
    char *b = cliutil_read_file(path, &len);
    cr_assert_not_null(b, "%s was not written", path);
    cr_assert(len > 1000 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0, "%s is not a PNG", path);
    free(b);
}

// --matrix-out alone writes the text matrices and their index (no PNGs); a vocabulary with STX puts the start
// symbol first and says so; scripts/heatmaps.py draws the labelled PNGs from them and fails with one line.
Test(cli_kv, attention_matrices_and_heatmaps, .timeout = 120) {
    cr_assert_eq(system("command -v gnuplot > /dev/null"), 0, "gnuplot is missing: bash scripts/install-deps.sh");
    const char *plain = cliutil_write_corpus();
    // a model trained with a start symbol (build/train --bos: STX joins the vocabulary)
    const char *corpus = plain;
    const char *ckpt = cliutil_tmp("stx.ckpt");
    Run t = RUN("train", "--preset", "tiny", "--steps", "5", "--bos", "--data", plain, "--out", ckpt, "--quiet");
    cliutil_expect_ok(&t, "train --bos");
    cliutil_run_free(&t);
    char dir[256], path[320], args[700], *out;
    snprintf(dir, sizeof(dir), "%s", cliutil_tmp("mat"));
    mkdir(dir, 0755);
    Run r = RUN("infer", "attention", "--ckpt", ckpt, "--data", corpus, "--matrix-out", dir, "--context", "20", "--json");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "\"bos\": true}"), "the window starts with STX:\n%s", r.out);
    cliutil_run_free(&r);
    snprintf(path, sizeof(path), "%s/attn-layer0.png", dir);
    cr_assert_neq(access(path, F_OK), 0, "--matrix-out alone writes no PNG");
    snprintf(path, sizeof(path), "%s/attn-matrices.json", dir);
    char *idx = cliutil_read_file(path, NULL);
    cr_assert(idx && strstr(idx, "\"T\": 20, \"layers\": 2, \"heads\": 4, \"bos\": true"), "%s", idx ? idx : path);
    free(idx);
    snprintf(path, sizeof(path), "%s/attn-L1-mean.txt", dir);
    cr_assert_eq(access(path, F_OK), 0, "%s", path);

    // the plain text's model has no start symbol
    const char *ckpt2 = cliutil_train_tiny(plain, "plain.ckpt");
    r = RUN("infer", "attention", "--ckpt", ckpt2, "--data", plain, "--matrix-out", dir, "--out", dir, "--context", "20");
    cr_assert_eq(r.status, 0, "stderr:\n%s", r.err);
    cr_assert(strstr(r.out, "attention over 20 tokens, "), "%s", r.out);
    cliutil_run_free(&r);
    snprintf(path, sizeof(path), "%s/attn-matrices.json", dir);
    idx = cliutil_read_file(path, NULL);
    cr_assert(idx && strstr(idx, "\"bos\": false"), "%s", idx ? idx : path);
    free(idx);

    char pics[256];
    snprintf(pics, sizeof(pics), "%s", cliutil_tmp("pics"));
    mkdir(pics, 0755);
    snprintf(args, sizeof(args), "'%s' '%s'", dir, pics);
    cr_assert_eq(heatmaps(args, &out), 0, "heatmaps.py failed:\n%s", out);
    free(out);
    const char *names[] = {"attn-layer0.png", "attn-layer1.png", "attn-summary.png"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", pics, names[i]);
        expect_png(path);
    }
    cr_assert_eq(heatmaps("--help", &out), 0, "%s", out);
    cr_assert(strstr(out, "usage: heatmaps.py") && strstr(out, "OUTDIR"), "%s", out);
    free(out);
    snprintf(args, sizeof(args), "'%s' '%s'", pics, pics); // no index there
    cr_assert_eq(heatmaps(args, &out), 1, "%s", out);
    cr_assert(strncmp(out, "heatmaps.py: no index", 21) == 0 && strchr(out, '\n') == out + strlen(out) - 1, "%s", out);
    free(out);
    snprintf(path, sizeof(path), "%s/attn-L0-H2.txt", dir); // a matrix cut short
    cliutil_write_file(path, "1 0\n", 4);
    snprintf(args, sizeof(args), "'%s' '%s'", dir, pics);
    cr_assert_eq(heatmaps(args, &out), 1, "%s", out);
    cr_assert(strstr(out, "attn-L0-H2.txt' has 1 lines, the index says T = 20") && strchr(out, '\n') == out + strlen(out) - 1,
              "%s", out);
    free(out);
}
