// Token embedding lookup. The same table is the output projection (tied weights), so its gradient gets
// contributions from both ends of the model; backward accumulates.
#include "cpu_ops.h"

#include <string.h>

void encoder_forward_cpu(float *out, const int *tokens, const float *wte, int B, int T, int C) {
    // out (B,T,C), tokens (B,T), wte (V,C)
    for (int i = 0; i < B * T; i++) memcpy(out + (size_t)i * C, wte + (size_t)tokens[i] * C, C * sizeof(float));
}

void encoder_backward_cpu(float *dwte, const float *dout, const int *tokens, int B, int T, int C) {
    // serial: several positions may hold the same token, so rows would race under a parallel loop
    for (int i = 0; i < B * T; i++) {
        float *row = dwte + (size_t)tokens[i] * C;
        const float *g = dout + (size_t)i * C;
        for (int c = 0; c < C; c++) row[c] += g[c];
    }
}
