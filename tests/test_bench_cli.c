// build/bench's command line (suite `bench_cli`): the --busy and --large flags and their errors, one line each
// and before any work starts (no "machine:" line is printed first). Speed itself is never tested.
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

Test(bench_cli, help_lists_the_modes) {
    Run r = RUN("bench", "--help");
    cliutil_expect_ok(&r, "bench --help");
    cr_expect(strstr(r.out, "--busy") && strstr(r.out, "--large") && strstr(r.out, "--large-contexts"), "%s", r.out);
    cliutil_run_free(&r);
}
