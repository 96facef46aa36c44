// The optimizer step on the GPU: AdamW with the semantics of adamw_update (train/adamw.c) and the global
// gradient norm + scale that train_step (train/trainer.c) uses for averaging and clipping. Plain C; every
// pointer is a device pointer; defined only in builds with CUDA (check KVLAB_CUDA and
// device_cuda_available first). A CUDA train step mirrors the CPU one:
//   scale_cuda(grads, n, 1.0f / grad_accum);          // average over micro-batches
//   float norm = grad_norm_cuda(grads, n);            // before clipping
//   if (clip > 0 && norm > clip) scale_cuda(grads, n, clip / (norm + 1e-6f));
//   adamw_update_cuda(...) per parameter tensor (weight decay per tensor as on the CPU)
#ifndef KVLAB_ADAMW_CUDA_H
#define KVLAB_ADAMW_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

// Same arguments and float arithmetic as adamw_update (bias corrections computed on the host with powf, no
// FMA contraction on the device): bit-identical to the CPU. t is the 1-based step count. Asynchronous.
void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, int t);

// sqrt(sum grads[i]^2), accumulated in double in a fixed order (two-pass block reduction: the same bits
// every run for the same n), returned to the host: synchronises the stream.
float grad_norm_cuda(const float *grads, size_t n);

// x (n) *= s. Asynchronous.
void scale_cuda(float *x, size_t n, float s);

#ifdef __cplusplus
}
#endif

#endif
