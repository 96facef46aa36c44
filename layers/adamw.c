// The optimizer ops on the CPU: AdamW (Loshchilov & Hutter 2019), Adam with weight decay decoupled from the
// gradient (p -= lr * wd * p, applied only to the tensors the caller marks as decayed), the global gradient
// norm and gradient scaling. They are ops like the others (ops.h) so a CUDA train step runs the same sequence;
// layers/adamw.cu is their CUDA twin, bit-identical for the update and the scale.
//
// The update is vectorised (common/simd.h) with the scalar code's operations in its order and no fused
// multiply-add, so a vector lane, the scalar tail and the CUDA kernel give the same bits. Passes split into
// fixed chunks across threads when they pay for a parallel region (common/par.h).
#include "cpu_ops.h"

#include <math.h>

#include "../common/par.h"
#include "../common/simd.h"

#define OPT_CHUNK 4096

typedef struct {
    float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay, bc1, bc2;
} AdamwArgs;

static void adamw_range(float *params, const float *grads, float *m, float *v, size_t n, const AdamwArgs *a) {
    size_t i = 0;
#if VF_W
    vf b1 = vf_set1(a->beta1), b2 = vf_set1(a->beta2), c1 = vf_set1(a->one_minus_beta1);
    vf c2 = vf_set1(a->one_minus_beta2), bc1 = vf_set1(a->bc1), bc2 = vf_set1(a->bc2), eps = vf_set1(a->eps);
    vf wd = vf_set1(a->weight_decay), lr = vf_set1(a->lr);
    for (; i + VF_W <= n; i += VF_W) {
        vf g = vf_load(grads + i);
        vf mi = vf_add(vf_mul(b1, vf_load(m + i)), vf_mul(c1, g));
        vf vi = vf_add(vf_mul(b2, vf_load(v + i)), vf_mul(vf_mul(c2, g), g));
        vf_store(m + i, mi);
        vf_store(v + i, vi);
        vf mhat = vf_div(mi, bc1), vhat = vf_div(vi, bc2);
        vf p = vf_load(params + i);
        vf step = vf_add(vf_div(mhat, vf_add(vf_sqrt(vhat), eps)), vf_mul(wd, p));
        vf_store(params + i, vf_sub(p, vf_mul(lr, step)));
    }
#endif
    for (; i < n; i++) {
        float g = grads[i];
        m[i] = a->beta1 * m[i] + a->one_minus_beta1 * g;
        v[i] = a->beta2 * v[i] + a->one_minus_beta2 * g * g;
        float mhat = m[i] / a->bc1;
        float vhat = v[i] / a->bc2;
        params[i] -= a->lr * (mhat / (sqrtf(vhat) + a->eps) + a->weight_decay * params[i]);
    }
}

void adamw_update_cpu(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int t) {
    AdamwArgs a = {lr, beta1, beta2, 1.0f - beta1, 1.0f - beta2, eps, weight_decay,
                   1.0f - powf(beta1, (float)t), 1.0f - powf(beta2, (float)t)};
    size_t chunks = (n + OPT_CHUNK - 1) / OPT_CHUNK;
#pragma omp parallel for if (par_worth(n)) schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        size_t i = c * OPT_CHUNK, k = n - i < OPT_CHUNK ? n - i : OPT_CHUNK;
        adamw_range(params + i, grads + i, m + i, v + i, k, &a);
    }
}

// OPT_CHUNK pieces of every segment handed to the team in one parallel region (not one region per segment: every
// region is a wait on a shared machine); element-wise, so the same bits as adamw_update_cpu per segment.
void adamw_update_segments_cpu(float *params, const float *grads, float *m, float *v, const AdamwSegments *seg,
                               float lr, float beta1, float beta2, float eps, int t) {
    CHECK(seg->n >= 0 && seg->n <= ADAMW_MAX_SEGMENTS);
    size_t piece0[ADAMW_MAX_SEGMENTS + 1], start = 0; // segment i holds pieces [piece0[i], piece0[i + 1])
    piece0[0] = 0;
    for (int i = 0; i < seg->n; i++) {
        CHECK(seg->end[i] >= start);
        piece0[i + 1] = piece0[i] + (seg->end[i] - start + OPT_CHUNK - 1) / OPT_CHUNK;
        start = seg->end[i];
    }
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    long pieces = (long)piece0[seg->n];
#pragma omp parallel for if (par_worth(start)) schedule(static)
    for (long k = 0; k < pieces; k++) {
        int i = 0;
        while ((size_t)k >= piece0[i + 1]) i++;
        size_t lo = (i ? seg->end[i - 1] : 0) + ((size_t)k - piece0[i]) * OPT_CHUNK;
        size_t len = seg->end[i] - lo < OPT_CHUNK ? seg->end[i] - lo : OPT_CHUNK;
        AdamwArgs a = {lr, beta1, beta2, 1.0f - beta1, 1.0f - beta2, eps, seg->decay[i], bc1, bc2};
        adamw_range(params + lo, grads + lo, m + lo, v + lo, len, &a);
    }
}

void scale_cpu(float *x, size_t n, float s) {
#pragma omp parallel for if (par_worth(n)) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// Sum of squares of one block in double: lanes of doubles, then the lanes in a fixed order, then the tail.
static double sumsq_range(const float *x, size_t n) {
    size_t i = 0;
    double s = 0.0;
#if defined(__AVX512F__)
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (; i + 16 <= n; i += 16) {
        __m512d lo = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)), hi = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        acc0 = _mm512_fmadd_pd(lo, lo, acc0);
        acc1 = _mm512_fmadd_pd(hi, hi, acc1);
    }
    double lanes[8];
    _mm512_storeu_pd(lanes, _mm512_add_pd(acc0, acc1));
    for (int k = 0; k < 8; k++) s += lanes[k];
#elif defined(__AVX2__)
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    for (; i + 8 <= n; i += 8) {
        __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        acc0 = _mm256_fmadd_pd(lo, lo, acc0);
        acc1 = _mm256_fmadd_pd(hi, hi, acc1);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(acc0, acc1));
    for (int k = 0; k < 4; k++) s += lanes[k];
#endif
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

// Fixed blocks of NORM_BLOCK elements summed in double and then added in block order: the same bits every
// run, whatever the thread count (the blocks depend on n only).
#define NORM_BLOCK 16384
float grad_norm_cpu(const float *x, size_t n) {
    size_t blocks = (n + NORM_BLOCK - 1) / NORM_BLOCK;
    double total = 0.0;
    for (size_t b0 = 0; b0 < blocks; b0 += 256) { // partial sums of up to 256 blocks at a time, on the stack
        size_t nb = blocks - b0 < 256 ? blocks - b0 : 256;
        double part[256];
#pragma omp parallel for if (par_worth(nb * NORM_BLOCK)) schedule(static)
        for (size_t b = 0; b < nb; b++) {
            size_t i = (b0 + b) * NORM_BLOCK;
            part[b] = sumsq_range(x + i, n - i < NORM_BLOCK ? n - i : NORM_BLOCK);
        }
        for (size_t b = 0; b < nb; b++) total += part[b];
    }
    return (float)sqrt(total);
}
