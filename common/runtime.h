// Process start-up that every kvlab program runs first: the right BLAS kernels and a non-spinning OpenMP
// on any x86 machine. Both libraries read their settings from the environment while they initialise (before
// main), so the fix is to set the environment and re-execute the program once (issue 13).
#ifndef KVLAB_RUNTIME_H
#define KVLAB_RUNTIME_H

// The marker that the re-executed program finds; it is removed again so child processes start clean.
#define RUNTIME_MARKER "KVLAB_RUNTIME_INIT"
// The spin count a waiting OpenMP thread uses unless the user chose a wait policy (measured: BENCHMARKS.md).
#define RUNTIME_SPINCOUNT "10000"

// Call first in main, with main's argc and argv. Unless the user set them:
//   OPENBLAS_CORETYPE  SkylakeX (AVX-512) or Haswell (AVX2+FMA) when OpenBLAS picked generic kernels;
//   GOMP_SPINCOUNT     10000 when neither it nor OMP_WAIT_POLICY is set: a waiting OpenMP thread spins that
//                      long, then sleeps. The default spin (300,000) collapses throughput when the machine is
//                      shared (2-core VM, one core busy: decode 219-673 tokens/s against 2,871-3,875); passive
//                      (no spin) costs quiet decode 12x (580 against 7,200); 10,000 keeps quiet speed.
// When it changed either, it re-executes /proc/self/exe once with the same argv (never twice: the marker
// stops it); when that fails the program goes on as it is. A help-only run (common_runtime_help_only) skips
// the re-exec, which would double its start-up; its diagnostics (common_blas_kernels,
// common_runtime_wait_policy) then name what a computing run gets.
void common_runtime_init(int argc, char **argv);

// 1 when argv[1..argc) holds --help or -h: every kvlab program then prints its usage and computes nothing.
int common_runtime_help_only(int argc, char **argv);

// The core to force for OpenBLAS's pick `core` on a CPU with the given features, or NULL to keep it.
const char *common_runtime_core_for(const char *core, int avx512f, int avx2_fma);

// "OpenBLAS 0.3.21, SkylakeX kernels, openmp" (a static string) for diagnostics: the kernels kvlab computes
// with (in a help-only run, those the re-exec of a computing run forces).
const char *common_blas_kernels(void);

// The OpenMP wait policy the program runs with: OMP_WAIT_POLICY's value, "spin N then sleep (GOMP_SPINCOUNT)",
// or "unset (libgomp default)".
const char *common_runtime_wait_policy(void);

// Whether this process was re-executed by common_runtime_init.
int common_runtime_reexecuted(void);

#endif
