#!/usr/bin/env bash
# Installs what kvlab needs to build and test on Debian 12 (or Ubuntu): the one list of packages, used by
# the README and by CI (.ci/run). Runs as root, or through sudo otherwise. Extra arguments are passed to
# apt-get install (e.g. --dry-run).
set -euo pipefail

packages=(
    gcc libc6-dev              # C11 compiler, OpenMP (libgomp), ASan/UBSan runtimes
    g++                        # the CUDA emulator (tests/cuda_emu/): every CUDA kernel tested without a GPU or nvcc
    ninja-build python3        # build: ./configure.py writes build.ninja
    libopenblas-openmp-dev     # CBLAS matrix products (the OpenMP build of OpenBLAS)
    libcriterion-dev           # unit tests
    libxxhash-dev              # hashing: checksums, prefix blocks
    libstb-dev                 # stb_ds.h (hash maps, dynamic arrays), stb_image_write.h
    libmicrohttpd-dev          # build/serve: the HTTP server (thread per connection, chunked SSE)
    libjansson-dev             # build/serve: JSON requests and responses
    gnuplot-nox                # ninja report: the plots (pngcairo)
    libopenmpi-dev openmpi-bin # build/train on several processes (mpirun -np N); the tests' suite `mpi`
)

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: not root and no sudo; run as root" >&2; exit 1; }
    sudo=(sudo)
fi

"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${packages[@]}" "$@"
