// Helpers of the CPU-vs-CUDA op tests: random host inputs, device copies with guard words after them,
// normalised MSE and the combined finite / close / guard check. See backend_util.h.
#include "backend_util.h"

#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

float *bk_host_random(size_t n, uint64_t seed, float scale) {
    float *h = common_calloc(n ? n : 1, sizeof(float));
    Rng rng;
    rng_init(&rng, seed);
    for (size_t i = 0; i < n; i++) h[i] = (2.0f * rng_uniform(&rng) - 1.0f) * scale;
    return h;
}

int *bk_host_tokens(size_t n, uint64_t seed, int V) {
    CHECK(V > 0);
    int *h = common_calloc(n ? n : 1, sizeof(int));
    Rng rng;
    rng_init(&rng, seed);
    for (size_t i = 0; i < n; i++) h[i] = (int)rng_below(&rng, (uint64_t)V);
    return h;
}

// n 4-byte elements + the guard; the guard is written here, the elements by the caller.
static void *dev_alloc_guarded(size_t n) {
    char *d = device_malloc((n + BK_GUARD) * 4);
    uint32_t guard[BK_GUARD];
    for (int i = 0; i < BK_GUARD; i++) guard[i] = BK_GUARD_WORD;
    device_upload(d + n * 4, guard, sizeof(guard));
    return d;
}

float *bk_dev_from_host(const float *h, size_t n) {
    float *d = dev_alloc_guarded(n);
    if (n) device_upload(d, h, n * sizeof(float));
    return d;
}

int *bk_dev_ints(const int *h, size_t n) {
    _Static_assert(sizeof(int) == 4, "guard words are 4 bytes");
    int *d = dev_alloc_guarded(n);
    if (n) device_upload(d, h, n * sizeof(int));
    return d;
}

float *bk_dev_poisoned(size_t n) {
    float *d = dev_alloc_guarded(n);
    float *h = common_calloc(n ? n : 1, sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    if (n) device_upload(d, h, n * sizeof(float));
    common_free(h);
    return d;
}

void bk_check_guard(const void *dev, size_t n_floats, const char *what) {
    uint32_t guard[BK_GUARD];
    device_download(guard, (const char *)dev + n_floats * 4, sizeof(guard));
    for (int i = 0; i < BK_GUARD; i++)
        cr_assert(guard[i] == (uint32_t)BK_GUARD_WORD, "%s: guard word %d after %zu elements overwritten (0x%08x)",
                  what, i, n_floats, guard[i]);
}

float *bk_download(const float *dev, size_t n) {
    float *h = common_calloc(n ? n : 1, sizeof(float));
    if (n) device_download(h, dev, n * sizeof(float));
    return h;
}

double bk_nmse(const float *x, const float *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return num / (den > 1e-30 ? den : 1e-30);
}

void bk_expect_close(const float *dev, const float *ref, size_t n, double tol, const char *what) {
    float *h = bk_download(dev, n);
    size_t bad = n, worst = 0;
    double worst_diff = -1.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(h[i]) && bad == n) bad = i;
        double d = fabs((double)h[i] - (double)ref[i]);
        if (d > worst_diff) worst_diff = d, worst = i;
    }
    double nmse = bk_nmse(h, ref, n);
    float bad_val = bad < n ? h[bad] : 0.0f, got = n ? h[worst] : 0.0f, want = n ? ref[worst] : 0.0f;
    common_free(h);
    cr_log_info("%s: n=%zu nmse=%.3g (tol %.1g), max |diff| %.3g at %zu", what, n, nmse, tol, worst_diff, worst);
    cr_assert(bad == n, "%s: element %zu of %zu is not finite (%g)", what, bad, n, (double)bad_val);
    cr_assert(nmse <= tol, "%s: nmse %.3g > %.1g (worst element %zu: cuda %.9g, cpu %.9g)", what, nmse, tol, worst,
              (double)got, (double)want);
    bk_check_guard(dev, n, what);
}

void bk_dev_free(void *dev) { device_free(dev); }

int bk_run_program(const char *prog, const char *args, char *out, size_t len) {
    const char *build = getenv("KVLAB_BUILD");
    if (!build) cr_skip_test("KVLAB_BUILD is not set (ninja test sets it)");
    char self[PATH_MAX], cmd[3 * PATH_MAX + 64], lib[PATH_MAX + 32];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert(k > 0);
    self[k] = 0;
    *strrchr(self, '/') = 0;
    snprintf(lib, sizeof lib, "%s/libkvlab_cuda.so", self);
    char env[PATH_MAX + 64] = "";
    if (access(lib, R_OK) == 0) snprintf(env, sizeof env, "KVLAB_CUDA_LIB='%s' ", lib);
    snprintf(cmd, sizeof cmd, "%s'%s/%s' %s 2>&1", env, build, prog, args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    return pclose(p);
}
