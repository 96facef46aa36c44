// StreamingLLM (Xiao et al. 2024): the first S tokens, the attention sinks, plus the newest W. Keys are
// rotated to their slot in the cache, not their original position, so the model never sees a position past
// S + W and a stream can run far past the trained context. On pages, the blocks holding a sink stay and the
// others go once they lie entirely before the newest W tokens.
#include <string.h>

#include "policy.h"

static int sink_parse(KVSpec *spec, const char *args) { // "S,window:W"
    int v[2];
    const char *w = args ? strstr(args, ",window:") : NULL;
    char num[32];
    size_t len = w ? (size_t)(w - args) : 0;
    if (!w || len == 0 || len >= sizeof(num)) return -1;
    memcpy(num, args, len);
    num[len] = 0;
    if (kv_parse_ints(num, v, 1) != 1 || kv_parse_ints(w + 8, v + 1, 1) != 1 || v[0] < 1 || v[1] < 1) return -1;
    spec->sink = v[0];
    spec->window = v[1];
    return 0;
}

static int sink_budget(const KVSpec *spec) { return spec->sink + spec->window; }
static int sink_min_budget(const KVSpec *spec) { return spec->sink + 1; }

static int sink_victim(const KVLane *lane, const KVSpec *spec, int budget, Rng *rng) {
    (void)lane;
    (void)rng;
    return spec->sink < budget ? spec->sink : budget - 1; // the oldest token after the sinks
}

static int sink_block_victim(const KVBlockSet *b, const KVSpec *spec, Rng *rng) {
    (void)rng;
    int last = (b->n_tokens - 1) / b->block;
    for (int i = 0; i < last && i < b->n_blocks; i++)
        if (kv_block_held(b, i) && i * b->block >= spec->sink && (i + 1) * b->block <= b->n_tokens - spec->window) return i;
    return -1;
}

const KVPolicy kv_policy_sink = {
    .name = "sink",
    .form = "sink:S,window:W",
    .help = "the first S tokens (attention sinks) and the newest W, positions within the cache",
    .parse = sink_parse,
    .budget = sink_budget,
    .min_budget = sink_min_budget,
    .evict_at_append = 1,
    .in_cache_positions = 1,
    .bounded_reach = 1,
    .victim = sink_victim,
    .block_victim = sink_block_victim,
};
