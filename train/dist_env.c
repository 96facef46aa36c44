// How a process learns it was started by an MPI launcher (dist.h), before any MPI call: the environment the
// launchers set. Shared by the MPI and the one-process builds of dist.h.
#include "dist.h"

#include <stdlib.h>

// A non-negative integer from the environment, or -1.
static int env_int(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v) return -1;
    char *end;
    long x = strtol(v, &end, 10);
    return *end || x < 0 || x > 1 << 30 ? -1 : (int)x;
}

int dist_env_launched(int *rank, int *size) {
    static const char *const pairs[][2] = {
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, // Open MPI's mpirun
        {"PMI_RANK", "PMI_SIZE"},                         // MPICH's Hydra, Slurm's PMI
        {"PMIX_RANK", "OMPI_COMM_WORLD_SIZE"},            // PMIx launchers (srun --mpi=pmix) with Open MPI
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        int r = env_int(pairs[i][0]), n = env_int(pairs[i][1]);
        if (r >= 0 && n >= 1 && r < n) {
            *rank = r;
            *size = n;
            return 1;
        }
    }
    if (env_int("PMIX_RANK") >= 0) { // a PMIx launcher without a size variable: MPI will tell
        *rank = env_int("PMIX_RANK");
        *size = 0;
        return 1;
    }
    return 0;
}
