// Sliding window (keep the newest W tokens) and StreamingLLM (Xiao et al. 2024): the first S tokens, the
// attention sinks, plus the newest W. With sinks the engine rotates keys to their slot in the cache, not
// their original position, so the model never sees a position past S + W.
#include "kv.h"

int kv_victim_window(const KVLane *lane, const KVSpec *spec, int budget) { return 0; }

int kv_victim_sink(const KVLane *lane, const KVSpec *spec, int budget) {
    // the sinks stay; the oldest token after them goes (a per-layer budget smaller than S + 1 keeps S)
    int sinks = spec->sink < budget ? spec->sink : budget - 1;
    return sinks;
}
