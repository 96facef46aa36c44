// Criterion helpers for CPU-vs-CUDA op tests (ggml test-backend-ops style). Plain C: nothing here includes a
// CUDA header, and the file builds (and every CUDA test skips) in a build without CUDA.
//
// The pattern of a test (see test_backend_ops.c):
//   #if KVLAB_CUDA
//   static void run_rmsnorm_forward(void) { ... calls rmsnorm_forward_cuda ... }
//   #endif
//   Test(backend_ops, rmsnorm_forward) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_rmsnorm_forward); }
// BACKEND_REQUIRE_CUDA() comes first, before any allocation, so a skipped test leaks nothing; BK_RUN calls
// the body only in builds with CUDA: there configure.py compiles the tests with KVLAB_CUDA=1 and links them
// with libkvlab_cuda.so, which exports the *_cuda ops (layers/ops_cuda.map). Without CUDA those symbols do not
// exist, so the bodies must not even be compiled there.
//
// Every device buffer made here has BK_GUARD 4-byte words after its n elements, filled with BK_GUARD_WORD;
// bk_check_guard (and bk_expect_close) assert an op wrote nothing past its output.
#ifndef KVLAB_TESTS_BACKEND_UTIL_H
#define KVLAB_TESTS_BACKEND_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "../common/common.h"
#include "../common/device.h"

#define BK_GUARD 64                 // 4-byte words of guard after every device buffer
#define BK_GUARD_WORD 0x7fc0dead    // a quiet NaN with a payload no op produces

// Skips the current Criterion test (and says why) unless a CUDA device is usable.
#define BACKEND_REQUIRE_CUDA()                                                     \
    do {                                                                           \
        char bk_why_[ERR_LEN];                                                     \
        if (!device_cuda_available(bk_why_)) cr_skip_test("CUDA: %s", bk_why_);    \
    } while (0)

#if KVLAB_CUDA
#define BK_RUN(body_fn) body_fn()
#else
#define BK_RUN(body_fn) ((void)0)
#endif

float *bk_host_random(size_t n, uint64_t seed, float scale); // uniform [-scale, scale], common_calloc'd
int *bk_host_tokens(size_t n, uint64_t seed, int V);         // uniform in [0, V), common_calloc'd

float *bk_dev_from_host(const float *h, size_t n); // device copy of n floats + guard
int *bk_dev_ints(const int *h, size_t n);          // device copy of n ints + guard
float *bk_dev_poisoned(size_t n);                  // device buffer of n NaNs + guard (for overwritten outputs)

// cr_asserts that the BK_GUARD words after the first n_floats 4-byte elements of dev are intact.
void bk_check_guard(const void *dev, size_t n_floats, const char *what);

float *bk_download(const float *dev, size_t n); // host copy of n floats, caller common_free()s

// sum (x - ref)^2 / max(sum ref^2, tiny), accumulated in double.
double bk_nmse(const float *x, const float *ref, size_t n);

// Downloads dev (n floats) and asserts: all finite, nmse against ref <= tol, guard intact. Messages name
// `what`.
void bk_expect_close(const float *dev, const float *ref, size_t n, double tol, const char *what);

void bk_dev_free(void *dev); // device_free; NULL is fine

// Runs `$KVLAB_BUILD/PROG ARGS` with the CUDA library of this test binary (the one next to it, real or the
// emulator's, through KVLAB_CUDA_LIB; none when there is none) into out (stdout and stderr, NUL-terminated,
// at most len - 1 bytes); returns pclose's status. Skips the Criterion test when KVLAB_BUILD is not set.
int bk_run_program(const char *prog, const char *args, char *out, size_t len);

#endif
