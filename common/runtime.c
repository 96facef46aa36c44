// Picks the BLAS kernels and the OpenMP wait policy before the libraries are used (issue 13): Debian 12's
// OpenBLAS 0.3.21 does not know new Intel CPUs and runs its generic Prescott kernels on them (3x slower
// sgemm), and spinning OpenMP waits collapse throughput on a shared machine. Both libraries read their
// environment in constructors that run before main, so the settings take effect through one re-exec. A run
// that only prints its usage computes nothing and skips it: a second process start doubles the cost of
// `--help` (issue 13's budget: 10 ms).
#include "runtime.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int reexecuted;
// Set by a help-only start that skipped the re-exec: what a computing run forces, for the diagnostics.
static const char *planned_core;
static int planned_wait;

// OpenBLAS cores whose kernels use AVX2 or better: anything else on an AVX2 CPU is a fallback.
static const char *const MODERN_CORES[] = {"Haswell", "Zen", "Excavator", "SkylakeX", "Cooperlake",
                                           "SapphireRapids"};

const char *common_runtime_core_for(const char *core, int avx512f, int avx2_fma) {
    if (!avx512f && !avx2_fma) return NULL;
    for (size_t i = 0; i < sizeof MODERN_CORES / sizeof MODERN_CORES[0]; i++)
        if (core && strcasecmp(core, MODERN_CORES[i]) == 0) return NULL;
    return avx512f ? "SkylakeX" : "Haswell";
}

static int cpu_avx512f(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

static int cpu_avx2_fma(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int common_runtime_help_only(int argc, char **argv) {
    for (int i = 1; i < argc && argv && argv[i]; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

void common_runtime_init(int argc, char **argv) {
    if (getenv(RUNTIME_MARKER)) { // the second start: the libraries have read the settings
        reexecuted = 1;
        unsetenv(RUNTIME_MARKER);
        return;
    }
    const char *force = common_runtime_core_for(openblas_get_corename(), cpu_avx512f(), cpu_avx2_fma());
    int set_core = force && !getenv("OPENBLAS_CORETYPE");
    int set_wait = !getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT");
    if (!(set_core || set_wait) || !argv || !argv[0]) return;
    if (common_runtime_help_only(argc, argv)) {
        planned_core = set_core ? force : NULL;
        planned_wait = set_wait;
        return;
    }
    if (set_core) setenv("OPENBLAS_CORETYPE", force, 1);
    if (set_wait) setenv("GOMP_SPINCOUNT", RUNTIME_SPINCOUNT, 1);
    setenv(RUNTIME_MARKER, "1", 1);
    fflush(NULL);
    execv("/proc/self/exe", argv);
    // exec failed: go on as the libraries started, and undo the settings so the diagnostics stay true
    unsetenv(RUNTIME_MARKER);
    if (set_core) unsetenv("OPENBLAS_CORETYPE");
    if (set_wait) unsetenv("GOMP_SPINCOUNT");
}

const char *common_blas_kernels(void) {
    static char text[128];
    const char *config = openblas_get_config();
    char version[32] = "OpenBLAS";
    if (config && strncmp(config, "OpenBLAS ", 9) == 0) {
        size_t n = strcspn(config + 9, " ");
        if (n > 20) n = 20;
        snprintf(version, sizeof version, "OpenBLAS %.*s", (int)n, config + 9);
    }
    int par = openblas_get_parallel();
    const char *threads = par == 2 ? "openmp" : par == 1 ? "pthreads" : "sequential";
    const char *core = planned_core ? planned_core : openblas_get_corename();
    snprintf(text, sizeof text, "%s, %s kernels, %s", version, core, threads);
    return text;
}

const char *common_runtime_wait_policy(void) {
    static char text[96];
    const char *p = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    if (planned_wait) spin = RUNTIME_SPINCOUNT;
    if (p && *p) snprintf(text, sizeof text, "%s", p);
    else if (spin && *spin) snprintf(text, sizeof text, "spin %s then sleep (GOMP_SPINCOUNT)", spin);
    else snprintf(text, sizeof text, "unset (libgomp default)");
    return text;
}

int common_runtime_reexecuted(void) {
    return reexecuted;
}
