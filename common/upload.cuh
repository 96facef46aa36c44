// For .cu files only: host-to-device uploads that do not wait for the stream (the op table's mem_upload on CUDA).
#ifndef KVLAB_UPLOAD_CUH
#define KVLAB_UPLOAD_CUH

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
// Uploads up to DEVICE_STAGE_BYTES: src is copied into one of DEVICE_STAGE_SLOTS page-locked slots (so the caller
// may reuse src at once) and the transfer is queued on cuda_stream(), ordered before every later op, with no wait
// (a copy from pageable memory would synchronise the stream first). A slot is reused only after the event
// recorded behind its last transfer completed. Larger uploads (weights at load time) go through device_upload.
#define DEVICE_STAGE_BYTES ((size_t)1 << 20)
#define DEVICE_STAGE_SLOTS 4
void device_upload_staged(void *dst, const void *src, size_t bytes);
#ifdef __cplusplus
}
#endif

#endif
