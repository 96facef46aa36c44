// H2O (Zhang et al. 2023): heavy hitters by attention accumulated over all queries so far, plus the R most
// recent tokens. Over budget, the token with the lowest accumulated attention outside the recent window goes.
// On pages, the blocks overlapping the newest R tokens stay and the others compete on the attention summed
// over layers and heads, up to ceil((H+R)/B) + 1 blocks.
#include "policy.h"

static int h2o_parse(KVSpec *spec, const char *args) {
    int v[2];
    if (kv_parse_ints(args, v, 2) != 2 || v[0] < 1 || v[1] < 1) return -1;
    spec->heavy = v[0];
    spec->recent = v[1];
    return 0;
}

static int h2o_budget(const KVSpec *spec) { return spec->heavy + spec->recent; }

static void h2o_observe(KVLane *lane, const KVSpec *spec, const float *att, int seen, int prompt) {
    (void)spec;
    (void)seen;
    (void)prompt;
    for (int s = 0; s < lane->n; s++) lane->score[s] += att[s];
}

static int h2o_victim(const KVLane *lane, const KVSpec *spec, int budget, Rng *rng) {
    (void)rng;
    return kv_policy_extreme(lane, 0, lane->n - kv_policy_protected(spec->recent, budget), 1);
}

static int h2o_block_victim(const KVBlockSet *b, const KVSpec *spec, Rng *rng) {
    (void)rng;
    int budget = (spec->heavy + spec->recent + b->block - 1) / b->block + 1, held = 0, victim = -1;
    int last = (b->n_tokens - 1) / b->block;
    for (int i = 0; i <= last && i < b->n_blocks; i++) held += kv_block_held(b, i);
    if (held <= budget) return -1;
    for (int i = 0; i < last && i < b->n_blocks; i++) {
        if (!kv_block_held(b, i) || (i + 1) * b->block > b->n_tokens - spec->recent) continue;
        if (victim < 0 || b->score[i] < b->score[victim]) victim = i; // ties: the oldest
    }
    return victim;
}

const KVPolicy kv_policy_h2o = {
    .name = "h2o",
    .form = "h2o:H,R",
    .help = "H heavy hitters by accumulated attention plus the R most recent tokens",
    .parse = h2o_parse,
    .budget = h2o_budget,
    .needs_scores = 1,
    .observe = h2o_observe,
    .victim = h2o_victim,
    .block_victim = h2o_block_victim,
};
