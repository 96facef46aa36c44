// Process start-up that every kvlab program runs first: the right BLAS kernels and a non-spinning OpenMP
// on any x86 machine. Both libraries read their settings from the environment while they initialise (before
// main), so the fix is to set the environment and re-execute the program once (issue 13).
#ifndef KVLAB_RUNTIME_H
#define KVLAB_RUNTIME_H

// The marker that the re-executed program finds; it is removed again so child processes start clean.
#define RUNTIME_MARKER "KVLAB_RUNTIME_INIT"

// Call first in main. Unless the user set them:
//   OPENBLAS_CORETYPE  SkylakeX (AVX-512) or Haswell (AVX2+FMA) when OpenBLAS picked generic kernels;
//   OMP_WAIT_POLICY    passive (the machines are shared: spinning threads collapse under load; a user
//                      who owns the machine can export OMP_WAIT_POLICY=active).
// When it changed either, it re-executes /proc/self/exe once with the same argv (never twice: the marker
// stops it); when that fails the program goes on as it is.
void common_runtime_init(int argc, char **argv);

// The core to force for OpenBLAS's pick `core` on a CPU with the given features, or NULL to keep it.
const char *common_runtime_core_for(const char *core, int avx512f, int avx2_fma);

// "OpenBLAS 0.3.21, SkylakeX kernels, openmp" (a static string) for diagnostics.
const char *common_blas_kernels(void);

// The OpenMP wait policy the program runs with: "passive", "active", or "unset (libgomp default)".
const char *common_runtime_wait_policy(void);

// Whether this process was re-executed by common_runtime_init.
int common_runtime_reexecuted(void);

#endif
