// The CUDA emulator's runtime API (include/cuda_runtime.h) besides launches: device memory (host memory, every
// allocation recorded so copies, memsets, frees and cuBLAS operands are checked against it), errors, streams (work
// runs at once, in order), the memory pool, and an H100-like device's properties.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>

#include "emu_limits.h"

cudaError_t cuemu_last_error = cudaSuccess;

namespace {

std::mutex g_mem_lock;
std::map<uintptr_t, size_t> &g_allocs = *new std::map<uintptr_t, size_t>; // device allocations: base -> bytes

// The allocation holding [p, p + bytes): its base, or 0.
uintptr_t find_alloc(const void *p, size_t bytes, size_t *size) {
    std::lock_guard<std::mutex> lock(g_mem_lock);
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return 0;
    --it;
    if (a < it->first || a - it->first > it->second || bytes > it->second - (a - it->first)) return 0;
    if (size) *size = it->second;
    return it->first;
}

int is_device(const void *p) { return find_alloc(p, 0, NULL) != 0; }

cudaError_t check_range(const void *p, size_t bytes, const char *call, const char *what) {
    const char *why = cuemu_device_range_problem(p, bytes);
    if (!why) return cudaSuccess;
    fprintf(stderr, "cuda-emu: %s: %s: %s\n", call, what, why);
    return cudaErrorInvalidValue;
}

} // namespace

// cuemu_device_range_problem without running the queued copies (the queueing copy itself checks with this)
static const char *range_problem(const void *p, size_t bytes) {
    static thread_local char buf[256];
    if (find_alloc(p, bytes, NULL)) return NULL;
    std::lock_guard<std::mutex> lock(g_mem_lock);
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it != g_allocs.begin() && (--it, a >= it->first && a - it->first <= it->second))
        snprintf(buf, sizeof buf, "%zu bytes at offset %zu of a %zu-byte device allocation run past its end", bytes,
                 (size_t)(a - it->first), it->second);
    else
        snprintf(buf, sizeof buf, "%p is not in any device allocation (a host pointer?)", p);
    return buf;
}

extern "C" const char *cuemu_device_range_problem(const void *p, size_t bytes) {
    cuemu_flush_copies(); // whatever touches device memory next sees the queued copies done (emu_host.cpp)
    return range_problem(p, bytes);
}

extern "C" cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    if (device != 0) return cudaErrorInvalidValue;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "kvlab CUDA emulator (H100-like, CPU)");
    p->totalGlobalMem = 80ull << 30;
    p->sharedMemPerBlock = EMU_SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = EMU_SMEM_OPTIN;
    p->sharedMemPerMultiprocessor = 233472;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = EMU_MAX_THREADS;
    p->maxThreadsDim[0] = EMU_MAX_BLOCK_XY, p->maxThreadsDim[1] = EMU_MAX_BLOCK_XY;
    p->maxThreadsDim[2] = EMU_MAX_BLOCK_Z;
    p->maxGridSize[0] = (int)EMU_MAX_GRID_X, p->maxGridSize[1] = (int)EMU_MAX_GRID_YZ;
    p->maxGridSize[2] = (int)EMU_MAX_GRID_YZ;
    p->major = 9, p->minor = 0;
    p->multiProcessorCount = 132;
    p->maxThreadsPerMultiProcessor = 2048;
    p->l2CacheSize = 50 << 20;
    p->totalConstMem = 65536;
    return cudaSuccess;
}

extern "C" cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }
extern "C" cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}
extern "C" cudaError_t cudaDeviceSynchronize(void) {
    cuemu_flush_copies();
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetLastError(void) {
    cudaError_t e = cuemu_last_error;
    cuemu_last_error = cudaSuccess;
    return e;
}
extern "C" cudaError_t cudaPeekAtLastError(void) { return cuemu_last_error; }

extern "C" const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    }
    return "cudaErrorUnknown";
}

extern "C" const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    }
    return "unrecognized error code";
}

extern "C" cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    void *p = NULL;
    // exactly `bytes` (AddressSanitizer then sees a read one past the end), 256-aligned as cudaMalloc's
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) {
        *ptr = NULL;
        return cudaErrorMemoryAllocation;
    }
    std::lock_guard<std::mutex> lock(g_mem_lock);
    g_allocs[(uintptr_t)p] = bytes;
    *ptr = p;
    return cudaSuccess;
}

extern "C" cudaError_t cudaFree(void *ptr) {
    if (!ptr) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lock(g_mem_lock);
        auto it = g_allocs.find((uintptr_t)ptr);
        if (it == g_allocs.end()) {
            fprintf(stderr, "cuda-emu: cudaFree(%p): not the start of a device allocation\n", ptr);
            return cudaErrorInvalidValue;
        }
        g_allocs.erase(it);
    }
    free(ptr);
    return cudaSuccess;
}

extern "C" cudaError_t cudaMallocAsync(void **ptr, size_t bytes, cudaStream_t stream) {
    (void)stream;
    return cudaMalloc(ptr, bytes);
}

extern "C" cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream) {
    (void)stream;
    return cudaFree(ptr);
}

// cudaMemcpy's stream: a copy complete when it returns (never queued)
#define CUEMU_SYNC_COPY ((cudaStream_t)(uintptr_t)-1)

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                                       cudaStream_t stream) {
    if (kind == cudaMemcpyHostToDevice && stream != CUEMU_SYNC_COPY && bytes && cuemu_is_pinned(src, bytes)) {
        const char *why = range_problem(dst, bytes);
        if (why) {
            fprintf(stderr, "cuda-emu: cudaMemcpy(HostToDevice): destination: %s\n", why);
            return cudaErrorInvalidValue;
        }
        cuemu_queue_copy(dst, src, bytes); // the one copy a GPU overlaps with the host (emu_host.cpp)
        return cudaSuccess;
    }
    cuemu_flush_copies(); // every other copy runs after the queued ones, in stream order
    if (bytes == 0) return cudaSuccess;
    cudaError_t e = cudaSuccess;
    switch (kind) {
    case cudaMemcpyHostToDevice:
        e = check_range(dst, bytes, "cudaMemcpy(HostToDevice)", "destination");
        if (!e && is_device(src)) {
            fprintf(stderr, "cuda-emu: cudaMemcpy(HostToDevice): the source %p is device memory\n", src);
            e = cudaErrorInvalidValue;
        }
        break;
    case cudaMemcpyDeviceToHost:
        e = check_range(src, bytes, "cudaMemcpy(DeviceToHost)", "source");
        if (!e && is_device(dst)) {
            fprintf(stderr, "cuda-emu: cudaMemcpy(DeviceToHost): the destination %p is device memory\n", dst);
            e = cudaErrorInvalidValue;
        }
        break;
    case cudaMemcpyDeviceToDevice:
        e = check_range(src, bytes, "cudaMemcpy(DeviceToDevice)", "source");
        if (!e) e = check_range(dst, bytes, "cudaMemcpy(DeviceToDevice)", "destination");
        break;
    case cudaMemcpyHostToHost:
    case cudaMemcpyDefault: break;
    default: return cudaErrorInvalidMemcpyDirection;
    }
    if (e) return e;
    memmove(dst, src, bytes);
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return cudaMemcpyAsync(dst, src, bytes, kind, CUEMU_SYNC_COPY);
}

extern "C" cudaError_t cudaMemsetAsync(void *ptr, int byte, size_t bytes, cudaStream_t stream) {
    (void)stream;
    if (bytes == 0) return cudaSuccess;
    cudaError_t e = check_range(ptr, bytes, "cudaMemset", "destination");
    if (e) return e;
    memset(ptr, byte, bytes);
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemset(void *ptr, int byte, size_t bytes) { return cudaMemsetAsync(ptr, byte, bytes, 0); }

struct CUstream_st {
    int id;
};
struct CUmemPoolHandle_st {
    uint64_t release_threshold;
};
static CUmemPoolHandle_st g_pool_handle;

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *stream) {
    *stream = new CUstream_st{1};
    return cudaSuccess;
}
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}
extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream; // every launch and copy already ran to completion but the queued ones
    cuemu_flush_copies();
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device) {
    if (device != 0) return cudaErrorInvalidValue;
    *pool = &g_pool_handle;
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value) {
    if (!pool || !value) return cudaErrorInvalidValue;
    if (attr == cudaMemPoolAttrReleaseThreshold) pool->release_threshold = *(uint64_t *)value;
    return cudaSuccess;
}
