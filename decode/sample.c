#include "sample.h"

#include <math.h>
#include <stdlib.h>

static const float *sort_keys;

static int by_prob_desc(const void *a, const void *b) {
    float pa = sort_keys[*(const int *)a], pb = sort_keys[*(const int *)b];
    if (pa != pb) return pa < pb ? 1 : -1;
    return *(const int *)a - *(const int *)b; // stable tie-break by id
}

int sample_argmax(const float *logits, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

int sample_next(const float *logits, int V, const SampleConfig *sc, Rng *rng, float *p, int *idx) {
    int best = sample_argmax(logits, V);
    if (sc->temperature <= 0.0f) return best;
    float sum = 0.0f;
    for (int i = 0; i < V; i++) {
        p[i] = expf((logits[i] - logits[best]) / sc->temperature);
        idx[i] = i;
        sum += p[i];
    }
    for (int i = 0; i < V; i++) p[i] /= sum;
    sort_keys = p;
    qsort(idx, V, sizeof(int), by_prob_desc);
    // keep the k most likely, then the smallest prefix whose mass reaches top_p
    int keep = sc->top_k > 0 && sc->top_k < V ? sc->top_k : V;
    float mass = 0.0f;
    for (int i = 0; i < keep; i++) {
        mass += p[idx[i]];
        if (mass >= sc->top_p) {
            keep = i + 1;
            break;
        }
    }
    float kept = 0.0f;
    for (int i = 0; i < keep; i++) kept += p[idx[i]];
    float r = rng_uniform(rng) * kept, acc = 0.0f;
    for (int i = 0; i < keep; i++) {
        acc += p[idx[i]];
        if (r < acc) return idx[i];
    }
    return idx[keep - 1];
}
