// A work-sharing loop for short passes (the decode step's matrix-vector products and attention heads, a few
// microseconds each) that never waits for a thread that has not started. An OpenMP parallel region ends with a
// barrier that waits for every thread of the team, so when a partner thread is descheduled (another process
// busy on its core) every region waits for a time slice: decode fell from thousands of tokens/s to hundreds
// (issue 13). Here each participant takes chunks from its own share and then steals from the others' ends, and
// the caller waits only for chunks another thread has actually begun: a helper that does not show up costs
// nothing but its share, which the caller does itself. With partners running, each keeps taking the same share
// at every call, so the weights each core reads stay in its own cache.
//
// Helpers are started on first use, up to omp_get_max_threads() - 1 (OMP_NUM_THREADS applies); between
// passes they spin for POOL_SPIN_US microseconds, then sleep on a futex. A call from inside an OpenMP parallel
// region, from inside a pool pass, or while another thread's pass is running, runs on the calling thread.
#ifndef KVLAB_POOL_H
#define KVLAB_POOL_H

#include <stddef.h>

#include "par.h"

#define POOL_SPIN_US 50
// Handing a pass to a spinning helper costs a few cache-line transfers (well under a microsecond), a fraction
// of an OpenMP fork and join, so a pass pays for itself at a quarter of par_worth's threshold (measured on the
// decode step at width 128: 8192 was faster than 32768 and 16384, no slower than 4096).
#define POOL_MIN_WORK (PAR_MIN_ELEMS / 4)

static inline int pool_worth(size_t work) { return work >= POOL_MIN_WORK; }
#define POOL_MAX_CHUNKS 65535

// Runs fn(ctx, i) once for every i in [0, n) (n <= POOL_MAX_CHUNKS), on the calling thread and the pool's
// helpers; returns when all have run. work is the whole pass's size in par.h's units (elements or multiply-
// adds): below POOL_MIN_WORK the pass runs on the calling thread, above it each participant gets at least half
// that (a pass of 3 x POOL_MIN_WORK uses at most 6 threads, whatever the machine).
// Participant t's share of chunks is the same at every call with the same n and thread count; the order within
// and across shares is unspecified, so fn must write disjoint outputs.
void pool_for(int n, size_t work, void (*fn)(void *ctx, int i), void *ctx);

// Participants a pool_for called now from this thread would use (1: the calling thread alone).
int pool_threads(void);

#endif
