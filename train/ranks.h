// The check that every rank of a data-parallel run (train/dist.h) set up the same run: the same corpus tokens,
// model (config and starting weights) and training settings and state. A rank given another corpus (or other
// flags, through mpirun's per-rank argument lists) would otherwise train a different model in lockstep, or
// wait forever in a collective whose sizes differ.
#ifndef KVLAB_RANKS_H
#define KVLAB_RANKS_H

#include "trainer.h"

// A collective, after every rank's setup succeeded: compares this rank's fingerprints (XXH64) with rank 0's.
// m's parameters and s's moments are whole and in host memory. Returns 0, or -1 on every rank with one line
// in err naming the first rank that differs and what differs ("rank R: its corpus 'PATH' differs ...").
int train_ranks_check(const Corpus *c, const Model *m, const TrainState *s, const TrainConfig *tc, const char *data,
                      char *err);

#endif
