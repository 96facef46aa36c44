// The processes of a data-parallel training run (mpirun -np N build/train): who this process is, and the few
// collectives the trainer needs. Two builds of one interface: dist_mpi.c (MPI, linked into build/train when
// configure.py finds it) and dist_serial.c (one process; in the library, so tests and MPI-less builds need
// nothing). The trainer calls these functions unconditionally; with one process every collective is a no-op.
//
// A process started without an MPI launcher (no OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK in its
// environment) never initialises MPI: a single process always works without mpirun. Every collective must be
// called by every rank in the same order; the MPI error handler returns, and a failed call ends the job
// (MPI_Abort) with one line naming the call and file:line.
#ifndef KVLAB_DIST_H
#define KVLAB_DIST_H

#include <stddef.h>

// Joins the job (MPI_Init_thread(MPI_THREAD_FUNNELED) when started by a launcher: OpenMP threads exist, only the
// main thread calls MPI; MPI_Finalize runs at exit). Returns 0, or -1 with one line in err: a launcher started
// this process as one of several but the build has no MPI (err is then empty on every launcher rank but 0, so
// the refusal is printed once), or MPI_Init failed.
int dist_init(char *err);
int dist_rank(void);       // 0 .. dist_size() - 1
int dist_size(void);       // 1 without a launcher
int dist_local_rank(void); // this rank's index among the ranks on its machine (MPI_COMM_TYPE_SHARED); 0 alone
// What this build offers, for --help: "MPI (Open MPI v4.1.4, ...)" or "no MPI in this build (...)".
const char *dist_about(void);
// Whether this build can run several ranks.
int dist_has_mpi(void);

// x (n floats / doubles, host memory) = the element-wise sum over ranks, the same bits on every rank.
void dist_allreduce_sum_f32(float *x, size_t n);
void dist_allreduce_sum_f64(double *x, size_t n);
// bytes of buf on rank 0 -> every rank.
void dist_bcast(void *buf, size_t bytes);
// x (host, the whole block) holds this rank's part at [displ[rank], displ[rank] + count[rank]); afterwards every
// rank holds every part (MPI_Allgatherv in place). count and displ have dist_size() entries.
void dist_allgatherv_f32(float *x, const size_t *count, const size_t *displ);
// full (rank 0 only; ignored elsewhere) <- every rank's part (count[rank] floats) at displ[rank].
void dist_gatherv_f32(float *full, const float *part, const size_t *count, const size_t *displ);

// The all-ranks check after anything that may fail on some ranks only (setup, a save, a log write): every rank
// passes whether it failed and its one-line reason in err. Returns 0 when no rank failed; otherwise -1 on every
// rank, with err holding the lowest failing rank's reason, prefixed "rank R: " when there are several ranks.
int dist_agree(int failed, char *err);

// What the launcher's environment says (dist_env.c, shared by both builds): 1 with *rank and *size filled when an
// MPI launcher started this process (Open MPI's OMPI_COMM_WORLD_*, PMI_* of MPICH/Hydra and Slurm, PMIX_RANK),
// 0 otherwise.
int dist_env_launched(int *rank, int *size);

// Leaves the job (MPI_Finalize once; also registered to run at exit). MPI_Finalize waits for every rank: a rank
// that fails where the others cannot learn it (they are, or will be, waiting in a collective) calls dist_abort.
void dist_finalize(void);
// Ends the whole job now with exit status status (MPI_Abort: mpirun stops every rank); exit(status) with one
// process. Never returns.
_Noreturn void dist_abort(int status);

#endif
