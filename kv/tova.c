// TOVA (Oren et al. 2024): keep the tokens the current query attends to most (its attention averaged over
// the query heads of each key/value group); over budget, the lowest goes, whichever token it is.
#include "policy.h"

static int tova_parse(KVSpec *spec, const char *args) {
    int v;
    if (kv_parse_ints(args, &v, 1) != 1 || v < 1) return -1;
    spec->keep = v;
    return 0;
}

static int tova_budget(const KVSpec *spec) { return spec->keep; }

static void tova_observe(KVLane *lane, const KVSpec *spec, const float *att, int seen, int prompt) {
    (void)spec;
    (void)seen;
    (void)prompt;
    for (int s = 0; s < lane->n; s++) lane->score[s] = att[s];
}

static int tova_victim(const KVLane *lane, const KVSpec *spec, int budget, Rng *rng) {
    (void)spec;
    (void)budget;
    (void)rng;
    return kv_policy_extreme(lane, 0, lane->n, 1);
}

const KVPolicy kv_policy_tova = {
    .name = "tova",
    .form = "tova:B",
    .help = "the B tokens the current query attends to most",
    .parse = tova_parse,
    .budget = tova_budget,
    .needs_scores = 1,
    .observe = tova_observe,
    .victim = tova_victim,
};
