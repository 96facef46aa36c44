// The device side as plain C sees it: whether a CUDA GPU is usable, and device memory by opaque pointer, so
// model wiring, trainers and tests never include CUDA headers. Built without CUDA (no nvcc at configure
// time) every call below reports "built without CUDA" or aborts; device_cuda_available says which.
#ifndef KVLAB_DEVICE_H
#define KVLAB_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

// 1 when this build has CUDA and a device answers; else 0 with the reason in `why` (ERR_LEN bytes, may be
// NULL). Cheap after the first call.
int device_cuda_available(char *why);
// The device's name ("NVIDIA H100 80GB HBM3"), or "none".
const char *device_cuda_name(void);

// Device memory. Allocation failure aborts naming the size; transfers are synchronous on the op stream.
void *device_malloc(size_t bytes);
void device_free(void *ptr);
void device_upload(void *dst, const void *src, size_t bytes);   // host -> device
void device_download(void *dst, const void *src, size_t bytes); // device -> host
void device_memset(void *ptr, int byte, size_t bytes);
void device_synchronize(void);

#ifdef __cplusplus
}
#endif

#endif
