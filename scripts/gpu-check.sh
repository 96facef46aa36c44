#!/usr/bin/env bash
# A first GPU run in one unattended command (under 9 minutes): run it from a bundle made by
# scripts/gpu-bundle.sh (bash BUNDLE/gpu-check.sh RESULTS_DIR), or from a repository root whose build has
# CUDA (bash scripts/gpu-check.sh RESULTS_DIR --bin build). Writes every step's log and summary.json (one
# entry per step: pass / fail / not run, with why, and seconds) under RESULTS_DIR, prints the summary, and
# exits non-zero when a step fails.
#
# Steps:
#   env          nvidia-smi (GPU, driver), nvcc if present; a CUDA 13 build needs driver >= 580
#   cuda-tests   every CUDA test (backend ops, attention, training parity); a SKIPPED CUDA test FAILS here
#   sanitizer    compute-sanitizer memcheck, racecheck and synccheck over the backend op tests (if installed)
#   train-<p>    the shakespeare preset on the GPU for a fixed time, per precision build/train offers
#                (--precision; fp32 only until it exists), validation loss and tokens/s from its log
#   grads        one step on the CPU and on the GPU from the same checkpoint at the shakespeare shape: the
#                loss (1e-4) and the global gradient norm (1e-3) must agree (build/train --log); a summary of
#                the gradients, not each one
#   bench        build/bench --device cuda (not run while build/bench has no --device)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="" bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="${2:?--bin needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu-check: unknown flag '$1' (see --help)" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
[ -n "$out" ] || { echo "usage: gpu-check.sh RESULTS_DIR [--bin DIR]" >&2; exit 2; }
if [ -z "$bin" ]; then # a bundle: bin/ and lib/ beside this script
    bin="$here/bin"
    export LD_LIBRARY_PATH="$here/lib:$here/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    data="$here/data/tinyshakespeare.txt"
else
    data="$(cd "$here/.." && pwd)/data/tinyshakespeare.txt"
fi
bin="$(cd "$bin" && pwd)"
for d in /usr/local/cuda/lib64 /usr/local/nvidia/lib64; do # the CUDA runtime and cuBLAS of the machine
    [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
mkdir -p "$out" || exit 1
out="$(cd "$out" && pwd)"
export KVLAB_BUILD="$bin" # the CLI tests run the programs from here
summary="$out/summary.json"
echo "[" > "$summary"
first=1
failed=0

# record STEP STATUS SECONDS WHY...: one line of summary.json and one of the printed summary
record() {
    local step="$1" status="$2" secs="$3"; shift 3
    local why="$*"
    why="${why//\\/\\\\}"; why="${why//\"/\\\"}"
    [ $first -eq 1 ] || echo "," >> "$summary"
    first=0
    printf '  {"step": "%s", "status": "%s", "seconds": %s, "note": "%s"}' "$step" "$status" "$secs" "$why" >> "$summary"
    printf 'gpu-check: %-12s %-8s %5ss  %s\n' "$step" "$status" "$secs" "$why"
    [ "$status" != fail ] || failed=1
}

# run STEP LIMIT CMD...: runs CMD with a time limit (cut to what is left of the 9 minutes, less a margin for
# the summary), its output to STEP.log; returns its status (124: out of time)
DEADLINE=520
run() {
    local step="$1" limit="$2"; shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then echo "gpu-check: out of time before this step" > "$out/$step.log"; return 124; fi
    timeout "$limit" "$@" > "$out/$step.log" 2>&1
}

# ---- env ----------------------------------------------------------------------------------------------------
t0=$SECONDS
{
    echo "commit: $(cat "$here/COMMIT" 2>/dev/null || git -C "$here/.." rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
    command -v nvcc > /dev/null && nvcc --version | tail -2
    command -v compute-sanitizer > /dev/null && compute-sanitizer --version | head -2
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd "$bin/libkvlab_cuda.so"
} > "$out/env.log" 2>&1
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
if [ -z "$driver" ]; then
    record env fail $((SECONDS - t0)) "nvidia-smi gave no driver version (env.log)"
elif [ "${driver%%.*}" -lt 580 ]; then
    record env fail $((SECONDS - t0)) "driver $driver: a CUDA 13 build needs >= 580"
elif grep -q "not found" "$out/env.log"; then
    record env fail $((SECONDS - t0)) "driver $driver; a library libkvlab_cuda.so needs is missing (env.log)"
else
    record env pass $((SECONDS - t0)) "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), driver $driver"
fi

# ---- the CUDA tests: none may skip ------------------------------------------------------------------------
suites='backend_ops backend_attention cuda_train device'
t0=$SECONDS
status=pass note=""
for s in $suites; do
    run "cuda-tests-$s" 240 "$bin/tests" --filter "$s/*" --verbose
    rc=$?
    skipped=$(grep -c "^\[SKIP\] $s::" "$out/cuda-tests-$s.log")
    passed=$(grep -o "Passing: [0-9]*" "$out/cuda-tests-$s.log" | tail -1 | cut -d' ' -f2)
    if [ $rc -ne 0 ] || [ "$skipped" -ne 0 ]; then
        status=fail
        note="$note $s: exit $rc, ${passed:-0} passed, $skipped skipped;"
    else
        note="$note $s: ${passed:-0} passed;"
    fi
done
record cuda-tests $status $((SECONDS - t0)) "$note"

# ---- compute-sanitizer -------------------------------------------------------------------------------------
if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck synccheck; do
        t0=$SECONDS
        run "sanitizer-$tool" 90 compute-sanitizer --tool "$tool" --target-processes all --error-exitcode 97 "$bin/tests" --filter 'backend_ops/*' -j1
        rc=$?
        if [ $rc -eq 0 ]; then record "san-$tool" pass $((SECONDS - t0)) "backend_ops under $tool"
        else record "san-$tool" fail $((SECONDS - t0)) "exit $rc (sanitizer-$tool.log)"; fi
    done
else
    record sanitizer "not run" 0 "compute-sanitizer is not installed"
fi

# ---- training at the shakespeare preset -------------------------------------------------------------------
precisions=fp32 has_precision=0
if "$bin/train" --help 2>&1 | grep -q -- "--precision"; then precisions="fp32 tf32 bf16" has_precision=1; fi
for p in $precisions; do
    t0=$SECONDS
    extra=()
    [ $has_precision -eq 0 ] || extra=(--precision "$p")
    run "train-$p" 90 "$bin/train" --preset shakespeare --device cuda --data "$data" --steps 5000 --eval-interval 250 \
        --out "$out/shakespeare-$p.ckpt" --log "$out/train-$p.jsonl" "${extra[@]}"
    rc=$?
    val=$(grep -o '"val_loss": [0-9.]*' "$out/train-$p.jsonl" 2>/dev/null | tail -1 | cut -d' ' -f2)
    tps=$(grep -o '"tokens_per_s": [0-9.]*' "$out/train-$p.jsonl" 2>/dev/null | tail -1 | cut -d' ' -f2)
    if [ $rc -eq 124 ] && [ -n "$val" ]; then # the time limit is the plan: train 90 s (start-up included), read the log
        record "train-$p" pass $((SECONDS - t0)) "val loss $val at the last validation within 90 s, $tps tokens/s (target: <= 1.47 within 90 s on an H100)"
    elif [ $rc -eq 0 ]; then
        record "train-$p" pass $((SECONDS - t0)) "finished: val loss $val, $tps tokens/s"
    else
        record "train-$p" fail $((SECONDS - t0)) "exit $rc, last val loss ${val:-none} (train-$p.log)"
    fi
done

# ---- one step on each device from the same checkpoint -----------------------------------------------------
t0=$SECONDS
base="$out/grads-init.ckpt"
if run grads-init 120 "$bin/train" --preset shakespeare --steps 1 --lr 1e-9 --min-lr 1e-9 --warmup 0 --eval-windows 64 --data "$data" --out "$base" --quiet &&
   run grads-cpu 120 "$bin/train" --init-from "$base" --steps 1 --warmup 0 --dropout 0 --eval-windows 64 --data "$data" --out "$out/grads-cpu.ckpt" --log "$out/grads-cpu.jsonl" --quiet &&
   run grads-gpu 60 "$bin/train" --init-from "$base" --steps 1 --warmup 0 --dropout 0 --eval-windows 64 --device cuda --attention naive --data "$data" --out "$out/grads-gpu.ckpt" --log "$out/grads-gpu.jsonl" --quiet; then
    pick() { grep -o "\"$1\": [0-9.e+-]*" "$2" | head -1 | cut -d' ' -f2; }
    verdict=$(python3 - "$(pick train_loss "$out/grads-cpu.jsonl")" "$(pick train_loss "$out/grads-gpu.jsonl")" \
        "$(pick grad_norm "$out/grads-cpu.jsonl")" "$(pick grad_norm "$out/grads-gpu.jsonl")" <<'EOF'
import sys
lc, lg, gc, gg = map(float, sys.argv[1:])
rel = lambda a, b: abs(a - b) / max(abs(a), 1e-30)
ok = rel(lc, lg) < 1e-4 and rel(gc, gg) < 1e-3
print('%s loss cpu %.6f gpu %.6f, grad norm cpu %.6f gpu %.6f' % ('pass' if ok else 'fail', lc, lg, gc, gg))
EOF
)
    record grads "${verdict%% *}" $((SECONDS - t0)) "${verdict#* }"
else
    record grads fail $((SECONDS - t0)) "a run failed (grads-*.log)"
fi

# ---- benchmarks --------------------------------------------------------------------------------------------
if "$bin/bench" --help 2>&1 | grep -q -- "--device"; then
    t0=$SECONDS
    if run bench 120 "$bin/bench" --device cuda --json; then record bench pass $((SECONDS - t0)) "bench.log"
    else record bench fail $((SECONDS - t0)) "bench.log"; fi
else
    record bench "not run" 0 "build/bench has no --device yet"
fi

echo "]" >> "$summary"
echo "gpu-check: logs and summary.json in $out"
exit $failed
