// One new query per head against the cached keys and values (the decode step). The scores and the output
// are matrix-vector products, done with CBLAS sgemv on the head-major cache view.
#include "attention.h"

#include <cblas.h>
#include <math.h>

void softmax_inplace_cpu(float *p, int n) {
    float mx = p[0];
    for (int s = 1; s < n; s++) mx = p[s] > mx ? p[s] : mx;
    float sum = 0.0f;
    for (int s = 0; s < n; s++) {
        p[s] = expf(p[s] - mx);
        sum += p[s];
    }
    for (int s = 0; s < n; s++) p[s] /= sum;
}

void attention_decode_cpu(float *out, float *att, const float *q, const float *kc, const float *vc, int Tc,
                          size_t head_stride, int NH, int NKV, int HD) {
    int rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    for (int h = 0; h < NH; h++) {
        const float *kg = kc + (h / rep) * head_stride, *vg = vc + (h / rep) * head_stride;
        float *p = att + (size_t)h * Tc;
        // scores (Tc) = scale * K_g (Tc, HD) @ q_h
        cblas_sgemv(CblasRowMajor, CblasNoTrans, Tc, HD, scale, kg, HD, q + h * HD, 1, 0.0f, p, 1);
        softmax_inplace_cpu(p, Tc);
        // out_h (HD) = V^T (HD, Tc) @ p
        cblas_sgemv(CblasRowMajor, CblasTrans, Tc, HD, 1.0f, vg, HD, p, 1, 0.0f, out + h * HD, 1);
    }
}
