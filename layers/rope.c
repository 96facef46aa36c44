// Rotary position embedding (Su et al. 2021) on interleaved pairs (x[2i], x[2i+1]) of each head, angle
// pos * theta^(-2i/HD). The rotation is orthogonal, so the backward pass is the rotation by -angle.
#include "cpu_ops.h"

#include <math.h>

#include "../common/par.h"

#define ROPE_MAX_HALF 512

// Double precision: positions far past the trained context stay accurate. The KV cache's RoPE table uses
// this too, so a cache rotates keys bit-identically to the training forward.
double rope_angle(int pos, int i, int HD, float theta) { return (double)pos * pow((double)theta, -2.0 * i / HD); }

// cos and sin of every pair's angle at pos, from rope_angle. Each thread keeps the last position it was asked
// for: a decode step rotates the query of every layer at the same position, so only the first layer pays for
// the half-head of pow, cos and sin in double.
typedef struct {
    int pos, HD, valid;
    float theta;
    float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
} RopeRow;

static const RopeRow *rope_row(int pos, int HD, float theta) {
    static _Thread_local RopeRow memo;
    if (!memo.valid || memo.pos != pos || memo.HD != HD || memo.theta != theta) {
        for (int i = 0; i < HD / 2; i++) {
            double ang = rope_angle(pos, i, HD, theta);
            memo.cs[i] = (float)cos(ang);
            memo.sn[i] = (float)sin(ang);
        }
        memo.pos = pos, memo.HD = HD, memo.theta = theta, memo.valid = 1;
    }
    return &memo;
}

static void rope_rotate(float *x, int B, int T, int NH, int HD, int pos0, float theta, float sign) {
    CHECK(HD % 2 == 0 && HD / 2 <= ROPE_MAX_HALF);
    int half = HD / 2;
#pragma omp parallel for if (par_worth((size_t)B * T * NH * HD)) schedule(static)
    for (int t = 0; t < T; t++) {
        const RopeRow *rr = rope_row(pos0 + t, HD, theta);
        const float *cs = rr->cs, *sn = rr->sn;
        for (int b = 0; b < B; b++) {
            float *row = x + ((size_t)b * T + t) * NH * HD;
            for (int h = 0; h < NH; h++) {
                float *v = row + h * HD;
                for (int i = 0; i < half; i++) {
                    float a = v[2 * i], c = v[2 * i + 1], s = sign * sn[i];
                    v[2 * i] = a * cs[i] - c * s;
                    v[2 * i + 1] = a * s + c * cs[i];
                }
            }
        }
    }
}

void rope_forward_cpu(float *x, int B, int T, int NH, int HD, int pos0, float theta) {
    rope_rotate(x, B, T, NH, HD, pos0, theta, 1.0f);
}

void rope_backward_cpu(float *dx, int B, int T, int NH, int HD, int pos0, float theta) {
    rope_rotate(dx, B, T, NH, HD, pos0, theta, -1.0f);
}
