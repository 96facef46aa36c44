// Tests of common/pool.h, suite `pool`: every chunk runs exactly once for many chunk counts and thread
// counts (more threads than cores too); small passes stay on the calling thread and large ones use helpers;
// a pass started inside a pass, inside an OpenMP region, or from two threads at once still runs every chunk
// once; thousands of back-to-back passes (helpers waking late see only their own pass).
#include <criterion/criterion.h>

#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "../common/common.h"
#include "../common/pool.h"

typedef struct {
    _Atomic int *runs;
    _Atomic int other_thread; // chunks run by a thread other than the caller
    pthread_t caller;
    double busy_s; // each chunk takes this long, so a helper has time to join
} Count;

static void count_chunk(void *ctx, int i) {
    Count *c = ctx;
    atomic_fetch_add(&c->runs[i], 1);
    if (!pthread_equal(pthread_self(), c->caller)) atomic_fetch_add(&c->other_thread, 1);
    for (double t0 = common_now(); common_now() - t0 < c->busy_s;) {
    }
}

static int run_counted_slow(int n, size_t work, int *other, double busy_s) {
    Count c = {common_calloc(n ? n : 1, sizeof(_Atomic int)), 0, pthread_self(), busy_s};
    pool_for(n, work, count_chunk, &c);
    int bad = -1;
    for (int i = 0; i < n && bad < 0; i++)
        if (atomic_load(&c.runs[i]) != 1) bad = i;
    if (other) *other = atomic_load(&c.other_thread);
    common_free((void *)c.runs);
    return bad;
}

static int run_counted(int n, size_t work, int *other) { return run_counted_slow(n, work, other, 0.0); }

Test(pool, every_chunk_once) {
    const int ns[] = {0, 1, 2, 3, 5, 16, 17, 100, 1000, POOL_MAX_CHUNKS};
    for (int threads = 1; threads <= 4; threads++) {
        omp_set_num_threads(threads);
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
            for (size_t work = 1; work <= ((size_t)1 << 24); work <<= 4) {
                int bad = run_counted(ns[a], work, NULL);
                cr_assert(bad < 0, "threads %d n %d work %zu: chunk %d ran %s", threads, ns[a], work, bad,
                          "not exactly once");
            }
    }
}

Test(pool, small_passes_stay_on_the_caller) {
    omp_set_num_threads(2);
    cr_assert_eq(pool_threads(), 2);
    int other = -1;
    cr_assert(run_counted_slow(64, POOL_MIN_WORK - 1, &other, 1e-5) < 0);
    cr_assert_eq(other, 0, "a pass below POOL_MIN_WORK ran %d chunks on a helper", other);
    // a large pass: a helper takes part at least once in a few tries (it may be slow to start)
    int helped = 0;
    for (int t = 0; t < 100 && !helped; t++) {
        cr_assert(run_counted_slow(64, (size_t)POOL_MIN_WORK * 64, &other, 1e-5) < 0);
        helped = other > 0;
    }
    cr_assert(helped, "no helper ever took a chunk of a large pass");
    omp_set_num_threads(1);
    cr_assert_eq(pool_threads(), 1);
    cr_assert(run_counted_slow(64, (size_t)POOL_MIN_WORK * 64, &other, 1e-5) < 0);
    cr_assert_eq(other, 0, "OMP_NUM_THREADS=1 must keep every chunk on the caller");
}

// A chunk that starts a pass of its own: the inner pass runs on the thread that started it.
typedef struct {
    _Atomic int *inner; // (outer, inner) counts
    int n_inner;
    _Atomic int not_serial; // chunks that saw pool_threads() != 1 (asserted on the main thread)
} Nested;

typedef struct {
    Nested *nest;
    int outer;
} NestedOne;

static void inner_chunk(void *ctx, int j) {
    NestedOne *o = ctx;
    atomic_fetch_add(&o->nest->inner[o->outer * o->nest->n_inner + j], 1);
}

static void outer_chunk(void *ctx, int i) {
    NestedOne o = {ctx, i};
    if (pool_threads() != 1) atomic_fetch_add(&o.nest->not_serial, 1);
    pool_for(((Nested *)ctx)->n_inner, (size_t)1 << 30, inner_chunk, &o);
}

Test(pool, nested_and_inside_openmp) {
    omp_set_num_threads(2);
    Nested nest = {common_calloc(40 * 7, sizeof(_Atomic int)), 7, 0};
    pool_for(40, (size_t)1 << 30, outer_chunk, &nest);
    cr_assert_eq(atomic_load(&nest.not_serial), 0);
    for (int i = 0; i < 40 * 7; i++) cr_assert_eq(atomic_load(&nest.inner[i]), 1, "nested (%d, %d)", i / 7, i % 7);
    common_free((void *)nest.inner);
    int bad[2] = {-1, -1}, threads[2] = {0, 0};
#pragma omp parallel num_threads(2)
    {
        threads[omp_get_thread_num()] = pool_threads();
        bad[omp_get_thread_num()] = run_counted(33, (size_t)1 << 30, NULL);
    }
    cr_assert(bad[0] < 0 && bad[1] < 0, "inside an OpenMP region: chunk %d / %d", bad[0], bad[1]);
    cr_assert(threads[0] == 1 && threads[1] <= 1, "inside an OpenMP region the pool must not start a pass");
}

static void *caller_thread(void *arg) {
    int *bad = arg;
    for (int r = 0; r < 2000 && *bad < 0; r++) *bad = run_counted(1 + r % 50, (size_t)1 << 30, NULL);
    return NULL;
}

// Two threads passing at once (one gets the helpers, the other runs alone), and thousands of passes in a row:
// helpers that wake late or lose a race must never run a chunk of a pass twice or miss one.
Test(pool, concurrent_callers_and_many_passes) {
    omp_set_num_threads(3);
    pthread_t th[2];
    int bad[2] = {-1, -1};
    for (int i = 0; i < 2; i++) cr_assert_eq(pthread_create(&th[i], NULL, caller_thread, &bad[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    cr_assert(bad[0] < 0 && bad[1] < 0, "chunk %d / %d", bad[0], bad[1]);
}
