// dist.h for a build without MPI: one process, every collective a no-op. Started by an MPI launcher as one of
// several processes, it refuses to run (each copy would train alone and write the same checkpoint).
#include "dist.h"

#include <string.h>

#include "../common/common.h"

int dist_init(char *err) {
    int rank = 0, size = 1;
    if (dist_env_launched(&rank, &size) && size != 1) {
        err_set(err, "started by an MPI launcher as rank %d of %d, but this build/train has no MPI (configure.py "
                "found no mpicc: install libopenmpi-dev openmpi-bin and re-run ./configure.py)", rank, size);
        return -1;
    }
    return 0;
}

int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
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
