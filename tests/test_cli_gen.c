// End-to-end tests of build/infer's modes and of generation through a KV cache, suite `cli_gen`: every
// technique family generates and is deterministic for a seed; the lossless settings give the text of the
// plain full cache byte for byte; each mode takes only its own flags and documents them; compare-gen finds
// no divergence between the full cache and itself. The helpers (temporary directory, running the
// programs): cli_util.h; the old spellings' tests: test_cli.c, test_cli_kv.c.
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"

TestSuite(cli_gen, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 120);

// 60 tokens from "the" run past tiny's context of 32: streaming caches stream, the others are rebuilt, so
// both paths of generation run. Two runs with the same seed at temperature 0.8 must print the same text.
static void expect_deterministic(const char *ckpt, const char *corpus, const char *const *specs, int n_specs) {
    for (int i = 0; i < n_specs; i++) {
        const char *const extra[] = {"--kv", specs[i], "--data", corpus, "--seed", "7", NULL};
        char *a = cliutil_generate(ckpt, "the", 60, extra);
        char *b = cliutil_generate(ckpt, "the", 60, extra);
        cr_assert_str_eq(a, b, "--kv %s: the same seed must give the same text", specs[i]);
        free(a);
        free(b);
    }
}

Test(cli_gen, generate_selection_policies_are_deterministic) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "g.ckpt");
    const char *specs[] = {"window:8", "sink:2,window:6", "h2o:4,4", "tova:8", "snapkv:4,4", "knorm:8,1"};
    expect_deterministic(ckpt, corpus, specs, sizeof(specs) / sizeof(specs[0]));
}

Test(cli_gen, generate_storage_formats_are_deterministic) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "g.ckpt");
    // tiny's head dimension is 8: KIVI groups of 8 tokens; minicache:0 merges tiny's two layers
    const char *specs[] = {"full+int8",    "full+int4",      "full+int2",       "full+kivi2:8,16",
                           "full+fp16",    "full+lowrank:4", "full+minicache:0"};
    expect_deterministic(ckpt, corpus, specs, sizeof(specs) / sizeof(specs[0]));
}

Test(cli_gen, generate_paged_pool_is_deterministic) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "g.ckpt");
    const char *specs[] = {"paged:16", "paged:4+int8", "window:8+paged:4+int4", "h2o:8,8+paged:4"};
    expect_deterministic(ckpt, corpus, specs, sizeof(specs) / sizeof(specs[0]));
}

// Within the context (3 + 20 tokens of 32), a cache that drops nothing and stores fp32 rows computes the
// same attention as the plain full cache: no tolerance, the text matches byte for byte, greedy and sampled.
Test(cli_gen, generate_lossless_settings_match_the_full_cache) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "g.ckpt");
    const char *specs[] = {"full", "paged:8", "window:64", "h2o:32,32", "tova:64"};
    const char *temps[] = {"0", "0.8"};
    for (int t = 0; t < 2; t++) {
        char *plain = cliutil_generate(ckpt, "the", 20, ARGS("--temperature", temps[t], "--seed", "11"));
        for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
            char *got = cliutil_generate(ckpt, "the", 20, ARGS("--temperature", temps[t], "--seed", "11", "--kv", specs[i]));
            cr_assert_str_eq(got, plain, "--kv %s at temperature %s: %s vs %s", specs[i], temps[t], got, plain);
            free(got);
        }
        free(plain);
    }
}

// The end-of-run line: bytes against a full fp16 cache of the same positions, tokens held, the speeds and
// the rule at the trained context (window:8 streams and holds 8 tokens; h2o is rebuilt).
Test(cli_gen, generate_reports_bytes_and_the_context_rule) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "g.ckpt");
    Run r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", "the", "-n", "60", "--kv", "window:8");
    cliutil_expect_ok(&r, "infer generate --kv window:8");
    cr_assert(strstr(r.err, "holds 8.0 tokens at 62 positions") && strstr(r.err, "of a full fp16 cache") &&
                  strstr(r.err, "prefill ") && strstr(r.err, "decode ") && strstr(r.err, "streams past"),
              "%s", r.err);
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "-n", "60", "--kv", "h2o:4,4");
    cliutil_expect_ok(&r, "infer --prompt --kv h2o:4,4");
    cr_assert(strstr(r.err, "holds 8.0 tokens") && strstr(r.err, "rebuilt from the newest half (positions restart at 0): 2 times"),
              "%s", r.err);
    cliutil_run_free(&r);
}

Test(cli_gen, mode_flag_errors) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "g.ckpt");
    Run r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", "the", "--streams", "2");
    EXPECT_ERROR(&r, "infer generate", "--streams does not apply (it is a flag of kv, recall, prefix, reuse)");
    cliutil_run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--streams", "2");
    EXPECT_ERROR(&r, "infer", "--streams does not apply to generate (it is a flag of kv, recall, prefix, reuse)");
    cliutil_run_free(&r);
    r = RUN("infer", "bogus", "--ckpt", ckpt);
    EXPECT_ERROR(&r, "infer", "unknown mode 'bogus'", "compare-gen");
    cliutil_run_free(&r);
    r = RUN("infer", "score", "--ckpt", ckpt, "--eval", corpus, "--bogus");
    EXPECT_ERROR(&r, "infer score", "unknown flag '--bogus'", "build/infer score --help");
    cliutil_run_free(&r);
    r = RUN("infer", "kv", "--ckpt", ckpt, "--eval", corpus);
    EXPECT_ERROR(&r, "infer kv", "needs --eval FILE and --kv SPEC");
    cliutil_run_free(&r);
    r = RUN("infer", "kv", "--ckpt", ckpt, "--eval", corpus, "--kv", "full", "--json=yes");
    EXPECT_ERROR(&r, "infer kv", "--json takes no value");
    cliutil_run_free(&r);
    r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", "the", "--kv", "h2o:4");
    EXPECT_ERROR(&r, "infer generate", "bad --kv 'h2o:4'");
    cliutil_run_free(&r);
    r = RUN("infer", "generate", "--ckpt", ckpt, "--prompt", "the", "--kv", "paged:4+tier:3");
    EXPECT_ERROR(&r, "infer generate", "tier:N applies to the tier mode");
    cliutil_run_free(&r);
    r = RUN("infer", "generate", "--ckpt", ckpt);
    EXPECT_ERROR(&r, "infer generate", "--prompt TEXT is required");
    cliutil_run_free(&r);
    r = RUN("infer", "compare-gen", "--ckpt", ckpt, "--data", corpus);
    EXPECT_ERROR(&r, "infer compare-gen", "needs --kv SPEC");
    cliutil_run_free(&r);
    r = RUN("infer", "generate", "--prompt", "the");
    EXPECT_ERROR(&r, "infer generate", "--ckpt FILE is required");
    cliutil_run_free(&r);
}

// Each mode's --help goes to stdout, exits 0 and names every flag of the mode.
Test(cli_gen, each_mode_documents_its_flags) {
    static const struct {
        const char *mode;
        const char *flags[12];
    } modes[] = {
        {"generate", {"--prompt", "--tokens", "--temperature", "--top-k", "--top-p", "--seed", "--kv", "--data"}},
        {"score", {"--eval", "--ckpt", "--kv-heads", "--device"}},
        {"kv", {"--eval", "--kv", "--context", "--prefill", "--streams", "--json", "--curve", "--data"}},
        {"recall", {"--kv", "--context", "--streams", "--seed", "--json", "--data"}},
        {"prefix", {"--kv", "--context", "--prefill", "--streams", "--pool-blocks", "--json", "--data"}},
        {"tier", {"--kv", "--fast", "--prefetch", "--transfer-us", "--slow-file", "--slow-cold", "--json"}},
        {"reuse", {"--reuse", "--threshold", "--radius", "--min-overlap", "--deep-keep", "--json", "--data"}},
        {"attention", {"--out", "--matrix-out", "--context", "--json", "--data"}},
        {"compare-gen", {"--kv", "--prompts", "--prompt-len", "--tokens", "--json", "--data"}},
    };
    Run r = RUN("infer", "--help");
    cliutil_expect_ok(&r, "infer --help");
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
        cr_assert(strstr(r.out, modes[i].mode), "the overview should list %s:\n%s", modes[i].mode, r.out);
    cliutil_run_free(&r);
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        r = RUN("infer", modes[i].mode, "--help");
        cliutil_expect_ok(&r, modes[i].mode);
        char head[64];
        snprintf(head, sizeof(head), "usage: build/infer %s ", modes[i].mode);
        cr_assert(strncmp(r.out, head, strlen(head)) == 0, "%s --help:\n%s", modes[i].mode, r.out);
        for (int f = 0; modes[i].flags[f]; f++)
            cr_assert(strstr(r.out, modes[i].flags[f]), "%s --help should mention %s:\n%s", modes[i].mode,
                      modes[i].flags[f], r.out);
        cliutil_run_free(&r);
    }
}

// The full cache against itself: the texts never diverge (divergence = N), every token is the same, KL 0.
Test(cli_gen, compare_gen_full_never_diverges) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "g.ckpt");
    Run r = RUN("infer", "compare-gen", "--ckpt", ckpt, "--kv", "full", "--data", corpus, "--prompts", "3",
                "--prompt-len", "8", "-n", "16", "--json");
    cliutil_expect_ok(&r, "compare-gen --kv full");
    cr_assert(strstr(r.out, "\"diverge_mean\": 16,") && strstr(r.out, "\"diverge_median\": 16,") &&
                  strstr(r.out, "\"never_diverged\": 3,") && strstr(r.out, "\"identical_share\": 1,") &&
                  strstr(r.out, "\"kl\": 0,") && strstr(r.out, "\"top1_agree\": 1,") &&
                  strstr(r.out, "\"diverge\": [16, 16, 16]"),
              "%s", r.out);
    cliutil_run_free(&r);
}

// A compressed cache: the report stays within its ranges and int4 holds under 0.6 of fp16 (tiny's head
// dimension 8: 4 bytes of codes plus a 2-byte scale and minimum per row, against 16 bytes).
Test(cli_gen, compare_gen_reports_a_compressed_cache) {
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_train_tiny(corpus, "g.ckpt");
    Run r = RUN("infer", "compare-gen", "--ckpt", ckpt, "--kv", "full+int4", "--data", corpus, "--prompts", "3",
                "--prompt-len", "8", "-n", "40", "--json");
    cliutil_expect_ok(&r, "compare-gen --kv full+int4");
    double share = -1.0;
    double ratio = -1.0;
    const char *s = strstr(r.out, "\"identical_share\": ");
    const char *b = strstr(r.out, "\"bytes_ratio\": ");
    cr_assert(s && sscanf(s + 19, "%lf", &share) == 1 && share >= 0 && share <= 1, "%s", r.out);
    cr_assert(b && sscanf(b + 15, "%lf", &ratio) == 1 && ratio > 0 && ratio < 0.6, "%s", r.out);
    cliutil_run_free(&r);
}

// A bare storage term means full selection: `--kv int4` and `--kv full+int4` generate the same bytes.
Test(cli_gen, generate_bare_storage_term) {
    const char *ckpt = cliutil_train_tiny(cliutil_write_corpus(), "g.ckpt");
    char *a = cliutil_generate(ckpt, "the", 20, ARGS("--kv", "int4", "--seed", "3"));
    char *b = cliutil_generate(ckpt, "the", 20, ARGS("--kv", "full+int4", "--seed", "3"));
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}
