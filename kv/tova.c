// TOVA (Oren et al. 2024): keep the tokens the current query attends to most (its attention averaged over
// the query heads of each key/value group); over budget, the lowest goes, whichever token it is.
#include "kv.h"

int kv_victim_tova(const KVLane *lane, const KVSpec *spec, int budget) {
    int best = 0;
    for (int s = 1; s < lane->n; s++)
        if (lane->score[s] < lane->score[best]) best = s;
    return best;
}
