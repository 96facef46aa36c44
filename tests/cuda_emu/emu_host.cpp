// The CUDA emulator's page-locked host memory and events (include/cuda_runtime.h). Host memory from cudaMallocHost
// is plain host memory, never a device allocation, so a kernel or a device-side copy that reads it is still caught.
// Work runs at once and in order, so an event is complete as soon as it is recorded; an event that was never
// recorded is complete too, as on a GPU. What the emulator cannot show is a host write racing a copy that a GPU
// would still be running (README: what it cannot see).
#include <stdio.h>
#include <stdlib.h>

#include "emu_limits.h"

struct CUevent_st {
    unsigned flags;
    int recorded;
};

extern "C" cudaError_t cudaMallocHost(void **ptr, size_t bytes) {
    if (!ptr) return cudaErrorInvalidValue;
    *ptr = calloc(1, bytes ? bytes : 1);
    return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

extern "C" cudaError_t cudaFreeHost(void *ptr) {
    free(ptr);
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags) {
    if (!event) return cudaErrorInvalidValue;
    *event = new CUevent_st{flags, 0};
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t event) {
    if (!event) return cudaErrorInvalidResourceHandle;
    delete event;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    (void)stream;
    if (!event) return cudaErrorInvalidResourceHandle;
    event->recorded = 1;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    return event ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
