// Picking the next token from logits: greedy (temperature 0), or temperature + top-k + top-p (nucleus)
// sampling from a seeded RNG.
#ifndef KVLAB_SAMPLE_H
#define KVLAB_SAMPLE_H

#include "../common/common.h"

typedef struct {
    float temperature; // 0 = greedy
    int top_k;         // 0 = off
    float top_p;       // 1 = off
} SampleConfig;

// The index of the largest logit (the first one on ties): greedy decoding's choice and every evaluation's
// top-1. The one argmax of build/infer.
int sample_argmax(const float *logits, int V);

// probs_scratch and index_scratch hold V entries each (no allocation per token).
int sample_next(const float *logits, int V, const SampleConfig *sc, Rng *rng, float *probs_scratch,
                int *index_scratch);

#endif
