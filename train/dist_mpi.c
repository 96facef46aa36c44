// dist.h on MPI (linked into build/train when configure.py finds an MPI compiler wrapper; dist_serial.c is the
// one-process build). MPI is initialised only when a launcher started the process, so a plain `build/train`
// never touches it. Calls return errors to us (MPI_ERRORS_RETURN) and a failed one ends the whole job with one
// line: a rank cannot fail alone without leaving the others waiting in the next collective.
#include "dist.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

static int g_active; // MPI_Init ran and MPI_Finalize has not
static int g_rank, g_size = 1, g_local_rank;
static char g_about[MPI_MAX_LIBRARY_VERSION_STRING + 64];

// Ends the job when an MPI call did not succeed: the call, where, and MPI's words for the error.
#define MPI_CHECK(call) dist_check((call), #call, __FILE__, __LINE__)
static void dist_check(int rc, const char *what, const char *file, int line) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fprintf(stderr, "train: rank %d: %s failed at %s:%d: %s\n", g_rank, what, file, line, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

// A count for an MPI call (an int): a part of more than INT_MAX elements is a model no run here reaches.
static int mpi_count(size_t n) {
    CHECK(n <= (size_t)INT_MAX);
    return (int)n;
}

int dist_init(char *err) {
    int rank = 0, size = 1;
    if (!dist_env_launched(&rank, &size)) return 0;
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) {
        char msg[MPI_MAX_ERROR_STRING] = "";
        int len = 0;
        MPI_Error_string(rc, msg, &len);
        err_set(err, "rank %d: MPI_Init_thread failed: %s", rank, msg);
        return -1;
    }
    g_active = 1;
    atexit(dist_finalize);
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_size));
    if (provided < MPI_THREAD_FUNNELED) {
        if (g_rank == 0) // every rank meets it alike: rank 0 says it, and the job ends
            fprintf(stderr, "train: the MPI library offers no MPI_THREAD_FUNNELED (OpenMP threads beside MPI)\n");
        dist_abort(1);
    }
    MPI_Comm local;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_rank(local, &g_local_rank));
    MPI_CHECK(MPI_Comm_free(&local));
    return 0;
}

int dist_rank(void) { return g_rank; }
int dist_size(void) { return g_size; }
int dist_local_rank(void) { return g_local_rank; }
int dist_has_mpi(void) { return 1; }

const char *dist_about(void) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING] = "";
    int len = 0;
    MPI_Get_library_version(version, &len); // allowed before MPI_Init
    version[strcspn(version, ",\n")] = 0;   // "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4"
    snprintf(g_about, sizeof g_about, "MPI (%s): launch N ranks with mpirun -np N build/train ...", version);
    return g_about;
}

// Collectives on buffers of any length go in pieces of at most CHUNK elements (MPI counts are ints).
#define CHUNK ((size_t)1 << 28)

void dist_allreduce_sum_f32(float *x, size_t n) {
    if (g_size == 1) return;
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x + i, mpi_count(k), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    }
}

void dist_allreduce_sum_f64(double *x, size_t n) {
    if (g_size == 1) return;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x, mpi_count(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
}

void dist_bcast(void *buf, size_t bytes) {
    if (g_size == 1) return;
    MPI_CHECK(MPI_Bcast(buf, mpi_count(bytes), MPI_BYTE, 0, MPI_COMM_WORLD));
}

// count/displ (size_t) -> the int arrays MPI takes.
static void mpi_counts(const size_t *count, const size_t *displ, int *c, int *d) {
    for (int r = 0; r < g_size; r++) {
        c[r] = mpi_count(count[r]);
        d[r] = mpi_count(displ[r]);
    }
}

void dist_allgatherv_f32(float *x, const size_t *count, const size_t *displ) {
    if (g_size == 1) return;
    int *c = common_calloc((size_t)g_size, sizeof(int)), *d = common_calloc((size_t)g_size, sizeof(int));
    mpi_counts(count, displ, c, d);
    MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, c, d, MPI_FLOAT, MPI_COMM_WORLD));
    common_free(c);
    common_free(d);
}

void dist_gatherv_f32(float *full, const float *part, const size_t *count, const size_t *displ) {
    if (g_size == 1) {
        memmove(full + displ[0], part, count[0] * sizeof(float));
        return;
    }
    int *c = common_calloc((size_t)g_size, sizeof(int)), *d = common_calloc((size_t)g_size, sizeof(int));
    mpi_counts(count, displ, c, d);
    MPI_CHECK(MPI_Gatherv(part, c[g_rank], MPI_FLOAT, full, c, d, MPI_FLOAT, 0, MPI_COMM_WORLD));
    common_free(c);
    common_free(d);
}

int dist_agree(int failed, char *err) {
    if (g_size == 1) return failed ? -1 : 0;
    int mine = failed ? g_rank : INT_MAX, first = INT_MAX;
    MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    if (first == INT_MAX) return 0;
    char reason[ERR_LEN];
    if (g_rank == first) snprintf(reason, sizeof reason, "%s", err);
    MPI_CHECK(MPI_Bcast(reason, ERR_LEN, MPI_CHAR, first, MPI_COMM_WORLD));
    reason[ERR_LEN - 1] = 0;
    err_set(err, "rank %d: %s", first, reason);
    return -1;
}

void dist_finalize(void) {
    if (!g_active) return;
    g_active = 0;
    MPI_Finalize();
}

_Noreturn void dist_abort(int status) {
    fflush(stdout);
    fflush(stderr);
    if (g_active) MPI_Abort(MPI_COMM_WORLD, status);
    exit(status);
}
