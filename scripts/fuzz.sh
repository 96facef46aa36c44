#!/usr/bin/env bash
# Runs kvlab's libFuzzer targets (tests/fuzz/) for a given time each.
#
#   scripts/fuzz.sh TARGET|all SECONDS [libFuzzer flags...]
#
# TARGET: checkpoint | spec | corpus | http | gguf (the files tests/fuzz/<target>.c), or all (one after another;
# FUZZ_JOBS=2 runs two at a time). Builds them first (`ninja fuzz`: clang with libFuzzer, ASan + UBSan).
# Environment:
#   KVLAB_BUILDDIR  the configure.py --builddir whose build.ninja to use (default build; the fuzz programs are
#                   in <builddir>-fuzz/)
#   FUZZ_JOBS       targets run at once with `all` (default 1)
#   FUZZ_NICE       nice level (default 10: the fuzzers yield to everything else)
# Each run starts from the seed corpus tests/fuzz/corpus/<target>/ (read only) plus what earlier runs found
# (<builddir>-fuzz/work/<target>/, where new inputs go); crashes, leaks, timeouts and OOMs land in
# <builddir>-fuzz/artifacts/<target>/ and the log in <builddir>-fuzz/logs/<target>.log. The summary line per
# target gives its executions and its findings. A finding that is fixed goes into tests/fuzz/crashes/<target>/,
# which the test suite replays (tests/test_fuzz_replay.c). Exit status: 0 when every target ran clean.
set -u
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/fuzz.sh TARGET|all SECONDS [libFuzzer flags...]   (targets: $(targets | tr '\n' ' '))" >&2; exit 2; }
targets() {
    for f in tests/fuzz/*.c; do
        b=$(basename "$f" .c)
        case "$b" in fuzz_common|main_libfuzzer) ;; *) echo "$b" ;; esac
    done
}

[ $# -ge 2 ] || usage
what=$1 secs=$2
shift 2
case "$secs" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$secs'" >&2; exit 2 ;; esac
if [ "$what" = all ]; then
    list=$(targets)
else
    targets | grep -qx -- "$what" || { echo "fuzz.sh: no fuzz target '$what'" >&2; usage; }
    list=$what
fi

builddir=${KVLAB_BUILDDIR:-build}
if [ "$builddir" = build ]; then ninja_file=build.ninja; else ninja_file=$builddir/build.ninja; fi
[ -f "$ninja_file" ] || { echo "fuzz.sh: $ninja_file not found: run ./configure.py${KVLAB_BUILDDIR:+ --builddir $builddir} first" >&2; exit 1; }
ninja -f "$ninja_file" fuzz || { echo "fuzz.sh: ninja fuzz failed (clang with libFuzzer: apt-get install clang)" >&2; exit 1; }
fuzzdir=$builddir-fuzz

run_one() {
    local t=$1
    shift
    mkdir -p "$fuzzdir/work/$t" "$fuzzdir/artifacts/$t" "$fuzzdir/logs"
    local log=$fuzzdir/logs/$t.log
    # one thread per process (OpenMP regions in the kernels); leak checks on; stop at the first finding
    OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
        nice -n "${FUZZ_NICE:-10}" "$fuzzdir/fuzz_$t" "$fuzzdir/work/$t" "tests/fuzz/corpus/$t" \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$fuzzdir/artifacts/$t/" "$@" >"$log" 2>&1
    local rc=$?
    local execs found
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    found=$(ls "$fuzzdir/artifacts/$t" | wc -l)
    printf 'fuzz %-10s %6ss  %10s execs  exit %d  %d artifact(s) in %s  log %s\n' "$t" "$secs" "${execs:-?}" \
        "$rc" "$found" "$fuzzdir/artifacts/$t" "$log"
    [ "$rc" -eq 0 ]
}

status=0
jobs_max=${FUZZ_JOBS:-1}
pids=()
for t in $list; do
    run_one "$t" "$@" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs_max" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
