// build/bench's command line (suite `bench_cli`): the --busy, --large and --decode-batch flags and their errors,
// one line each and before any work starts (no "machine:" line is printed first), and the shape of a tiny
// --decode-batch run's JSON (the byte counts and the budget's batch, never the speed).
#include <criterion/criterion.h>

#include <string.h>

#include "cli_util.h"

TestSuite(bench_cli, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

Test(bench_cli, large_and_busy_flag_errors) {
    struct {
        const char *const *args;
        const char *phrase;
    } cases[] = {
        {ARGS("--large-contexts", "2048"), "--large-contexts needs --large"},
        {ARGS("--large", "--large-contexts", "32"), "33..8192"},
        {ARGS("--large", "--large-contexts", "9000"), "33..8192"},
        {ARGS("--large", "--large-contexts", "2048,"), "comma-separated"},
        {ARGS("--large", "--quick"), "--large runs on its own"},
        {ARGS("--large", "--attention"), "--large runs on its own"},
        {ARGS("--busy", "--attention"), "--busy applies to"},
        {ARGS("--busy=1"), "takes no value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Run r = cliutil_run_argv("bench", cases[i].args);
        EXPECT_ERROR(&r, "bench", cases[i].phrase);
        cliutil_run_free(&r);
    }
}

Test(bench_cli, decode_batch_flag_errors) {
    struct {
        const char *const *args;
        const char *phrase;
    } cases[] = {
        {ARGS("--decode-batch", "--decode-batches", "0"), "--decode-batches expects comma-separated batch sizes"},
        {ARGS("--decode-batches", "0"), "1..1024"},
        {ARGS("--decode-batch", "--decode-batches", "8,"), "comma-separated"},
        {ARGS("--decode-batch", "--decode-contexts", "abc"), "--decode-contexts expects comma-separated lengths"},
        {ARGS("--decode-contexts", "abc"), "17..16384"},
        {ARGS("--decode-batch", "--decode-contexts", "16"), "17..16384"},
        {ARGS("--decode-batch", "--decode-kv-heads", "3"), "must divide"},
        {ARGS("--decode-batch", "--decode-kv-heads", "16"), "1..8"},
        {ARGS("--decode-batch", "--decode-runs", "0"), "--decode-runs"},
        {ARGS("--decode-batch", "--decode-budget-mb", "5000"), "--decode-budget-mb"},
        {ARGS("--decode-runs", "2"), "--decode-runs needs --decode-batch"},
        {ARGS("--decode-batch", "--large"), "--decode-batch runs on its own"},
        {ARGS("--decode-batch", "--busy"), "--decode-batch runs on its own"},
        {ARGS("--decode-batch=1"), "takes no value"},
        {ARGS("--decode-batch", "--decode-batches", "1024", "--decode-contexts", "4096"), "limit 4 GiB"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Run r = cliutil_run_argv("bench", cases[i].args);
        EXPECT_ERROR(&r, "bench", cases[i].phrase);
        cliutil_run_free(&r);
    }
}

// A tiny grid: 2 MQA sequences at context 32 hold 4 layers x (32 x 128 + 4) bytes each; a 1 MiB budget holds
// floor(1048576 / 16400) = 63 of them.
Test(bench_cli, decode_batch_json) {
    Run r = RUN("bench", "--decode-batch", "--json", "--decode-batches", "2", "--decode-contexts", "32",
                "--decode-kv-heads", "1", "--decode-runs", "1", "--decode-budget-mb", "1");
    cliutil_expect_ok(&r, "bench --decode-batch --json");
    cr_expect(strstr(r.out, "{\"bench\": \"decode_batch\", \"kv_heads\": 1, \"heads\": 8, \"attn\": \"mqa\", "
                            "\"batch\": 2, \"context\": 32,") != NULL, "%s", r.out);
    cr_expect(strstr(r.out, "\"kv_bytes_per_seq\": 16400, \"kv_bytes_total\": 32800, \"runs\": 1}") != NULL, "%s",
              r.out);
    cr_expect(strstr(r.out, "{\"bench\": \"decode_budget\", \"kv_heads\": 1, \"heads\": 8, \"attn\": \"mqa\", "
                            "\"context\": 32, \"budget_bytes\": 1048576, \"kv_bytes_per_seq\": 16400, "
                            "\"max_batch\": 63, \"capped\": false,") != NULL, "%s", r.out);
    cr_expect(strstr(r.out, "\"tokens_per_s_median\": ") != NULL, "%s", r.out);
    cliutil_run_free(&r);
}

Test(bench_cli, help_lists_the_modes) {
    Run r = RUN("bench", "--help");
    cliutil_expect_ok(&r, "bench --help");
    cr_expect(strstr(r.out, "--busy") && strstr(r.out, "--large") && strstr(r.out, "--large-contexts"), "%s", r.out);
    cr_expect(strstr(r.out, "--decode-batch") && strstr(r.out, "--decode-budget-mb"), "%s", r.out);
    cliutil_run_free(&r);
}
