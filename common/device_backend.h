// The contract between common/device.c (the loader, in every program) and libkvlab_cuda.so (the CUDA backend,
// built from the .cu sources when nvcc was present at configure time). The library exports one function,
// DEVICE_CUDA_ENTRY, that returns this table; device.c finds it with dlsym after dlopen and refuses a library
// whose abi differs. Plain C, no CUDA headers; the Ops table is opaque here (layers/ is a higher floor) and
// layers/ops_select.c checks its size.
#ifndef KVLAB_DEVICE_BACKEND_H
#define KVLAB_DEVICE_BACKEND_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

#define DEVICE_CUDA_LIBRARY "libkvlab_cuda.so" // the file name, next to the program
#define DEVICE_CUDA_ENV "KVLAB_CUDA_LIB"        // a path that overrides where the library is looked up
#define DEVICE_CUDA_ENTRY "kvlab_cuda_backend"  // the one entry point: DeviceCudaEntry
#define DEVICE_CUDA_ABI 1                       // bump when this struct changes

typedef struct {
    int abi;           // DEVICE_CUDA_ABI of the sources the library was built from
    size_t ops_size;   // sizeof(Ops) there (layers/ops.h)
    const void *ops;   // the CUDA op table, an `const Ops *`
    // common/device.h's functions, as the library implements them
    int (*available)(char *why);
    const char *(*name)(void);
    void *(*mem_alloc)(size_t bytes);
    void (*mem_free)(void *ptr);
    void (*mem_upload)(void *dst, const void *src, size_t bytes);
    void (*mem_download)(void *dst, const void *src, size_t bytes);
    void (*mem_set)(void *ptr, int byte, size_t bytes);
    void (*synchronize)(void);
} DeviceCudaBackend;

typedef const DeviceCudaBackend *(*DeviceCudaEntry)(void);

#ifdef __cplusplus
}
#endif

#endif
