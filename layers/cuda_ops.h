// Declarations of the CUDA ops; ops_cuda.cu gathers them into the `ops_cuda` table. Each `<op>_cuda` has
// exactly the name pattern, argument order and semantics of `<op>_cpu` (layers/cpu_ops.h, described in
// ops.h): every pointer is a device pointer (except dropout_mask's Rng, which is the host RNG), and the op
// is queued on cuda_stream() (asynchronous unless noted). Plain C: callers never need CUDA headers. In a
// build without CUDA nothing here is defined; callers check device_cuda_available() and KVLAB_CUDA first.
#ifndef KVLAB_CUDA_OPS_H
#define KVLAB_CUDA_OPS_H

#include <stddef.h>

#include "../common/common.h"
#include "../attention/attention_cuda.h"
#include "ops.h"

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

void encoder_forward_cuda(float *out, const int *tokens, const float *wte, int B, int T, int C);
void encoder_backward_cuda(float *dwte, const float *dout, const int *tokens, int B, int T, int C);
void rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                           const float *rstd, int N, int C);
void matmul_forward_cuda(float *out, const float *inp, const float *weight, int N, int IN, int OUT);
void matmul_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          int N, int IN, int OUT);
// k <= 8 products of one input (ops.h): one grouped cuBLAS call in fp32/tf32 (the weight gradients too), k
// cuBLASLt products after one rounding of the shared input in bf16; dinp: k accumulating products in j order.
void matmul_many_forward_cuda(float *const *outs, const float *inp, const float *const *weights, const int *outs_dim,
                              int k, int N, int IN);
void matmul_many_backward_cuda(float *dinp, float *const *dweights, const float *const *douts, const float *inp,
                               const float *const *weights, const int *outs_dim, int k, int N, int IN);
// layers/matmul.cu: ops.h's precision_set (every later matmul_*_cuda; the cuBLAS handle's math mode), the mode now,
// and the bf16 shadow of the registered block: precision_shadow_cuda gives the bf16 words (a __nv_bfloat16 *) of
// [p, p + n) when p lies in the block (the range must then end inside it), else NULL; precision_refresh_cuda
// re-rounds the shadow over a write of `bytes` at dst (no-op outside the block; asynchronous);
// precision_forget_cuda drops the shadow when ptr is the registered block (before it is freed).
int precision_set_cuda(int mode, const float *params, size_t n, char *err);
int precision_get_cuda(void);
void *precision_shadow_cuda(const float *p, size_t n);
void precision_refresh_cuda(const void *dst, size_t bytes);
void precision_forget_cuda(const void *ptr);
void rope_forward_cuda(float *x, int B, int T, int NH, int HD, int pos0, float theta);
void rope_backward_cuda(float *dx, int B, int T, int NH, int HD, int pos0, float theta);
void swiglu_forward_cuda(float *out, const float *a, const float *b, size_t N);
void swiglu_backward_cuda(float *da, float *db, const float *dout, const float *a, const float *b, size_t N);
void residual_forward_cuda(float *out, const float *a, const float *b, const float *scale_b, size_t N);
void dropout_apply_cuda(float *out, const float *inp, const float *keep, size_t N);
void fill_zero_cuda(float *x, size_t N);
// The counter-based mask (layers/dropout.h): the same two RNG draws as dropout_mask_cpu on the host, the
// Philox words on the device; bit-identical to the CPU backend. Asynchronous.
void dropout_mask_cuda(float *keep, size_t N, float p, Rng *rng);
void crossentropy_forward_cuda(float *losses, float *probs, const float *logits, const int *targets, int N, int V);

// Forward and backward in one pass, never materialising probs: losses (N) = -log softmax(logits)[target]
// (losses may be NULL), dlogits (N,V) = (softmax(logits) - onehot(target)) * dloss, overwritten.
// dlogits == logits (in place) is allowed. targets must not be NULL.
void crossentropy_fused_forward_backward_cuda(float *losses, float *dlogits, const float *logits, const int *targets,
                                              float dloss, int N, int V);

// layers/adamw.cu, the optimizer step on the GPU. A CUDA train step mirrors the CPU one (train/trainer.c):
//   scale_cuda(grads, n, 1.0f / grad_accum);          // average over micro-batches
//   float norm = grad_norm_cuda(grads, n);            // before clipping
//   if (clip > 0 && norm > clip) scale_cuda(grads, n, clip / (norm + 1e-6f));
//   adamw_update_segments_cuda(...) over the whole block in one launch (weight decay per tensor as on the CPU)
// The same float arithmetic as adamw_update_cpu (bias corrections computed on the host with powf, no FMA
// contraction on the device): bit-identical to the CPU. Asynchronous. adamw_update_cuda: one segment. Params inside
// the block registered by precision_set_cuda in bf16 get their bf16 shadow written by the same kernel.
void adamw_update_segments_cuda(float *params, const float *grads, float *m, float *v, const AdamwSegments *seg,
                                float lr, float beta1, float beta2, float eps, int t);
void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, int t);
// sqrt(sum grads[i]^2), accumulated in double in a fixed order (two-pass block reduction: the same bits every
// run for the same n), returned to the host: synchronises the stream.
float grad_norm_cuda(const float *grads, size_t n);
// x (n) *= s. Asynchronous.
void scale_cuda(float *x, size_t n, float s);

extern const Ops ops_cuda;

#ifdef __cplusplus
}
#endif

#endif
