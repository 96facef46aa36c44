// Matrix-vector products for a few input rows: the dot product of each input row with each of a range of weight
// rows, vectorised (AVX-512 or AVX2, whichever the build targets; a scalar loop elsewhere). The decode step's
// single-token products (layers/matmul.c) and the decode attention's scores (attention/decode.c) use it.
#ifndef KVLAB_MATVEC_H
#define KVLAB_MATVEC_H

#include <stddef.h>

// out[n * ldo + o] = dot(inp + n * IN, weight + o * IN) over IN floats, for n < N and o in [o0, o1). Inputs
// are taken four at a time (each group rereads the weight rows). Every output element is computed the same
// way wherever it falls (in a block of rows or a leftover row, any N, any [o0, o1) containing it), so results
// are bit-identical however the rows are split across threads or the inputs batched.
void matvec_rows(float *out, size_t ldo, const float *inp, const float *weight, int N, int IN, int o0, int o1);

#endif
