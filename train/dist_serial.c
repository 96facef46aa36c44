// dist.h for a build without MPI: one process, every collective a no-op. Started by an MPI launcher as one of
// several processes, it refuses to run (each copy would train alone and write the same checkpoint).
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

int dist_init(char *err) {
    int rank = 0, size = 1;
    if (dist_env_launched(&rank, &size) && size != 1) {
        err[0] = 0; // the launcher's rank 0 alone says it
        if (rank == 0)
            err_set(err, "started by an MPI launcher as one of several processes, but this build/train was built "
                    "without MPI (./configure.py found no mpicc, or was given --no-mpi): install libopenmpi-dev "
                    "openmpi-bin and re-run ./configure.py without --no-mpi");
        return -1;
    }
    return 0;
}

int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
int dist_local_rank(void) { return 0; }
int dist_has_mpi(void) { return 0; }
const char *dist_about(void) {
    return "no MPI in this build (one process; install libopenmpi-dev openmpi-bin and re-run ./configure.py)";
}

// With one rank the sums, the broadcast and the all-gather leave their buffers as they are.
void dist_allreduce_sum_f32(float *x, size_t n) {}
void dist_allreduce_sum_f64(double *x, size_t n) {}
void dist_bcast(void *buf, size_t bytes) {}
void dist_allgatherv_f32(float *x, const size_t *count, const size_t *displ) {}

void dist_gatherv_f32(float *full, const float *part, const size_t *count, const size_t *displ) {
    memmove(full + displ[0], part, count[0] * sizeof(float));
}

int dist_agree(int failed, char *err) { return failed ? -1 : 0; }

void dist_finalize(void) {}

_Noreturn void dist_abort(int status) {
    fflush(stdout);
    fflush(stderr);
    exit(status);
}
