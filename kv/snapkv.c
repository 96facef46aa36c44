// SnapKV (Li et al. 2024): at the end of the prompt, the attention of its last W queries has been summed
// per key (the votes, averaged over each key/value group's query heads); the votes are smoothed with a
// centred average pool of kernel K, the top (budget - W) prompt positions before the window are kept, and
// the window itself stays. Tokens after the prompt are appended without eviction.
#include <stdlib.h>

#include "policy.h"

static const float *vote_keys;

static int by_vote_desc(const void *a, const void *b) {
    float x = vote_keys[*(const int *)a], y = vote_keys[*(const int *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int *)a - *(const int *)b;
}

static int ascending(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void snapkv_select(const KVLane *lane, const KVSpec *spec, int budget, int *keep, float *pooled) {
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

static int snapkv_parse(KVSpec *spec, const char *args) {
    int v[3], n = kv_parse_ints(args, v, 3);
    if (n < 1 || v[0] < 1) return -1;
    spec->keep = v[0];
    spec->window = n > 1 ? v[1] : 32;
    spec->kernel = n > 2 ? v[2] : 5;
    return spec->window > 0 && spec->kernel % 2 == 1 ? 0 : -1; // a centred average pool needs an odd kernel
}

static int snapkv_budget(const KVSpec *spec) { return spec->keep + spec->window; }
static int snapkv_min_budget(const KVSpec *spec) { return spec->window + 1; }

// The votes: attention the prompt's last W queries pay each key.
static void snapkv_observe(KVLane *lane, const KVSpec *spec, const float *att, int seen, int prompt) {
    if (prompt <= 0 || seen > prompt || seen <= prompt - spec->window) return;
    for (int s = 0; s < lane->n; s++) lane->score[s] += att[s];
}

const KVPolicy kv_policy_snapkv = {
    .name = "snapkv",
    .form = "snapkv:B[,W[,K]]",
    .help = "at the end of the prompt, the B most voted tokens by its last W queries (pool K) plus those W",
    .parse = snapkv_parse,
    .budget = snapkv_budget,
    .min_budget = snapkv_min_budget,
    .needs_scores = 1,
    .observe = snapkv_observe,
    .select_prompt = snapkv_select,
    .grows_after_prompt = 1,
};
