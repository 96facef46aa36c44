// The CPU backend's op table: the reference every other backend is tested against.
#include "cpu_ops.h"
#include "ops.h"

#include <string.h>

#include "../attention/flash_cpu.h"

static void *mem_alloc_cpu(size_t bytes) { return common_calloc(bytes ? bytes : 1, 1); }
static void mem_copy_cpu(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }

// ops.h's precision_set: the CPU computes in fp32 only (no shadow to keep).
static int precision_set_cpu(int mode, const float *params, size_t n, char *err) {
    (void)params;
    (void)n;
    if (mode == OPS_PRECISION_FP32) return 0;
    err_set(err, "--precision %s: the cpu backend computes in fp32 only (tf32 and bf16 need --device cuda)",
            ops_precision_name(mode));
    return -1;
}

// the ops table's flash: the default tiles, no IO counting
static void attention_flash_forward_op_cpu(float *out, float *lse, const float *q, const float *k, const float *v, int B,
                                           int T, int NH, int NKV, int HD) {
    attention_flash_forward_cpu(out, lse, q, k, v, B, T, NH, NKV, HD, NULL, NULL);
}

static void attention_flash_backward_op_cpu(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                            const float *lse, const float *q, const float *k, const float *v, int B,
                                            int T, int NH, int NKV, int HD) {
    attention_flash_backward_cpu(dq, dk, dv, dout, out, lse, q, k, v, B, T, NH, NKV, HD, NULL);
}

const Ops ops_cpu = {
    .name = "cpu",
    .on_device = 0,
    .flash_max_hd = 0,
    .mem_alloc = mem_alloc_cpu,
    .mem_free = common_free,
    .mem_upload = mem_copy_cpu,
    .mem_download = mem_copy_cpu,
    .precision_set = precision_set_cpu,
    .scale = scale_cpu,
    .grad_norm = grad_norm_cpu,
    .adamw_update = adamw_update_segments_cpu,
    .encoder_forward = encoder_forward_cpu,
    .encoder_backward = encoder_backward_cpu,
    .rmsnorm_forward = rmsnorm_forward_cpu,
    .rmsnorm_backward = rmsnorm_backward_cpu,
    .matmul_forward = matmul_forward_cpu,
    .matmul_backward = matmul_backward_cpu,
    .matmul_many_forward = matmul_many_forward_cpu,
    .matmul_many_backward = matmul_many_backward_cpu,
    .rope_forward = rope_forward_cpu,
    .rope_backward = rope_backward_cpu,
    .attention_forward = attention_forward_cpu,
    .attention_backward = attention_backward_cpu,
    .attention_flash_forward = attention_flash_forward_op_cpu,
    .attention_flash_backward = attention_flash_backward_op_cpu,
    .attention_decode = attention_decode_cpu,
    .swiglu_forward = swiglu_forward_cpu,
    .swiglu_backward = swiglu_backward_cpu,
    .residual_forward = residual_forward_cpu,
    .dropout_apply = dropout_apply_cpu,
    .fill_zero = fill_zero_cpu,
    .dropout_mask = dropout_mask_cpu,
    .crossentropy_forward = crossentropy_forward_cpu,
    .crossentropy_fused = crossentropy_fused_cpu,
};
