// common/device.h for builds without CUDA: nothing is available, and reaching for device memory is a bug
// the callers must not have (they ask device_cuda_available first).
#if !KVLAB_CUDA
#include "device.h"

#include "common.h"

int device_cuda_available(char *why) {
    if (why) err_set(why, "this build has no CUDA (nvcc was not found when ./configure.py ran)");
    return 0;
}
const char *device_cuda_name(void) { return "none"; }
void *device_malloc(size_t bytes) {
    (void)bytes;
    CHECK(!"device_malloc in a build without CUDA");
    return NULL;
}
void device_free(void *ptr) { CHECK(ptr == NULL); }
void device_upload(void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    CHECK(!"device_upload in a build without CUDA");
}
void device_download(void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    CHECK(!"device_download in a build without CUDA");
}
void device_memset(void *ptr, int byte, size_t bytes) {
    (void)ptr, (void)byte, (void)bytes;
    CHECK(!"device_memset in a build without CUDA");
}
void device_synchronize(void) {}
#else
typedef int device_none_unused; // ISO C forbids an empty translation unit
#endif
