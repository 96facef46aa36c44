// The CUDA emulator's device side: what a .cu file sees when tests/cuda_emu/cu2cpp.py has rewritten it into C++
// for g++ (the emulated backend, $builddir/cuda-emu/libkvlab_cuda.so, and the emulator's own tests). Every CUDA
// thread of a block is a fiber (emu_runtime.cpp); __syncthreads and the warp collectives are the points where a
// fiber hands over to the next, so a block runs to completion, thread by thread between barriers, before the
// next block starts. The runtime API and cuBLAS subsets are declared in include/cuda_runtime.h and
// include/cublas_v2.h; this header is included first by every rewritten file (cu2cpp.py) and pulls them in.
//
// Checked as a GPU would fail (or worse, silently misbehave): launch limits (threads per block, grid and block
// dimensions, more threads than the kernel's __launch_bounds__, dynamic shared memory above 48 KB without the
// cudaFuncSetAttribute opt-in or above the device maximum), barriers some threads of a block skip (exited, or
// waiting at another __syncthreads), warp collectives whose mask names exited or absent lanes, or whose lanes
// disagree; shared memory starts every block filled with 0xff bytes (a NaN as float and double), so a read of an
// element no thread wrote shows.
#ifndef KVLAB_CUDA_EMU_H
#define KVLAB_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#include "include/cuda_runtime.h"

// --- qualifiers -------------------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __constant__ static
// __shared__ declarations are rewritten by cu2cpp.py into CUEMU_SHARED (below); one left over is an error
#define __shared__ __shared__was_not_rewritten_by_cu2cpp

#define CUEMU_HIDDEN __attribute__((visibility("hidden")))

// --- built-in variables -----------------------------------------------------------------------------------

extern "C" CUEMU_HIDDEN uint3 cuemu_threadIdx; // of the running fiber, set by the scheduler at every switch
extern "C" CUEMU_HIDDEN uint3 cuemu_blockIdx;
extern "C" CUEMU_HIDDEN dim3 cuemu_blockDim;
extern "C" CUEMU_HIDDEN dim3 cuemu_gridDim;
#define threadIdx cuemu_threadIdx
#define blockIdx cuemu_blockIdx
#define blockDim cuemu_blockDim
#define gridDim cuemu_gridDim
static constexpr int warpSize = 32;

// --- the runtime's device-side entry points (emu_runtime.cpp) ---------------------------------------------

enum CuemuCollective { CUEMU_SHFL, CUEMU_SHFL_XOR, CUEMU_SHFL_UP, CUEMU_SHFL_DOWN, CUEMU_BALLOT, CUEMU_SYNCWARP };

extern "C" {
CUEMU_HIDDEN void cuemu_syncthreads(const char *file, int line);
// A warp collective of the calling lane: deposits `value`, waits until every lane of `mask` has arrived at the
// same collective, then returns the deposit of lane `src` (shuffles) or the ballot of the lanes' values.
CUEMU_HIDDEN uint64_t cuemu_collective(int kind, unsigned mask, uint64_t value, int arg, int width, const char *name,
                                       const char *file, int line);
CUEMU_HIDDEN void *cuemu_dynamic_smem(void);
CUEMU_HIDDEN void *cuemu_static_smem(uint64_t *slot_gen, void **slot_ptr, size_t bytes, size_t align,
                                     const char *name);
CUEMU_HIDDEN void cuemu_func_set_attribute(const void *func, int attr, int value, cudaError_t *err);
typedef void (*CuemuBody)(void *ctx);
CUEMU_HIDDEN void cuemu_launch(const char *kernel, const char *file, int line, int max_threads, const void *func,
                               dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, CuemuBody body, void *ctx);
CUEMU_HIDDEN void cuemu_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
}

// --- barriers and warp collectives ------------------------------------------------------------------------

#define __syncthreads() cuemu_syncthreads(__FILE__, __LINE__)

template <typename T>
static inline uint64_t cuemu_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffles move up to 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T>
static inline T cuemu_from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

template <typename T>
static inline T cuemu_shfl(int kind, unsigned mask, T v, int arg, int width, const char *name, const char *file,
                           int line) {
    return cuemu_from_bits<T>(cuemu_collective(kind, mask, cuemu_bits(v), arg, width, name, file, line));
}

#define __shfl_sync(mask, v, src, ...)                                                                      \
    cuemu_shfl(CUEMU_SHFL, (mask), (v), (src), cuemu_width(__VA_ARGS__ + 0), "__shfl_sync", __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lm, ...)                                                                   \
    cuemu_shfl(CUEMU_SHFL_XOR, (mask), (v), (lm), cuemu_width(__VA_ARGS__ + 0), "__shfl_xor_sync", __FILE__,    \
               __LINE__)
#define __shfl_up_sync(mask, v, d, ...)                                                                     \
    cuemu_shfl(CUEMU_SHFL_UP, (mask), (v), (d), cuemu_width(__VA_ARGS__ + 0), "__shfl_up_sync", __FILE__,     \
               __LINE__)
#define __shfl_down_sync(mask, v, d, ...)                                                                   \
    cuemu_shfl(CUEMU_SHFL_DOWN, (mask), (v), (d), cuemu_width(__VA_ARGS__ + 0), "__shfl_down_sync", __FILE__, \
               __LINE__)
#define __ballot_sync(mask, pred)                                                                           \
    ((unsigned)cuemu_collective(CUEMU_BALLOT, (mask), (pred) ? 1u : 0u, 0, 32, "__ballot_sync", __FILE__, __LINE__))
#define __any_sync(mask, pred) (__ballot_sync((mask), (pred)) != 0u)
#define __all_sync(mask, pred) (__ballot_sync((mask), (pred)) == (unsigned)(mask))
#define __syncwarp(...)                                                                                     \
    ((void)cuemu_collective(CUEMU_SYNCWARP, cuemu_syncwarp_mask(__VA_ARGS__ + 0u), 0, 0, 32, "__syncwarp",      \
                            __FILE__, __LINE__))

static inline int cuemu_width(int w) { return w ? w : 32; } // the optional width argument of the shuffles
static inline unsigned cuemu_syncwarp_mask(unsigned m) { return m ? m : 0xffffffffu; }

// --- shared memory (cu2cpp.py rewrites the declarations) ---------------------------------------------------

// extern __shared__ T name[];  ->  T *const name = CUEMU_DYNAMIC_SHARED(T);
#define CUEMU_DYNAMIC_SHARED(T) (reinterpret_cast<T *>(cuemu_dynamic_smem()))
// __shared__ T name[N];  ->  CUEMU_SHARED(T, [N], name);  one block-wide object per declaration, fresh (and
// 0xff-filled) in every block: every thread that runs the declaration gets the same address
#define CUEMU_SHARED(T, dims, name)                                                                         \
    typedef T cuemu_shared_type_##name dims;                                                                \
    static uint64_t cuemu_shared_gen_##name;                                                                \
    static void *cuemu_shared_ptr_##name;                                                                   \
    cuemu_shared_type_##name &name = *reinterpret_cast<cuemu_shared_type_##name *>(cuemu_static_smem(        \
        &cuemu_shared_gen_##name, &cuemu_shared_ptr_##name, sizeof(cuemu_shared_type_##name),               \
        alignof(cuemu_shared_type_##name), #name))

// --- launches (cu2cpp.py: kernel<<<grid, block, shmem, stream>>>(args) -> cuemu::launcher(...)(args)) ------
// The kernel's __launch_bounds__ reach the launch through cu2cpp.py (the macro itself expands to nothing).

namespace cuemu {

template <typename... P>
struct Launch {
    void (*kernel)(P...);
    const char *name, *file;
    int line, max_threads; // max_threads: __launch_bounds__, 0 for none
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;

    template <typename Args>
    struct Ctx {
        void (*kernel)(P...);
        Args *args;
        static void run(void *p) { // one CUDA thread: the kernel on a copy of the arguments, as on a GPU
            Ctx *c = static_cast<Ctx *>(p);
            std::apply(c->kernel, *c->args);
        }
    };

    template <typename... A>
    void operator()(A &&...a) const {
        static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
        std::tuple<typename std::decay<P>::type...> args(static_cast<P>(std::forward<A>(a))...);
        Ctx<decltype(args)> ctx = {kernel, &args};
        cuemu_launch(name, file, line, max_threads, reinterpret_cast<const void *>(kernel), grid, block, shmem,
                     stream, &Ctx<decltype(args)>::run, &ctx);
    }
};

template <typename... P>
static inline Launch<P...> launcher(void (*kernel)(P...), const char *name, const char *file, int line,
                                    int max_threads, dim3 grid, dim3 block, size_t shmem = 0, cudaStream_t stream = 0) {
    return Launch<P...>{kernel, name, file, line, max_threads, grid, block, shmem, stream};
}

} // namespace cuemu

// --- arithmetic intrinsics and device functions ------------------------------------------------------------
// The emulated build compiles with -ffp-contract=off, so a + b * c is never fused: the _rn intrinsics are the
// plain IEEE operations (round to nearest even), as on the GPU. expf, logf, sqrtf (and __expf, __logf, which
// glibc declares itself) are the C library's, which may differ from nvcc's by an ulp (README: what the emulator
// cannot see).

static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float a) { return a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : a; }
static inline float __int_as_float(int i) { return cuemu_from_bits<float>((uint32_t)i); }
static inline int __float_as_int(float f) { return (int)(uint32_t)cuemu_bits(f); }
static inline float __uint_as_float(unsigned i) { return cuemu_from_bits<float>(i); }
static inline unsigned __float_as_uint(float f) { return (unsigned)cuemu_bits(f); }

static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }

// CUDA's integer min/max overloads (float and double come from math.h's fminf/fmaxf and std::)
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// Atomics: the fibers of a block never run at the same time and blocks run one after another, so a plain
// read-modify-write is atomic here (the order of the updates is the emulator's, not a GPU's).
template <typename T>
static inline T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
static inline T atomicMax(T *p, T v) {
    T old = *p;
    *p = old > v ? old : v;
    return old;
}
template <typename T>
static inline T atomicMin(T *p, T v) {
    T old = *p;
    *p = old < v ? old : v;
    return old;
}
template <typename T>
static inline T atomicExch(T *p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <typename T>
static inline T atomicCAS(T *p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}

#endif
