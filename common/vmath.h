// Vectorised element-wise math on float arrays: exp, the softmax pieces built on it, and the max. AVX-512 or
// AVX2 (whichever the build targets: configure.py compiles with -march=native) with a scalar tail, and a
// scalar build for other CPUs. exp is a Cody-Waite range reduction and a degree-6 polynomial: within 2 ulp
// of expf over [-87, 88]; below -87.33 it returns 0, above 88.72 it returns FLT_MAX (never inf or NaN for
// a finite input). tests/test_vmath.c checks every function against libm.
#ifndef KVLAB_VMATH_H
#define KVLAB_VMATH_H

#include <stddef.h>

// y[i] = exp(x[i]); y may equal x.
void vmath_exp(float *y, const float *x, size_t n);
// x[i] = exp(x[i] - shift), returns the sum of the results (accumulated in float lanes, then in double).
float vmath_exp_shift_sum(float *x, size_t n, float shift);
// max over x (n >= 1).
float vmath_max(const float *x, size_t n);
// x[i] *= s
void vmath_scale(float *x, size_t n, float s);
// In-place softmax over n >= 1 values: max, exp_shift_sum, scale.
void vmath_softmax(float *x, size_t n);

#endif
