// The CUDA backend's op table: the same ops as ops_cpu (ops.h), on device pointers, queued on cuda_stream().
// Each op is tested against ops_cpu in tests/test_backend_ops.c and tests/test_backend_attention.c.
// Designated initializers in declaration order (nvcc accepts them in C++17; an out-of-order field is an
// error, so the table cannot silently drift from ops.h).
//
// Also the entry point of libkvlab_cuda.so, the shared object every .cu source is linked into
// (common/device_backend.h): kvlab_cuda_backend hands common/device.c this table and the device functions.
#include "../common/cuda_check.cuh"
#include "../common/device.h"
#include "../common/device_backend.h"
#include "../common/upload.cuh"
#include "cuda_ops.h"
#include "ops.h"

// ops.h: mem_alloc zeroes and never returns NULL (device_malloc aborts on failure)
static void *mem_alloc_cuda(size_t bytes) {
    void *p = device_malloc(bytes);
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes ? bytes : 1, cuda_stream()));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
    return p;
}

// The parameter block's bf16 shadow follows every write into it (ops.h precision_set): an upload re-rounds the
// range it wrote, freeing the block drops the shadow.
static void mem_upload_cuda(void *dst, const void *src, size_t bytes) {
    device_upload_staged(dst, src, bytes);
    precision_refresh_cuda(dst, bytes);
}

static void mem_free_cuda(void *ptr) {
    precision_forget_cuda(ptr);
    device_free(ptr);
}

extern "C" const Ops ops_cuda = {
    .name = "cuda",
    .on_device = 1,
    .flash_max_hd = ATTENTION_FLASH_MAX_HD,
    .mem_alloc = mem_alloc_cuda,
    .mem_free = mem_free_cuda,
    .mem_upload = mem_upload_cuda,   // no wait: staged through page-locked memory (common/upload.cuh)
    .mem_download = device_download, // synchronous
    .precision_set = precision_set_cuda,
    .scale = scale_cuda,
    .grad_norm = grad_norm_cuda,
    .adamw_update = adamw_update_segments_cuda,
    .encoder_forward = encoder_forward_cuda,
    .encoder_backward = encoder_backward_cuda,
    .rmsnorm_forward = rmsnorm_forward_cuda,
    .rmsnorm_backward = rmsnorm_backward_cuda,
    .matmul_forward = matmul_forward_cuda,
    .matmul_backward = matmul_backward_cuda,
    .matmul_many_forward = matmul_many_forward_cuda,
    .matmul_many_backward = matmul_many_backward_cuda,
    .rope_forward = rope_forward_cuda,
    .rope_backward = rope_backward_cuda,
    .attention_forward = attention_forward_cuda,
    .attention_backward = attention_backward_cuda,
    .attention_flash_forward = attention_flash_forward_cuda,
    .attention_flash_backward = attention_flash_backward_cuda,
    .attention_decode = attention_decode_cuda,
    .swiglu_forward = swiglu_forward_cuda,
    .swiglu_backward = swiglu_backward_cuda,
    .residual_forward = residual_forward_cuda,
    .dropout_apply = dropout_apply_cuda,
    .fill_zero = fill_zero_cuda,
    .dropout_mask = dropout_mask_cuda,
    .crossentropy_forward = crossentropy_forward_cuda,
    .crossentropy_fused = crossentropy_fused_forward_backward_cuda,
    // device-only: the device KV cache (decode/device_store.c)
    .kv_encode_rows = kv_encode_rows_cuda,
    .attention_decode_kv = attention_decode_kv_cuda,
};

static const DeviceCudaBackend backend = {
    .abi = DEVICE_CUDA_ABI,
    .ops_size = sizeof(Ops),
    .ops = &ops_cuda,
    .available = device_cuda_available,
    .name = device_cuda_name,
    .mem_alloc = device_malloc,
    .mem_free = device_free,
    .mem_upload = device_upload,
    .mem_download = device_download,
    .mem_set = device_memset,
    .synchronize = device_synchronize,
};

// The library's one entry point (exported by layers/ops_cuda.map; everything else in it stays local).
extern "C" const DeviceCudaBackend *kvlab_cuda_backend(void) { return &backend; }
