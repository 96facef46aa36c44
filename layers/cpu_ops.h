// Declarations of the CPU reference ops; ops_cpu.c gathers them into the `ops_cpu` table (see ops.h for
// what each computes). Matrix products go through CBLAS (a few rows: common/matvec.h), the other hot loops
// through OpenMP when they are long enough (common/par.h).
#ifndef KVLAB_CPU_OPS_H
#define KVLAB_CPU_OPS_H

#include <stddef.h>

#include "../attention/attention.h"
#include "../common/common.h"
#include "dropout.h"
#include "ops.h"

void encoder_forward_cpu(float *out, const int *tokens, const float *wte, int B, int T, int C);
void encoder_backward_cpu(float *dwte, const float *dout, const int *tokens, int B, int T, int C);
void rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void rmsnorm_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C);
void matmul_forward_cpu(float *out, const float *inp, const float *weight, int N, int IN, int OUT);
// Products of up to MATVEC_MAX_N input rows go through common/matvec.h (faster than OpenBLAS 0.3.21's sgemm at
// every shape measured, 128..1536 wide, 1..8 rows), shared across threads by common/pool.h; larger ones are one
// sgemm. matmul_many_forward_cpu: k products of the same input in one pass (ops.h).
#define MATVEC_MAX_N 8
void matmul_many_forward_cpu(float *const *outs, const float *inp, const float *const *weights, const int *outs_dim,
                             int k, int N, int IN);
void matmul_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                         int N, int IN, int OUT);
// k matmul_backward_cpu calls (ops.h matmul_many_backward): dinp in j order, then the weight gradients.
void matmul_many_backward_cpu(float *dinp, float *const *dweights, const float *const *douts, const float *inp,
                              const float *const *weights, const int *outs_dim, int k, int N, int IN);
// The angle RoPE rotates pair i of a head of HD dimensions by at position pos.
double rope_angle(int pos, int i, int HD, float theta);
void rope_forward_cpu(float *x, int B, int T, int NH, int HD, int pos0, float theta);
void rope_backward_cpu(float *dx, int B, int T, int NH, int HD, int pos0, float theta);
void swiglu_forward_cpu(float *out, const float *a, const float *b, size_t N);
void swiglu_backward_cpu(float *da, float *db, const float *dout, const float *a, const float *b, size_t N);
void residual_forward_cpu(float *out, const float *a, const float *b, const float *scale_b, size_t N);
void dropout_apply_cpu(float *out, const float *inp, const float *keep, size_t N);
void fill_zero_cpu(float *x, size_t N);
void dropout_mask_cpu(float *keep, size_t N, float p, Rng *rng);
void crossentropy_forward_cpu(float *losses, float *probs, const float *logits, const int *targets, int N, int V);
void crossentropy_fused_cpu(float *losses, float *dlogits, const float *logits, const int *targets, float dloss, int N,
                            int V);
// layers/adamw.c: one AdamW update of n elements (t is the 1-based step); the op table's form over segments
// (ops.h); x (n) *= s; sqrt(sum x^2) in double, fixed blocks.
void adamw_update_cpu(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int t);
void adamw_update_segments_cpu(float *params, const float *grads, float *m, float *v, const AdamwSegments *seg,
                               float lr, float beta1, float beta2, float eps, int t);
void scale_cpu(float *x, size_t n, float s);
float grad_norm_cpu(const float *x, size_t n);

#endif
