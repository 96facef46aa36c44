// The check that every rank of a data-parallel run (train/dist.h) set up the same run: the same corpus tokens,
// model (config and starting weights) and training settings and state. A rank given another corpus (or other
// flags, through mpirun's per-rank argument lists) would otherwise train a different model in lockstep, or
// wait forever in a collective whose sizes differ.
#ifndef KVLAB_RANKS_H
#define KVLAB_RANKS_H

#include "trainer.h"

// The run's settings that decide which collectives run and their sizes (or, like the schedule's length, what
// every rank computes), compared one by one so that a mismatch names its flag.
typedef struct {
    int zero;          // --zero
    int last;          // the last step of this invocation (--steps, --stop-after)
    int max_steps;     // --steps (the schedule)
    int eval_interval; // --eval-interval (a save, and its all-rank check, at each evaluation)
    int on_device;     // --device: 0 cpu, 1 cuda
    int precision;     // --precision (OPS_PRECISION_*)
    int attention;     // --attention (ModelAttention)
    int batch, grad_accum, seq_len; // --batch, --grad-accum (over all ranks), --context
} RankSettings;

// A collective, after every rank's setup succeeded: compares this rank's settings, then its fingerprints
// (XXH64) with rank 0's. m's parameters and s's moments are whole and in host memory. Returns 0, or -1 on every
// rank with one line in err naming the first rank that differs and what differs ("rank R: its --zero is 1,
// rank 0's is 0 ...", "rank R: its corpus 'PATH' differs ...").
int train_ranks_check(const Corpus *c, const Model *m, const TrainState *s, const TrainConfig *tc,
                      const RankSettings *settings, const char *data, char *err);

#endif
