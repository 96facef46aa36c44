// SnapKV (Li et al. 2024): at the end of the prompt, the attention of its last W queries has been summed
// per key (the votes, averaged over each key/value group's query heads); the votes are smoothed with a
// centred average pool of kernel K, the top (budget - W) prompt positions before the window are kept, and
// the window itself stays. Tokens after the prompt are appended without eviction.
#include <stdlib.h>

#include "kv.h"

static const float *vote_keys;

static int by_vote_desc(const void *a, const void *b) {
    float x = vote_keys[*(const int *)a], y = vote_keys[*(const int *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int *)a - *(const int *)b;
}

static int ascending(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

void kv_snapkv_select(const KVLane *lane, const KVSpec *spec, int budget, int *keep, float *pooled) {
    int n = lane->n, window = spec->window < budget ? spec->window : budget - 1;
    int prefix = n - window, half = spec->kernel / 2, top = budget - window;
    for (int s = 0; s < prefix; s++) {
        float sum = 0.0f;
        int count = 0;
        for (int j = s - half; j <= s + half; j++)
            if (j >= 0 && j < prefix) sum += lane->score[j], count++;
        pooled[s] = sum / count;
        keep[s] = s;
    }
    vote_keys = pooled;
    qsort(keep, prefix, sizeof(int), by_vote_desc);
    for (int j = 0; j < window; j++) keep[top + j] = prefix + j;
    qsort(keep, budget, sizeof(int), ascending);
}
