// Random eviction: over budget, a token chosen uniformly at random among all but the newest R goes (seeded,
// so a run repeats). The control every eviction study needs: a policy that beats it has learned something
// about which tokens matter. On pages, a random held block outside the newest R tokens goes while the
// sequence holds more than ceil(B/block) + 1 blocks.
#include "policy.h"

static int random_parse(KVSpec *spec, const char *args) { // B[,R[,SEED]]
    int v[3], n = kv_parse_ints(args, v, 3);
    if (n < 1 || v[0] < 1) return -1;
    spec->keep = v[0];
    spec->recent = n > 1 ? v[1] : 4;
    spec->seed = n > 2 ? (uint64_t)v[2] : 1;
    return spec->recent < spec->keep ? 0 : -1;
}

static int random_budget(const KVSpec *spec) { return spec->keep; }

static int random_victim(const KVLane *lane, const KVSpec *spec, int budget, Rng *rng) {
    int candidates = lane->n - kv_policy_protected(spec->recent, budget);
    return (int)rng_below(rng, (uint64_t)(candidates > 0 ? candidates : 1));
}

static int random_block_victim(const KVBlockSet *b, const KVSpec *spec, Rng *rng) {
    int budget = (spec->keep + b->block - 1) / b->block + 1, held = 0, candidates = 0;
    int last = (b->n_tokens - 1) / b->block;
    for (int i = 0; i <= last && i < b->n_blocks; i++) held += kv_block_held(b, i);
    if (held <= budget) return -1;
    for (int i = 0; i < last && i < b->n_blocks; i++)
        candidates += kv_block_held(b, i) && (i + 1) * b->block <= b->n_tokens - spec->recent;
    if (candidates == 0) return -1;
    int pick = (int)rng_below(rng, (uint64_t)candidates);
    for (int i = 0; i < last && i < b->n_blocks; i++)
        if (kv_block_held(b, i) && (i + 1) * b->block <= b->n_tokens - spec->recent && pick-- == 0) return i;
    return -1;
}

const KVPolicy kv_policy_random = {
    .name = "random",
    .form = "random:B[,R[,SEED]]",
    .help = "B tokens; over budget a uniformly random one outside the newest R (4) goes (the control)",
    .parse = random_parse,
    .budget = random_budget,
    .evict_at_append = 1,
    .victim = random_victim,
    .block_victim = random_block_victim,
};
