// Learning-rate schedule: linear warm-up to lr over warmup_steps, then cosine decay to min_lr at max_steps
// (nanoGPT's get_lr).
#include <math.h>

#include "trainer.h"

// Step counts convert to float before any arithmetic: warmup + 1 and max_steps - warmup would overflow an int
// at INT_MAX, and below 2^24 the floats are exact, so the schedule is the same as in int arithmetic.
float schedule_lr(const TrainConfig *tc, int step) {
    float warmup = (float)tc->warmup_steps;
    if (step < tc->warmup_steps) return tc->lr * ((float)step + 1.0f) / (warmup + 1.0f);
    if (step >= tc->max_steps) return tc->min_lr;
    float span = (float)tc->max_steps - warmup;
    float ratio = span > 0 ? ((float)step - warmup) / span : 1.0f;
    float coeff = 0.5f * (1.0f + cosf(3.14159265358979f * ratio));
    return tc->min_lr + coeff * (tc->lr - tc->min_lr);
}
