// pool.h: one pass at a time. Participant t's share of a pass is the chunk range [n t / p, n (t + 1) / p),
// held in one 64-bit word with the pass's generation, so a helper that wakes late (or a caller's stale view)
// can never take a chunk of another pass. The owner takes chunks at the front of its share, the others steal
// at the back; the caller waits until every chunk has finished, which includes only chunks some thread took.
#include "pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define POOL_MAX_THREADS 64

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

typedef void (*PoolFn)(void *ctx, int i);

// generation (32 bits) | front (16) | back (16); empty when front == back
typedef struct {
    _Alignas(64) _Atomic uint64_t word;
} Share;

static struct {
    Share share[POOL_MAX_THREADS];
    _Alignas(64) _Atomic uint32_t gen; // the current pass; helpers wait for it to change
    _Atomic int sleepers;              // helpers blocked (or about to block) on gen's futex
    _Alignas(64) _Atomic int done;     // chunks of the current pass finished
    _Alignas(64) _Atomic(PoolFn) fn;   // the current pass, written before gen is published
    _Atomic(void *) ctx;
    _Atomic int parts;
    _Atomic int helpers; // helper threads started
    atomic_flag busy;    // a pass is running (one caller at a time)
    pthread_mutex_t start_lock;
} P = {.busy = ATOMIC_FLAG_INIT, .start_lock = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local int in_pool; // a helper, or a caller inside its pass: nested passes run serially

static long futex(_Atomic uint32_t *word, int op, uint32_t val) {
    return syscall(SYS_futex, (uint32_t *)word, op, val, NULL, NULL, 0);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t share_word(uint32_t gen, int front, int back) {
    return (uint64_t)gen << 32 | (uint64_t)front << 16 | (uint64_t)back;
}

// Takes the next chunk of participant t's share for pass gen, at the front (owner) or the back (thief); -1
// when the share is empty or belongs to another pass.
static int take(int t, uint32_t gen, int from_back) {
    uint64_t w = atomic_load_explicit(&P.share[t].word, memory_order_relaxed);
    for (;;) {
        int front = (int)(w >> 16 & 0xffff), back = (int)(w & 0xffff);
        if ((uint32_t)(w >> 32) != gen || front >= back) return -1;
        uint64_t next = from_back ? share_word(gen, front, back - 1) : share_word(gen, front + 1, back);
        if (atomic_compare_exchange_weak_explicit(&P.share[t].word, &w, next, memory_order_acquire,
                                                  memory_order_relaxed))
            return from_back ? back - 1 : front;
    }
}

// Participant self's part of pass gen: its own share, then what is left of the others'.
static void run_pass(int self, uint32_t gen, int parts, PoolFn fn, void *ctx) {
    int count = 0, i;
    while ((i = take(self, gen, 0)) >= 0) fn(ctx, i), count++;
    for (int k = 1; k < parts; k++)
        while ((i = take((self + k) % parts, gen, 1)) >= 0) fn(ctx, i), count++;
    if (count) atomic_fetch_add_explicit(&P.done, count, memory_order_release);
}

static void *helper_main(void *arg) {
    int self = (int)(intptr_t)arg;
    in_pool = 1;
    uint32_t seen = atomic_load(&P.gen);
    for (;;) {
        uint32_t gen;
        double t0 = now_s();
        for (int k = 1;; k++) { // spin a little: the next pass of a decode step comes within microseconds
            if ((gen = atomic_load_explicit(&P.gen, memory_order_acquire)) != seen) break;
            CPU_RELAX();
            if ((k & 255) == 0 && now_s() - t0 > POOL_SPIN_US * 1e-6) {
                atomic_fetch_add(&P.sleepers, 1);
                if (atomic_load(&P.gen) == seen) futex(&P.gen, FUTEX_WAIT_PRIVATE, seen);
                atomic_fetch_sub(&P.sleepers, 1);
                t0 = now_s();
            }
        }
        seen = gen;
        int parts = atomic_load_explicit(&P.parts, memory_order_relaxed);
        if (self < parts)
            run_pass(self, gen, parts, atomic_load_explicit(&P.fn, memory_order_relaxed),
                     atomic_load_explicit(&P.ctx, memory_order_relaxed));
    }
    return NULL;
}

// Starts helpers 1 .. want (fewer if the system refuses threads: their shares are then taken by the others).
static void start_helpers(int want) {
    if (atomic_load(&P.helpers) >= want) return;
    pthread_mutex_lock(&P.start_lock);
    for (int h = atomic_load(&P.helpers) + 1; h <= want; h++) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &attr, helper_main, (void *)(intptr_t)h);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        atomic_store(&P.helpers, h);
    }
    pthread_mutex_unlock(&P.start_lock);
}

int pool_threads(void) {
    if (in_pool || omp_in_parallel()) return 1;
    int t = omp_get_max_threads();
    return t < 1 ? 1 : t > POOL_MAX_THREADS ? POOL_MAX_THREADS : t;
}

void pool_for(int n, size_t work, void (*fn)(void *ctx, int i), void *ctx) {
    CHECK(n >= 0 && n <= POOL_MAX_CHUNKS);
    int parts = pool_worth(work) ? pool_threads() : 1;
    size_t most = work / (POOL_MIN_WORK / 2);
    if ((size_t)parts > most) parts = (int)most;
    if (parts > n) parts = n;
    if (parts <= 1 || atomic_flag_test_and_set_explicit(&P.busy, memory_order_acquire)) {
        for (int i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    start_helpers(parts - 1);
    uint32_t gen = atomic_load_explicit(&P.gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&P.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&P.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&P.parts, parts, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    for (int t = 0; t < parts; t++)
        atomic_store_explicit(&P.share[t].word, share_word(gen, n * t / parts, n * (t + 1) / parts),
                              memory_order_relaxed);
    atomic_store(&P.gen, gen); // publishes the pass (seq_cst: ordered against the sleepers check below)
    if (atomic_load(&P.sleepers) > 0) futex(&P.gen, FUTEX_WAKE_PRIVATE, INT_MAX);
    in_pool = 1;
    run_pass(0, gen, parts, fn, ctx);
    // wait for chunks helpers took and have not finished; yield now and then in case one shares this core
    for (int k = 1; atomic_load_explicit(&P.done, memory_order_acquire) < n; k++) {
        CPU_RELAX();
        if ((k & 1023) == 0) sched_yield();
    }
    in_pool = 0;
    atomic_flag_clear_explicit(&P.busy, memory_order_release);
}
