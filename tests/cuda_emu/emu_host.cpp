// The CUDA emulator's page-locked host memory, its asynchronous copies, and events (include/cuda_runtime.h). Host
// memory from cudaMallocHost is plain host memory, never a device allocation, so a kernel or a device-side copy that
// reads it is still caught. A cudaMemcpyAsync from it to the device is the one asynchronous transfer a GPU really
// overlaps with the host, so here it waits in a queue and reads its source only when the stream reaches a point
// that needs it: the next launch, cuBLAS call or other copy or memset (anything that checks a device range), a
// stream, device or event synchronisation, cudaFreeHost. A host write into the staging buffer before then (a slot
// reused too early) changes what arrives, as it would on a GPU. Every other copy runs at once, in order after the
// queued ones.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>
#include <vector>

#include "emu_limits.h"

namespace {

struct PendingCopy {
    void *dst;
    const void *src;
    size_t bytes;
};

std::mutex g_host_lock;
std::map<uintptr_t, size_t> &g_pinned = *new std::map<uintptr_t, size_t>; // cudaMallocHost blocks: base -> bytes
std::vector<PendingCopy> &g_pending = *new std::vector<PendingCopy>;     // queued host-to-device copies, in order

} // namespace

extern "C" int cuemu_is_pinned(const void *p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_host_lock);
    uintptr_t a = (uintptr_t)p;
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return 0;
    --it;
    return a >= it->first && a - it->first <= it->second && bytes <= it->second - (a - it->first);
}

extern "C" void cuemu_queue_copy(void *dst, const void *src, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_host_lock);
    g_pending.push_back(PendingCopy{dst, src, bytes});
}

extern "C" void cuemu_flush_copies(void) {
    std::lock_guard<std::mutex> lock(g_host_lock);
    for (const PendingCopy &c : g_pending) memmove(c.dst, c.src, c.bytes);
    g_pending.clear();
}

struct CUevent_st {
    unsigned flags;
    int recorded;
};

extern "C" cudaError_t cudaMallocHost(void **ptr, size_t bytes) {
    if (!ptr) return cudaErrorInvalidValue;
    *ptr = calloc(1, bytes ? bytes : 1);
    if (!*ptr) return cudaErrorMemoryAllocation;
    std::lock_guard<std::mutex> lock(g_host_lock);
    g_pinned[(uintptr_t)*ptr] = bytes;
    return cudaSuccess;
}

extern "C" cudaError_t cudaFreeHost(void *ptr) {
    if (!ptr) return cudaSuccess;
    cuemu_flush_copies();
    {
        std::lock_guard<std::mutex> lock(g_host_lock);
        auto it = g_pinned.find((uintptr_t)ptr);
        if (it == g_pinned.end()) {
            fprintf(stderr, "cuda-emu: cudaFreeHost(%p): not a cudaMallocHost block\n", ptr);
            return cudaErrorInvalidValue;
        }
        g_pinned.erase(it);
    }
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
    if (!event) return cudaErrorInvalidResourceHandle;
    cuemu_flush_copies(); // everything before the event (and after it: the emulator keeps one queue) has run
    return cudaSuccess;
}
