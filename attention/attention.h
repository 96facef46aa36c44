// The CPU attention ops (naive causal attention forward and backward, the decode step's attention over a
// cache), defined in attention/ and gathered into the ops table by layers/ops_cpu.c. Shapes as layers/ops.h
// describes them: q (B,T,NH,HD), k and v (B,T,NKV,HD), query head h reads kv head h/(NH/NKV).
#ifndef KVLAB_ATTENTION_H
#define KVLAB_ATTENTION_H

#include <stddef.h>

void attention_forward_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                           int NH, int NKV, int HD);
void attention_backward_cpu(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                            const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int HD);
// p (n) = softmax(p), max-subtracted, in place (the decode attention's row; attention/decode.c).
void softmax_inplace_cpu(float *p, int n);
void attention_decode_cpu(float *out, float *att, const float *q, const float *kc, const float *vc, int Tc,
                          size_t head_stride, int NH, int NKV, int HD);

#endif
