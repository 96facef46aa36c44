#!/usr/bin/env bash
# Packs what a first GPU run needs into one folder that runs on a machine with the NVIDIA driver and the CUDA
# toolkit but none of our Debian packages (the lent GPU machines: nvcc 13.0, no OpenBLAS, Criterion, xxHash,
# libmicrohttpd or jansson): the programs and libkvlab_cuda.so built here, the shared libraries they load
# (found with ldd) except the C library and the CUDA libraries (the GPU machine's toolkit provides those, and
# cuBLAS alone is over 500 MB), the corpus, and scripts/gpu-check.sh. On the GPU machine:
#
#   bash BUNDLE/gpu-check.sh RESULTS_DIR
#
# usage: scripts/gpu-bundle.sh OUT_DIR [--builddir DIR]   (DIR: an existing build with CUDA; default: configures
#        and builds build-gpu/ here without MPI, a whole second build of a few minutes, which needs nvcc)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out="" builddir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --builddir) builddir="${2:?--builddir needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu-bundle: unknown flag '$1' (see --help)" >&2; exit 2 ;;
        *) [ -z "$out" ] || { echo "gpu-bundle: one output folder only" >&2; exit 2; }; out="$1"; shift ;;
    esac
done
[ -n "$out" ] || { echo "usage: scripts/gpu-bundle.sh OUT_DIR [--builddir DIR]" >&2; exit 2; }
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    echo "gpu-bundle: '$out' exists and is not empty; give a new folder" >&2
    exit 1
fi

if [ -z "$builddir" ]; then
    builddir=build-gpu
    ./configure.py --builddir "$builddir" --no-mpi > /dev/null # the GPU checks run one process; MPI's libraries cost MBs
    ninja -f "$builddir/build.ninja"
fi
for f in train infer bench serve tests libkvlab_cuda.so; do
    [ -e "$builddir/$f" ] || { echo "gpu-bundle: $builddir/$f is missing (a build with nvcc makes libkvlab_cuda.so)" >&2; exit 1; }
done

mkdir -p "$out/bin" "$out/lib" "$out/data"
cp "$builddir"/{train,infer,bench,serve,tests,libkvlab_cuda.so} "$out/bin/"
strip --strip-debug "$out"/bin/* # symbols stay (backtraces), debug sections go
cp data/tinyshakespeare.txt "$out/data/"
cp scripts/gpu-check.sh "$out/"
git rev-parse HEAD > "$out/COMMIT" 2>/dev/null || echo unknown > "$out/COMMIT"

# the libraries the programs load, less glibc, the dynamic loader, libstdc++, libgcc_s, zlib and libffi (the GPU
# machine has its own, newer: its tools load them too) and
# the CUDA toolkit's (taken from the GPU machine: the same major version, 13, as the nvcc that built these)
skip='^(libkvlab_cuda|libstdc\+\+|libgcc_s|libz\.so|libffi|linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libcuda|libcudart|libcublas|libcurand|libnvidia|libnvrtc|libnvJitLink)'
for f in "$out"/bin/*; do
    LD_LIBRARY_PATH="$out/bin" ldd "$f" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
    if [[ "$name" =~ $skip ]]; then continue; fi
    cp -L "$path" "$out/lib/$name"
done
size=$(du -sm "$out" | cut -f1)
echo "gpu-bundle: $out ($size MB): bin/ $(ls "$out/bin" | tr '\n' ' '), $(ls "$out/lib" | wc -l) libraries in lib/"
if [ "$size" -gt 64 ]; then
    echo "gpu-bundle: $size MB is over the 64 MB a device call carries" >&2
    exit 1
fi
