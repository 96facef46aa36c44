// The device side as plain C sees it: whether a CUDA GPU is usable, and device memory by opaque pointer, so
// model wiring, trainers and tests never include CUDA headers. The CUDA backend is a separate shared object,
// libkvlab_cuda.so (common/device_backend.h), that common/device.c loads the first time a program asks for
// it; a program that never does (every CPU run) never loads the CUDA libraries. Without the library (no nvcc
// at configure time) every call below reports why or aborts; device_cuda_available says which.
#ifndef KVLAB_DEVICE_H
#define KVLAB_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

// 1 when the CUDA backend loads and a device answers; else 0 with the reason in `why` (ERR_LEN bytes, may be
// NULL): "this build has no CUDA (...)", "cannot load PATH: ...", or the backend's own ("no CUDA device
// found"). The first call loads the library: from $KVLAB_CUDA_LIB when set, else libkvlab_cuda.so in the
// running program's directory. Cheap after the first call.
int device_cuda_available(char *why);
// The device's name ("NVIDIA H100 80GB HBM3"), or "none".
const char *device_cuda_name(void);
// The backend's op table (layers/ops.h's `const Ops *`, opaque at this floor) and its size in bytes, once
// device_cuda_available said 1; else NULL.
const void *device_cuda_ops(size_t *ops_size);

// Device memory. Allocation failure aborts naming the size; transfers are synchronous on the op stream.
// Calling these without a usable backend is a bug (callers ask device_cuda_available first) and aborts;
// device_free(NULL) and device_synchronize() are no-ops then.
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
