// The CUDA emulator's internals shared by emu_runtime.cpp (launches, blocks, collectives) and emu_api.cpp (the
// runtime API): the device's limits and the last error.
#ifndef KVLAB_CUDA_EMU_LIMITS_H
#define KVLAB_CUDA_EMU_LIMITS_H

#include "include/cuda_runtime.h"

// H100 SXM limits (compute capability 9.0)
#define EMU_MAX_THREADS 1024
#define EMU_MAX_BLOCK_XY 1024
#define EMU_MAX_BLOCK_Z 64
#define EMU_MAX_GRID_X 2147483647u
#define EMU_MAX_GRID_YZ 65535u
#define EMU_SMEM_DEFAULT (48 * 1024)  // dynamic + static shared memory without the opt-in
#define EMU_SMEM_OPTIN 232448         // 227 KB: the most one block may opt in to
#define EMU_STACK_BYTES (256 * 1024)  // per fiber (CUDA thread); AddressSanitizer frames are large
#define EMU_POISON 0xff               // shared memory fill: NaN as float and double, -1 as an integer

// cudaGetLastError's error: set by a refused launch, cleared when read
extern "C" __attribute__((visibility("hidden"))) cudaError_t cuemu_last_error;
// emu_host.cpp: host-to-device copies from cudaMallocHost memory wait in a queue until the stream needs them.
extern "C" __attribute__((visibility("hidden"))) int cuemu_is_pinned(const void *p, size_t bytes);
extern "C" __attribute__((visibility("hidden"))) void cuemu_queue_copy(void *dst, const void *src, size_t bytes);
extern "C" __attribute__((visibility("hidden"))) void cuemu_flush_copies(void);

#endif
