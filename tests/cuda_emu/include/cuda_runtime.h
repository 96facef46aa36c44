// The CUDA emulator's cuda_runtime.h (tests/cuda_emu/): the vector types, the error codes and the subset of the
// CUDA runtime API that kvlab's .cu sources call, implemented on the host by ../emu_api.cpp (and the launches by
// ../emu_runtime.cpp). "Device" memory is host memory (malloc), so AddressSanitizer sees a kernel read past a
// buffer; every allocation is recorded so copies, memsets, frees and cuBLAS operands outside a device allocation
// are reported. Work on a stream runs at once, in order (every launch is synchronous).
#ifndef KVLAB_CUDA_EMU_RUNTIME_H
#define KVLAB_CUDA_EMU_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#define KVLAB_CUDA_EMU 1 // the emulator, not the CUDA toolkit

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline dim3 make_dim3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaMemPoolAttr {
    cudaMemPoolReuseFollowEventDependencies = 1,
    cudaMemPoolReuseAllowOpportunistic = 2,
    cudaMemPoolReuseAllowInternalDependencies = 3,
    cudaMemPoolAttrReleaseThreshold = 4,
};

typedef struct CUstream_st *cudaStream_t;
typedef struct CUmemPoolHandle_st *cudaMemPool_t;

// The fields a program may read; the emulator reports an H100-like device (cudaGetDeviceProperties).
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
    int regsPerBlock, warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
    int major, minor, multiProcessorCount, maxThreadsPerMultiProcessor, clockRate, memoryClockRate,
        memoryBusWidth, l2CacheSize;
    size_t totalConstMem;
};

#define CUEMU_API extern "C" __attribute__((visibility("hidden")))

CUEMU_API cudaError_t cudaGetDeviceCount(int *count);
CUEMU_API cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
CUEMU_API cudaError_t cudaSetDevice(int device);
CUEMU_API cudaError_t cudaGetDevice(int *device);
CUEMU_API cudaError_t cudaDeviceSynchronize(void);
CUEMU_API cudaError_t cudaGetLastError(void);
CUEMU_API cudaError_t cudaPeekAtLastError(void);
CUEMU_API const char *cudaGetErrorString(cudaError_t err);
CUEMU_API const char *cudaGetErrorName(cudaError_t err);
CUEMU_API cudaError_t cudaMalloc(void **ptr, size_t bytes);
CUEMU_API cudaError_t cudaFree(void *ptr);
CUEMU_API cudaError_t cudaMallocAsync(void **ptr, size_t bytes, cudaStream_t stream);
CUEMU_API cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream);
CUEMU_API cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
CUEMU_API cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                                      cudaStream_t stream);
CUEMU_API cudaError_t cudaMemset(void *ptr, int byte, size_t bytes);
CUEMU_API cudaError_t cudaMemsetAsync(void *ptr, int byte, size_t bytes, cudaStream_t stream);
CUEMU_API cudaError_t cudaStreamCreate(cudaStream_t *stream);
CUEMU_API cudaError_t cudaStreamDestroy(cudaStream_t stream);
CUEMU_API cudaError_t cudaStreamSynchronize(cudaStream_t stream);
// Page-locked host memory and events (emu_host.cpp): work runs at once, so an event is complete when recorded.
typedef struct CUevent_st *cudaEvent_t;
#define cudaEventDisableTiming 0x02
CUEMU_API cudaError_t cudaMallocHost(void **ptr, size_t bytes);
CUEMU_API cudaError_t cudaFreeHost(void *ptr);
CUEMU_API cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
CUEMU_API cudaError_t cudaEventDestroy(cudaEvent_t event);
CUEMU_API cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
CUEMU_API cudaError_t cudaEventSynchronize(cudaEvent_t event);
CUEMU_API cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device);
CUEMU_API cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value);
CUEMU_API void cuemu_func_set_attribute(const void *func, int attr, int value, cudaError_t *err);

template <typename F>
static inline cudaError_t cudaFuncSetAttribute(F *func, cudaFuncAttribute attr, int value) {
    cudaError_t err;
    cuemu_func_set_attribute(reinterpret_cast<const void *>(func), (int)attr, value, &err);
    return err;
}

// The emulator's own checks, for tests: the device allocation holding [p, p + bytes), or why not (NULL when
// it is one).
CUEMU_API const char *cuemu_device_range_problem(const void *p, size_t bytes);

#endif
