// Vectorised element-wise math on float arrays: exp, the softmax pieces built on it, the max, a dot product
// and SwiGLU's gate silu(a) * b with its backward. AVX-512 or AVX2 (whichever the build targets: configure.py
// compiles with -march=native) with a scalar tail, and a scalar build for other CPUs (the vector layer is
// common/simd.h). exp is a Cody-Waite range reduction and a degree-6 polynomial: within 2 ulp of expf over
// [-87, 88]; below -87.33 it returns 0, above 88 it returns exp(88) (never inf or NaN for a finite input).
// An element's result does not depend on where it falls (vector body or the masked tail vector).
// tests/test_vmath.c checks every function against libm or a double-precision reference.
#ifndef KVLAB_VMATH_H
#define KVLAB_VMATH_H

#include <stddef.h>

// y[i] = exp(x[i]); y may equal x.
void vmath_exp(float *y, const float *x, size_t n);
// x[i] = exp(x[i] - shift), returns the sum of the results (accumulated in float lanes).
float vmath_exp_shift_sum(float *x, size_t n, float shift);
// max over x (n >= 1).
float vmath_max(const float *x, size_t n);
// x[i] *= s
void vmath_scale(float *x, size_t n, float s);
// In-place softmax over n >= 1 values: max, exp_shift_sum, scale.
void vmath_softmax(float *x, size_t n);
// sum a[i] * b[i], accumulated in float lanes with fused multiply-adds (the order depends on n only).
float vmath_dot(const float *a, const float *b, size_t n);
// out[i] = silu(a[i]) * b[i], silu(a) = a * sigmoid(a) (SwiGLU's gate).
void vmath_silu_mul(float *out, const float *a, const float *b, size_t n);
// Its backward, accumulating: da[i] += dout[i] * b[i] * silu'(a[i]); db[i] += dout[i] * silu(a[i]).
void vmath_silu_mul_backward(float *da, float *db, const float *dout, const float *a, const float *b, size_t n);

#endif
