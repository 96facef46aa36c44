// H2O (Zhang et al. 2023): heavy hitters by attention accumulated over all queries so far, plus the R most
// recent tokens. Over budget, the token with the lowest accumulated attention outside the recent window goes.
#include "kv.h"

int kv_victim_h2o(const KVLane *lane, const KVSpec *spec, int budget) {
    int recent = spec->recent < budget ? spec->recent : budget - 1; // a per-layer budget can be smaller
    int last = lane->n - recent;                                     // candidates: slots [0, last)
    int best = 0;
    for (int s = 1; s < last; s++)
        if (lane->score[s] < lane->score[best]) best = s;
    return best;
}
