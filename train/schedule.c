// Learning-rate schedule: linear warm-up to lr over warmup_steps, then cosine decay to min_lr at max_steps
// (nanoGPT's get_lr).
#include <math.h>

#include "trainer.h"

float schedule_lr(const TrainConfig *tc, int step) {
    if (step < tc->warmup_steps) return tc->lr * (float)(step + 1) / (float)(tc->warmup_steps + 1);
    if (step >= tc->max_steps) return tc->min_lr;
    float span = (float)(tc->max_steps - tc->warmup_steps);
    float ratio = span > 0 ? (float)(step - tc->warmup_steps) / span : 1.0f;
    float coeff = 0.5f * (1.0f + cosf(3.14159265358979f * ratio));
    return tc->min_lr + coeff * (tc->lr - tc->min_lr);
}
