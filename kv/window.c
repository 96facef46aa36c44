// Sliding window: keep the newest W tokens; the oldest goes. Needs no attention, so it evicts on append. On
// pages, every full block that lies entirely before the newest W tokens is dropped.
#include "policy.h"

static int window_parse(KVSpec *spec, const char *args) {
    int v;
    if (kv_parse_ints(args, &v, 1) != 1 || v < 1) return -1;
    spec->window = v;
    return 0;
}

static int window_budget(const KVSpec *spec) { return spec->window; }

static int window_victim(const KVLane *lane, const KVSpec *spec, int budget, Rng *rng) {
    (void)lane;
    (void)spec;
    (void)budget;
    (void)rng;
    return 0;
}

static int window_block_victim(const KVBlockSet *b, const KVSpec *spec, Rng *rng) {
    (void)rng;
    int last = (b->n_tokens - 1) / b->block; // the block being written always stays
    for (int i = 0; i < last && i < b->n_blocks; i++)
        if (kv_block_held(b, i) && (i + 1) * b->block <= b->n_tokens - spec->window) return i;
    return -1;
}

const KVPolicy kv_policy_window = {
    .name = "window",
    .form = "window:W",
    .help = "the newest W tokens",
    .parse = window_parse,
    .budget = window_budget,
    .evict_at_append = 1,
    .bounded_reach = 1,
    .victim = window_victim,
    .block_victim = window_block_victim,
};
