// L2-norm eviction (Devoto et al. 2024): a low key norm goes with high attention, so the token whose key
// (before RoPE, which keeps norms) has the largest L2 norm goes. Needs no attention scores; the first layers
// are left whole (skip_layers, 2 by default as in the paper's code).
#include "kv.h"

int kv_victim_knorm(const KVLane *lane, const KVSpec *spec, int budget) {
    int worst = 0;
    for (int s = 1; s < lane->n; s++)
        if (lane->score[s] > lane->score[worst]) worst = s;
    return worst;
}
