// L2-norm eviction (Devoto et al. 2024): a low key norm goes with high attention, so the token whose key
// (before RoPE, which keeps norms) has the largest L2 norm goes. Needs no attention scores; the first L layers
// are left whole (2 by default, as in the paper's code).
#include <math.h>

#include "policy.h"

static int knorm_parse(KVSpec *spec, const char *args) {
    int v[2], n = kv_parse_ints(args, v, 2);
    if (n < 1 || v[0] < 1) return -1;
    spec->keep = v[0];
    spec->skip_layers = n > 1 ? v[1] : 2;
    return 0;
}

static int knorm_budget(const KVSpec *spec) { return spec->keep; }

static int knorm_layer_budget(const KVSpec *spec, int layer, int budget) {
    return layer < spec->skip_layers ? 0 : budget;
}

static float knorm_enter_score(const float *k, int head_dim) {
    float norm = 0.0f;
    for (int i = 0; i < head_dim; i++) norm += k[i] * k[i];
    return sqrtf(norm);
}

static int knorm_victim(const KVLane *lane, const KVSpec *spec, int budget, Rng *rng) {
    (void)spec;
    (void)budget;
    (void)rng;
    return kv_policy_extreme(lane, 0, lane->n, -1);
}

const KVPolicy kv_policy_knorm = {
    .name = "knorm",
    .form = "knorm:B[,L]",
    .help = "the B tokens with the smallest key norms; the first L layers (2) whole",
    .parse = knorm_parse,
    .budget = knorm_budget,
    .layer_budget = knorm_layer_budget,
    .needs_scores = 1,
    .enter_score = knorm_enter_score,
    .victim = knorm_victim,
};
