// The CUDA emulator's runtime: kernel launches (validated against an H100's limits), the block scheduler that
// runs one fiber per CUDA thread, __syncthreads and the warp collectives with their checks, shared memory, and
// cudaFuncSetAttribute. The rest of the runtime API is emu_api.cpp. See cuda_emu.h for what a rewritten .cu file
// sees.
//
// Scheduling: a launch runs its blocks one after another (x fastest, then y, then z). In a block, a thread runs
// until it exits, waits at __syncthreads (until every thread of the block is there) or at a warp collective
// (until every lane of the mask is there), then switches straight to the next runnable thread, warp-major (see
// next_runnable: a warp runs ahead to its next barrier before the next warp moves, in ascending warp order in
// even blocks and descending in odd ones). The last thread to arrive releases the others. When no thread can
// run while some are unfinished, that is a deadlock: reported with where each thread waits.
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>
#include <vector>

#include "cuda_emu.h"
#include "emu_fiber.h"
#include "emu_limits.h"

uint3 cuemu_threadIdx, cuemu_blockIdx;
dim3 cuemu_blockDim, cuemu_gridDim;

namespace {

enum State { RUNNABLE, AT_BARRIER, AT_WARP, EXITED };

struct Thread {
    CuemuFiber *fiber;
    uint3 idx;
    int tid;   // linear index in the block
    int state;
    const char *file; // where it waits
    int line;
};

struct Warp {
    int count;        // lanes arrived at the collective in progress
    unsigned arrived; // their bits
    unsigned mask, exited;
    int kind, gen, first_lane;
    const char *name, *file;
    int line;
    uint64_t slots[2][32]; // deposits, double-buffered by gen parity
};

struct Launch {
    const char *kernel, *file;
    int line;
    CuemuBody body;
    void *ctx;
    dim3 grid, block;
    int nthreads;
    size_t shmem, smem_limit;
    unsigned char *dyn_smem;
};

std::mutex g_launch_lock; // one launch at a time per process (the state below is the running block's)
Launch g_launch;
// Containers that outlive the program's own exit handlers (which may still free device memory): never destroyed
std::vector<Thread> &g_threads = *new std::vector<Thread>;  // of the running block
std::vector<CuemuFiber *> &g_pool = *new std::vector<CuemuFiber *>;
Thread *g_cur;
int g_live, g_exited, g_first_exited;
int g_bar_count, g_bar_line;
const char *g_bar_file;
Warp g_warps[EMU_MAX_THREADS / 32];
uint64_t g_block_gen;                 // one per block ever run: a static __shared__ slot of an older one is stale
alignas(16) unsigned char g_static_smem[EMU_SMEM_DEFAULT];
size_t g_static_used;

std::mutex g_attr_lock;
// cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
std::map<const void *, int> &g_max_dyn_smem = *new std::map<const void *, int>;


const char *where(char *buf, size_t len) {
    snprintf(buf, len, "kernel %s (launched at %s:%d), block (%u,%u,%u)", g_launch.kernel, g_launch.file,
             g_launch.line, cuemu_blockIdx.x, cuemu_blockIdx.y, cuemu_blockIdx.z);
    return buf;
}

const char *thread_name(const Thread *t, char *buf, size_t len) {
    snprintf(buf, len, "thread (%u,%u,%u) [warp %d lane %d]", t->idx.x, t->idx.y, t->idx.z, t->tid / 32, t->tid % 32);
    return buf;
}

int g_warp_dir; // +1: warps in ascending order, -1: descending (odd blocks), so a missing barrier shows both ways

// The next runnable thread after t, warp-major: first the other lanes of t's warp, then the next warps in the
// block's order. A warp thus runs on until all of its lanes wait at a __syncthreads (or exit) before another
// warp moves: as far apart as a GPU may run them, so shared memory passed between warps without a barrier
// reads the wrong data. NULL when no thread can run.
Thread *next_runnable(const Thread *t) {
    const int n = g_launch.nthreads, nwarps = (n + 31) / 32, w0 = t->tid / 32;
    const int lanes0 = n - w0 * 32 < 32 ? n - w0 * 32 : 32;
    for (int k = 1; k <= lanes0; k++) {
        Thread *o = &g_threads[w0 * 32 + (t->tid % 32 + k) % lanes0];
        if (o->state == RUNNABLE) return o;
    }
    for (int k = 1; k < nwarps; k++) {
        int w = ((w0 + k * g_warp_dir) % nwarps + nwarps) % nwarps;
        int end = w * 32 + 32 < n ? w * 32 + 32 : n;
        for (int i = w * 32; i < end; i++)
            if (g_threads[i].state == RUNNABLE) return &g_threads[i];
    }
    return NULL;
}

// The running thread t stops (it waits or exited): straight on to the next runnable thread, else back to the
// scheduler (which then finds the block finished, or deadlocked).
void pass_on(Thread *t) {
    Thread *o = next_runnable(t);
    if (!o) {
        cuemu_fiber_yield(t->fiber);
        return;
    }
    if (o == t) return; // only possible for a thread that did not stop; kept for safety
    g_cur = o;
    cuemu_threadIdx = o->idx;
    cuemu_fiber_switch(t->fiber, o->fiber);
}

void fiber_main(CuemuFiber *self) {
    cuemu_fiber_started(self);
    for (;;) {
        g_launch.body(g_launch.ctx); // one CUDA thread of the current block, to completion
        Thread *t = g_cur;
        char w[512], a[96];
        if (g_bar_count > 0)
            cuemu_fail("divergent __syncthreads in %s: %s exited while %d threads wait at %s:%d", where(w, sizeof w),
                       thread_name(t, a, sizeof a), g_bar_count, g_bar_file, g_bar_line);
        Warp *wp = &g_warps[t->tid / 32];
        unsigned bit = 1u << (t->tid % 32);
        if (wp->count > 0 && (wp->mask & bit))
            cuemu_fail("%s in %s: %s exited while lanes 0x%08x wait for it at %s (%s:%d, mask 0x%08x)", wp->name,
                       where(w, sizeof w), thread_name(t, a, sizeof a), wp->arrived, wp->name, wp->file, wp->line,
                       wp->mask);
        wp->exited |= bit;
        t->state = EXITED;
        if (g_exited++ == 0) g_first_exited = t->tid;
        g_live--;
        pass_on(t);
    }
}

void deadlock(void) {
    char w[512], a[96];
    fprintf(stderr, "cuda-emu: deadlock in %s: no thread can go on\n", where(w, sizeof w));
    int shown = 0;
    for (const Thread &t : g_threads) {
        if (t.state == RUNNABLE || t.state == EXITED) continue;
        if (shown++ >= 8) break;
        const Warp &wp = g_warps[t.tid / 32];
        if (t.state == AT_BARRIER)
            fprintf(stderr, "  %s waits at __syncthreads (%s:%d)\n", thread_name(&t, a, sizeof a), t.file, t.line);
        else
            fprintf(stderr, "  %s waits at %s (%s:%d) for the lanes 0x%08x of mask 0x%08x not yet there\n",
                    thread_name(&t, a, sizeof a), wp.name, t.file, t.line, wp.mask & ~wp.arrived, wp.mask);
    }
    cuemu_fail("deadlock in %s (a warp collective whose mask names lanes that are elsewhere, or a barrier some "
               "threads never reach)", where(w, sizeof w));
}

void run_block(void) {
    Launch &L = g_launch;
    g_block_gen++;
    g_static_used = 0;
    memset(L.dyn_smem, EMU_POISON, L.shmem);
    g_live = L.nthreads;
    g_exited = 0;
    g_bar_count = 0;
    for (int w = 0; w < (L.nthreads + 31) / 32; w++) {
        g_warps[w].count = 0;
        g_warps[w].arrived = 0;
        g_warps[w].exited = 0;
        g_warps[w].gen = 0;
    }
    for (int i = 0; i < L.nthreads; i++) g_threads[i].state = RUNNABLE;
    uint64_t linear = ((uint64_t)cuemu_blockIdx.z * L.grid.y + cuemu_blockIdx.y) * L.grid.x + cuemu_blockIdx.x;
    g_warp_dir = linear % 2 ? -1 : 1;
    // the first warp in the block's order starts; the threads pass on to each other (pass_on) and come back here
    // only when none can run
    Thread *first = &g_threads[g_warp_dir > 0 ? 0 : ((L.nthreads - 1) / 32) * 32];
    while (g_live > 0) {
        Thread *t = first->state == RUNNABLE ? first : next_runnable(first);
        if (!t) deadlock();
        g_cur = t;
        cuemu_threadIdx = t->idx;
        cuemu_fiber_switch_to(t->fiber);
    }
}

void set_error(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void set_error(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (%s)\n", cudaGetErrorString(e));
    va_end(ap);
    cuemu_last_error = e;
}

} // namespace

extern "C" void cuemu_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

extern "C" void cuemu_syncthreads(const char *file, int line) {
    Thread *t = g_cur;
    char w[512], a[96], b[96];
    if (!t) cuemu_fail("__syncthreads (%s:%d) called outside a kernel", file, line);
    if (g_exited > 0)
        cuemu_fail("divergent __syncthreads in %s: %s waits at %s:%d, but %d threads of the block have exited "
                   "(first %s)", where(w, sizeof w), thread_name(t, a, sizeof a), file, line, g_exited,
                   thread_name(&g_threads[g_first_exited], b, sizeof b));
    if (g_bar_count == 0) {
        g_bar_file = file;
        g_bar_line = line;
    } else if (g_bar_line != line || strcmp(g_bar_file, file) != 0) {
        const Thread *other = NULL;
        for (const Thread &o : g_threads)
            if (o.state == AT_BARRIER) other = &o;
        cuemu_fail("divergent __syncthreads in %s: %s waits at %s:%d, %s at %s:%d", where(w, sizeof w),
                   thread_name(t, a, sizeof a), file, line, other ? thread_name(other, b, sizeof b) : "another thread",
                   g_bar_file, g_bar_line);
    }
    if (++g_bar_count == g_launch.nthreads) { // the last one: release everyone
        g_bar_count = 0;
        for (Thread &o : g_threads)
            if (o.state == AT_BARRIER) o.state = RUNNABLE;
        return;
    }
    t->state = AT_BARRIER;
    t->file = file;
    t->line = line;
    pass_on(t);
}

// The failures of a warp collective, out of line (the fast path keeps a small stack frame).
__attribute__((cold, noinline, noreturn)) static void collective_fail(int why, const Thread *t, unsigned mask,
                                                                       unsigned extra, int width, const char *name,
                                                                       const char *file, int line) {
    char w[512], a[96];
    const int warp = t->tid / 32, lane = t->tid % 32;
    const Warp &W = g_warps[warp];
    where(w, sizeof w);
    thread_name(t, a, sizeof a);
    switch (why) {
    case 0: cuemu_fail("%s (%s:%d) called outside a kernel", name, file, line);
    case 1: cuemu_fail("%s (%s:%d) in %s: %s calls it with mask 0x%08x, which does not name it", name, file, line, w, a,
                       mask);
    case 2: cuemu_fail("%s (%s:%d) in %s: mask 0x%08x names lanes 0x%08x of warp %d that do not exist (%d threads per "
                       "block)", name, file, line, w, mask, extra, warp, g_launch.nthreads);
    case 3: cuemu_fail("%s (%s:%d) in %s: %s names exited lanes 0x%08x in its mask 0x%08x", name, file, line, w, a,
                       extra, mask);
    case 4: cuemu_fail("%s (%s:%d) in %s: width %d is not a power of two up to 32", name, file, line, w, width);
    case 5: cuemu_fail("lanes of warp %d disagree in %s: lane %d is at %s (%s:%d, mask 0x%08x), lane %d at %s (%s:%d, "
                       "mask 0x%08x)", warp, w, W.first_lane, W.name, W.file, W.line, W.mask, lane, name, file, line,
                       mask);
    default: cuemu_fail("%s (%s:%d) in %s: %s reads lane %u, which its mask 0x%08x does not name", name, file, line, w,
                        a, extra, mask);
    }
}

extern "C" uint64_t cuemu_collective(int kind, unsigned mask, uint64_t value, int arg, int width, const char *name,
                                     const char *file, int line) {
    Thread *t = g_cur;
    if (__builtin_expect(!t, 0)) collective_fail(0, t, mask, 0, width, name, file, line);
    const int lane = t->tid % 32, warp = t->tid / 32;
    const unsigned bit = 1u << lane;
    Warp &W = g_warps[warp];
    const int nlanes = g_launch.nthreads - warp * 32;
    const unsigned exist = nlanes >= 32 ? 0xffffffffu : (1u << nlanes) - 1u;
    if (__builtin_expect(!(mask & bit), 0)) collective_fail(1, t, mask, 0, width, name, file, line);
    if (__builtin_expect(mask & ~exist, 0)) collective_fail(2, t, mask, mask & ~exist, width, name, file, line);
    if (__builtin_expect(mask & W.exited, 0)) collective_fail(3, t, mask, mask & W.exited, width, name, file, line);
    if (__builtin_expect(width < 1 || width > 32 || (width & (width - 1)), 0))
        collective_fail(4, t, mask, 0, width, name, file, line);
    if (W.count == 0) {
        W.mask = mask;
        W.kind = kind;
        W.name = name;
        W.file = file;
        W.line = line;
        W.first_lane = lane;
    } else if (__builtin_expect(W.mask != mask || W.kind != kind ||
                                    (kind != CUEMU_SYNCWARP && // sm_70+ lets lanes meet at different __syncwarp
                                     (W.line != line || (W.file != file && strcmp(W.file, file) != 0))), 0)) {
        collective_fail(5, t, mask, 0, width, name, file, line);
    }
    const int par = W.gen & 1;
    W.slots[par][lane] = value;
    W.arrived |= bit;
    if (++W.count == __builtin_popcount(mask)) { // the last lane: release the others
        W.count = 0;
        W.arrived = 0;
        W.gen++;
        Thread *base = &g_threads[warp * 32];
        for (unsigned m = mask & ~bit; m; m &= m - 1) base[__builtin_ctz(m)].state = RUNNABLE;
    } else {
        t->state = AT_WARP;
        t->file = file;
        t->line = line;
        pass_on(t);
    }
    const uint64_t *s = W.slots[par];
    const int seg = lane & ~(width - 1);
    int src = lane;
    switch (kind) {
    case CUEMU_SHFL: src = seg + (arg & (width - 1)); break;
    case CUEMU_SHFL_XOR: src = lane ^ arg; if (src < 0 || src >= seg + width) src = lane; break;
    case CUEMU_SHFL_UP: src = lane - arg; if (src < seg) src = lane; break;
    case CUEMU_SHFL_DOWN: src = lane + arg; if (src >= seg + width) src = lane; break;
    case CUEMU_BALLOT: {
        uint64_t b = 0;
        for (unsigned m = mask; m; m &= m - 1)
            if (s[__builtin_ctz(m)]) b |= 1ull << __builtin_ctz(m);
        return b;
    }
    default: return 0; // __syncwarp
    }
    if (__builtin_expect(src < 0 || src > 31 || !((mask >> src) & 1u), 0))
        collective_fail(6, t, mask, (unsigned)src, width, name, file, line);
    return s[src];
}

extern "C" void *cuemu_dynamic_smem(void) {
    if (!g_cur) cuemu_fail("extern __shared__ memory used outside a kernel");
    return g_launch.dyn_smem;
}

extern "C" void *cuemu_static_smem(uint64_t *slot_gen, void **slot_ptr, size_t bytes, size_t align, const char *name) {
    if (!g_cur) cuemu_fail("__shared__ %s used outside a kernel", name);
    if (*slot_gen == g_block_gen) return *slot_ptr;
    size_t at = (g_static_used + align - 1) / align * align;
    char w[512];
    if (at + bytes > sizeof g_static_smem)
        cuemu_fail("%s: static __shared__ memory above 48 KB (%s needs %zu bytes at offset %zu)", where(w, sizeof w),
                   name, bytes, at);
    if (at + bytes + g_launch.shmem > g_launch.smem_limit)
        cuemu_fail("%s: %zu bytes of static and %zu of dynamic shared memory exceed the kernel's limit of %zu (a GPU "
                   "refuses the launch)", where(w, sizeof w), at + bytes, g_launch.shmem, g_launch.smem_limit);
    void *p = g_static_smem + at;
    memset(p, EMU_POISON, bytes);
    g_static_used = at + bytes;
    *slot_gen = g_block_gen;
    *slot_ptr = p;
    return p;
}

extern "C" void cuemu_func_set_attribute(const void *func, int attr, int value, cudaError_t *err) {
    *err = cudaSuccess;
    if (!func) {
        *err = cudaErrorInvalidDeviceFunction;
        return;
    }
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > EMU_SMEM_OPTIN) {
            set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: %d bytes of dynamic shared memory is above the "
                      "device's %d", value, EMU_SMEM_OPTIN);
            cuemu_last_error = cudaSuccess; // returned, not sticky
            *err = cudaErrorInvalidValue;
            return;
        }
        std::lock_guard<std::mutex> lock(g_attr_lock);
        g_max_dyn_smem[func] = value;
    } else if (attr != cudaFuncAttributePreferredSharedMemoryCarveout) {
        *err = cudaErrorInvalidValue;
    }
}

extern "C" void cuemu_launch(const char *kernel, const char *file, int line, int max_threads, const void *func,
                             dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, CuemuBody body, void *ctx) {
    (void)stream;
    cuemu_flush_copies(); // the kernel runs after the copies queued before it (emu_host.cpp)
    std::lock_guard<std::mutex> lock(g_launch_lock);
    unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (nthreads == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        set_error(cudaErrorInvalidConfiguration, "%s:%d: launch of %s with an empty grid (%u,%u,%u) or block "
                  "(%u,%u,%u)", file, line, kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return;
    }
    if (nthreads > EMU_MAX_THREADS || block.x > EMU_MAX_BLOCK_XY || block.y > EMU_MAX_BLOCK_XY ||
        block.z > EMU_MAX_BLOCK_Z) {
        set_error(cudaErrorInvalidConfiguration, "%s:%d: launch of %s with block (%u,%u,%u): at most %d threads, "
                  "(%d,%d,%d) per dimension", file, line, kernel, block.x, block.y, block.z, EMU_MAX_THREADS,
                  EMU_MAX_BLOCK_XY, EMU_MAX_BLOCK_XY, EMU_MAX_BLOCK_Z);
        return;
    }
    if (max_threads > 0 && nthreads > (unsigned long long)max_threads) {
        set_error(cudaErrorLaunchOutOfResources, "%s:%d: launch of %s with %llu threads per block, above its "
                  "__launch_bounds__ of %d", file, line, kernel, nthreads, max_threads);
        return;
    }
    if (grid.x > EMU_MAX_GRID_X || grid.y > EMU_MAX_GRID_YZ || grid.z > EMU_MAX_GRID_YZ) {
        set_error(cudaErrorInvalidConfiguration, "%s:%d: launch of %s with grid (%u,%u,%u): y and z at most %u",
                  file, line, kernel, grid.x, grid.y, grid.z, EMU_MAX_GRID_YZ);
        return;
    }
    size_t limit = EMU_SMEM_DEFAULT;
    {
        std::lock_guard<std::mutex> alock(g_attr_lock);
        auto it = g_max_dyn_smem.find(func);
        if (it != g_max_dyn_smem.end() && (size_t)it->second > limit) limit = (size_t)it->second;
    }
    if (shmem > EMU_SMEM_OPTIN) {
        set_error(cudaErrorInvalidValue, "%s:%d: launch of %s with %zu bytes of dynamic shared memory, above the "
                  "device's %d", file, line, kernel, shmem, EMU_SMEM_OPTIN);
        return;
    }
    if (shmem > limit) {
        set_error(cudaErrorInvalidValue, "%s:%d: launch of %s with %zu bytes of dynamic shared memory, above its "
                  "limit of %zu (above 48 KB a kernel opts in with cudaFuncSetAttribute("
                  "cudaFuncAttributeMaxDynamicSharedMemorySize))", file, line, kernel, shmem, limit);
        return;
    }
    static int trace = -1; // KVLAB_CUDA_EMU_TRACE=1: one line per launch on stderr
    if (trace < 0) trace = getenv("KVLAB_CUDA_EMU_TRACE") && atoi(getenv("KVLAB_CUDA_EMU_TRACE")) > 0;
    if (trace)
        fprintf(stderr, "cuda-emu: launch %s grid (%u,%u,%u) block (%u,%u,%u) shmem %zu (%s:%d)\n", kernel, grid.x,
                grid.y, grid.z, block.x, block.y, block.z, shmem, file, line);
    Launch &L = g_launch;
    L.kernel = kernel;
    L.file = file;
    L.line = line;
    L.body = body;
    L.ctx = ctx;
    L.grid = grid;
    L.block = block;
    L.nthreads = (int)nthreads;
    L.shmem = shmem;
    L.smem_limit = limit > EMU_SMEM_DEFAULT ? limit : EMU_SMEM_DEFAULT;
    // exactly shmem bytes: AddressSanitizer reports a read past the dynamic shared memory
    L.dyn_smem = (unsigned char *)malloc(shmem);
    if (!L.dyn_smem && shmem) cuemu_fail("out of memory for %zu bytes of shared memory", shmem);
    while (g_pool.size() < (size_t)nthreads) g_pool.push_back(cuemu_fiber_new(fiber_main, EMU_STACK_BYTES));
    g_threads.resize((size_t)nthreads);
    for (int i = 0; i < L.nthreads; i++) {
        Thread &t = g_threads[i];
        t.fiber = g_pool[i];
        t.tid = i;
        t.idx.x = (unsigned)i % block.x;
        t.idx.y = (unsigned)i / block.x % block.y;
        t.idx.z = (unsigned)i / (block.x * block.y);
    }
    cuemu_blockDim = block;
    cuemu_gridDim = grid;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                cuemu_blockIdx.x = x, cuemu_blockIdx.y = y, cuemu_blockIdx.z = z;
                run_block();
            }
    g_cur = NULL;
    free(L.dyn_smem);
    L.dyn_smem = NULL;
}
