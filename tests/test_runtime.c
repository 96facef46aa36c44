// Tests of the start-up every program runs (common/runtime.h, issue 13), suite `runtime`: kvlab never runs on
// OpenBLAS's generic kernels on a CPU with AVX2 or AVX-512, a user's OPENBLAS_CORETYPE and OMP_WAIT_POLICY win,
// the default wait is a short spin (GOMP_SPINCOUNT=10000), the one re-exec cannot loop, and a help-only run
// skips it (one start, issue 13's 10 ms budget) while naming the kernels a computing run gets. The programs report through
// `build/bench --blas`; it runs here with the test's own environment, not through RUN, whose child sets a
// passive wait policy itself (cli_util.c) and would hide what the program chose.
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_util.h"
#include "../common/runtime.h"

TestSuite(runtime, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

// OpenBLAS cores with AVX2 kernels or better, listed here independently of common/runtime.c.
static int core_is_modern(const char *core) {
    const char *modern[] = {"Haswell", "Zen", "Excavator", "SkylakeX", "Cooperlake", "SapphireRapids"};
    for (size_t i = 0; i < sizeof modern / sizeof modern[0]; i++)
        if (strcmp(core, modern[i]) == 0) return 1;
    return 0;
}

static int cpu_avx512f(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
}

static int cpu_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// Runs `$KVLAB_BUILD/<prog> <arg>` with this process's environment; its stdout goes to out, its stderr to the
// file err_path (when not NULL). Asserts exit 0.
static void run_prog(const char *prog, const char *arg, char *out, size_t len, const char *err_path) {
    const char *build = getenv("KVLAB_BUILD");
    char exe[512];
    snprintf(exe, sizeof exe, "%s/%s", build && *build ? build : "build", prog);
    cr_assert_eq(access(exe, X_OK), 0, "%s is not an executable (build it first)", exe);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        if (err_path) {
            int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fe < 0) _exit(126);
            dup2(fe, 2);
            close(fe);
        }
        execl(exe, exe, arg, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t got;
    while (n + 1 < len && (got = read(fds[0], out + n, len - 1 - n)) > 0) n += (size_t)got;
    out[n] = 0;
    close(fds[0]);
    int ws;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "%s %s failed:\n%s", prog, arg, out);
}

static void bench_blas(char *out, size_t len) { run_prog("bench", "--blas", out, len, NULL); }

// The core name from bench --blas's "blas: OpenBLAS X, CORE kernels, ..." line.
static void reported_core(const char *out, char *core, size_t len) {
    const char *line = strstr(out, "blas: ");
    cr_assert(line, "no blas line in:\n%s", out);
    const char *comma = strchr(line, ',');
    cr_assert(comma, "no core in:\n%s", out);
    size_t n = strcspn(comma + 2, " ");
    cr_assert_lt(n, len);
    memcpy(core, comma + 2, n);
    core[n] = 0;
}

static void unset_all(void) {
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("OMP_WAIT_POLICY");
    unsetenv("GOMP_SPINCOUNT");
    unsetenv(RUNTIME_MARKER);
}

Test(runtime, core_choice) {
    cr_assert_str_eq(common_runtime_core_for("Prescott", 1, 1), "SkylakeX");
    cr_assert_str_eq(common_runtime_core_for("Prescott", 0, 1), "Haswell");
    cr_assert_str_eq(common_runtime_core_for("Sandybridge", 0, 1), "Haswell");
    cr_assert_str_eq(common_runtime_core_for("Nehalem", 1, 0), "SkylakeX");
    cr_assert_str_eq(common_runtime_core_for("Unknown", 1, 1), "SkylakeX");
    cr_assert_null(common_runtime_core_for("Prescott", 0, 0), "an old CPU keeps what OpenBLAS picked");
    cr_assert_null(common_runtime_core_for("Sandybridge", 0, 0));
    cr_assert_null(common_runtime_core_for("SkylakeX", 1, 1));
    cr_assert_null(common_runtime_core_for("Haswell", 0, 1));
    cr_assert_null(common_runtime_core_for("Zen", 1, 1), "AVX2 kernels on an AVX-512 CPU are not generic");
}

// The check issue 13 asks for: the BLAS kvlab runs with is not a generic core on an AVX2/AVX-512 CPU.
Test(runtime, kernels_not_generic) {
    char out[1024], core[64];
    bench_blas(out, sizeof out);
    reported_core(out, core, sizeof core);
    if (cpu_avx512f() || cpu_avx2_fma())
        cr_assert(core_is_modern(core), "OpenBLAS runs its generic '%s' kernels on a CPU with %s:\n%s", core,
                  cpu_avx512f() ? "AVX-512" : "AVX2+FMA", out);
}

Test(runtime, defaults_fast_and_a_short_spin) {
    unset_all();
    char out[1024], core[64];
    bench_blas(out, sizeof out);
    reported_core(out, core, sizeof core);
    if (cpu_avx512f())
        cr_assert(strcmp(core, "SkylakeX") == 0 || strcmp(core, "Cooperlake") == 0 ||
                  strcmp(core, "SapphireRapids") == 0, "AVX-512 CPU runs '%s' kernels:\n%s", core, out);
    else if (cpu_avx2_fma())
        cr_assert(core_is_modern(core), "AVX2 CPU runs '%s' kernels:\n%s", core, out);
    cr_assert(strstr(out, "omp_wait_policy: spin 10000 then sleep (GOMP_SPINCOUNT)\n"),
              "the default wait is not a short spin:\n%s", out);
    cr_assert(strstr(out, "reexecuted: 1\n"), "the settings were not applied by a re-exec:\n%s", out);
}

Test(runtime, user_coretype_respected) {
    unset_all();
    setenv("OPENBLAS_CORETYPE", "Prescott", 1);
    char out[1024], core[64];
    bench_blas(out, sizeof out);
    reported_core(out, core, sizeof core);
    cr_assert_str_eq(core, "Prescott", "the user's OPENBLAS_CORETYPE=Prescott was overridden:\n%s", out);
}

Test(runtime, user_wait_policy_respected) {
    unset_all();
    setenv("OMP_WAIT_POLICY", "active", 1);
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    char out[1024];
    bench_blas(out, sizeof out);
    cr_assert(strstr(out, "omp_wait_policy: active\n"), "the user's OMP_WAIT_POLICY=active was overridden:\n%s", out);
    cr_assert(strstr(out, "reexecuted: 0\n"), "nothing to change, yet it re-executed:\n%s", out);
}

// The marker stops a second exec: a start that finds it changes nothing; a plain start re-executes once,
// prints once, and its children do not inherit the marker.
Test(runtime, no_reexec_loop) {
    unset_all();
    setenv(RUNTIME_MARKER, "1", 1);
    char out[1024];
    bench_blas(out, sizeof out);
    cr_assert(strstr(out, "omp_wait_policy: unset"), "a start with the marker set changed the environment:\n%s", out);
    unset_all();
    bench_blas(out, sizeof out);
    const char *first = strstr(out, "blas: ");
    cr_assert(first && !strstr(first + 1, "blas: "), "expected one report, got:\n%s", out);
    cr_assert(strstr(out, "reexecuted: 1\n"), "%s", out);
}

Test(runtime, diagnostics_name_the_kernels) {
    Run r = RUN("infer", "--help");
    cliutil_expect_ok(&r, "infer --help");
    char line[256];
    cliutil_last_line(r.out, line, sizeof line);
    cr_assert(strncmp(line, "BLAS: OpenBLAS", 14) == 0 && strstr(line, " kernels, "), "last line: %s", line);
    cliutil_run_free(&r);
    const char *corpus = cliutil_write_corpus();
    r = RUN("train", "--preset", "tiny", "--steps", "1", "--data", corpus, "--out", cliutil_tmp("t.ckpt"), "--quiet");
    cliutil_expect_ok(&r, "train --preset tiny");
    cr_assert(strstr(r.err, "M params, OpenBLAS ") && strstr(r.err, " kernels, "), "train's start line:\n%s", r.err);
    cliutil_run_free(&r);
}

Test(runtime, help_only) {
    char *help[] = {"infer", "--help", NULL}, *mode_help[] = {"infer", "generate", "--ckpt", "x", "-h", NULL};
    char *blas[] = {"bench", "--blas", NULL}, *bare[] = {"train", NULL}, *value[] = {"infer", "--prompt", "help", NULL};
    cr_assert_eq(common_runtime_help_only(2, help), 1);
    cr_assert_eq(common_runtime_help_only(5, mode_help), 1);
    cr_assert_eq(common_runtime_help_only(2, blas), 0);
    cr_assert_eq(common_runtime_help_only(1, bare), 0);
    cr_assert_eq(common_runtime_help_only(3, value), 0);
    cr_assert_eq(common_runtime_help_only(1, help), 0, "only argv[1..argc) counts");
}

// `infer --help` starts once (the dynamic loader says "initialize program" once per start, LD_DEBUG=files) and
// its BLAS line names the kernels that a computing run (bench --blas, re-executed) reports.
Test(runtime, help_starts_once_and_names_the_kernels) {
    unset_all();
    char help[8192], blas[1024], core[64];
    bench_blas(blas, sizeof blas);
    reported_core(blas, core, sizeof core);
    const char *err_path = cliutil_tmp("help.err");
    setenv("LD_DEBUG", "files", 1);
    run_prog("infer", "--help", help, sizeof help, err_path);
    unsetenv("LD_DEBUG");
    size_t n = 0;
    char *err = cliutil_read_file(err_path, &n);
    cr_assert(err && strstr(err, "libopenblas"), "LD_DEBUG=files reported nothing");
    int starts = 0;
    for (const char *p = err; (p = strstr(p, "initialize program:")); p++) starts++;
    free(err);
    cr_assert_eq(starts, 1, "infer --help started %d times (a re-exec doubles its start-up)", starts);
    char line[256], want[128];
    cliutil_last_line(help, line, sizeof line);
    snprintf(want, sizeof want, ", %s kernels, ", core);
    cr_assert(strstr(line, want), "infer --help says '%s'; a computing run uses %s kernels:\n%s", line, core, blas);
}
