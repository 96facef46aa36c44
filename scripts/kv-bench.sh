#!/usr/bin/env bash
# Runs every KV technique through `build/infer --eval ... --kv SPEC --json` on one checkpoint and prints the
# JSON lines and a markdown table (the figures in BENCHMARKS.md come from this script).
#   [CTX=256] [STREAMS=N] scripts/kv-bench.sh CKPT [quality|recall|stream|speed] [OUT.jsonl]
# then: python3 scripts/kv-table.py OUT.jsonl
# quality: perplexity / KL / top-1 / bytes on the validation split at the model's context, budgets of 25%.
# recall:  recall accuracy by distance at the model's context.
# stream:  sink+window vs window-only far past the trained context (16x).
# speed:   decode tokens/s at contexts 256, 1024, 4096 for a few specs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ckpt=${1:?usage: scripts/kv-bench.sh CKPT [quality|recall|stream|speed] [OUT.jsonl]}
mode=${2:-quality}
out=${3:-/dev/stdout}
mkdir -p build
tail -c 111540 data/tinyshakespeare.txt > build/val.txt  # the validation split (last 10%) of the corpus
ctx=${CTX:-256}   # tokens per stream (the checkpoint's trained context, or more); budgets are 25% of it
b=$((ctx / 4)); h=$((b / 2))
run() { build/infer --ckpt "$ckpt" "$@" --json; }
case "$mode" in
quality)
    for spec in full full+fp16 full+int8 full+int4 full+int2 full+int4+hadamard full+int2+hadamard \
                full+kivi4 full+kivi2 full+int4+fpkeep:4,32 full+int2+fpkeep:4,32 \
                full+lowrank:6 full+lowrank:4 full+minicache:2 full+minicache:2,90 \
                window:$b sink:4,window:$((b - 4)) h2o:$h,$h tova:$b snapkv:$h,$h knorm:$b \
                tova:$b+pyramid h2o:$h,$h+pyramid sink:4,window:$((b - 4))+int4; do
        run --eval build/val.txt --kv "$spec" --context "$ctx" --streams "${STREAMS:-8}"
    done ;;
recall)
    for spec in full window:$b sink:4,window:$((b - 4)) h2o:$h,$h tova:$b snapkv:$h,$h knorm:$b full+int4 full+kivi2; do
        run --eval recall --kv "$spec" --context "$ctx" --streams "${STREAMS:-20}"
    done ;;
stream)
    for spec in sink:4,window:$((ctx - 4)) window:$ctx sink:1,window:$((ctx - 1)); do
        run --eval build/val.txt --kv "$spec" --context $((16 * ctx)) --prefill "$ctx" --streams 1
    done ;;
speed)
    for c in 256 1024 4096; do
        for spec in full full+int4 full+kivi4 tova:$b window:$b; do
            run --eval build/val.txt --kv "$spec" --context "$c" --prefill $((c - 32)) --streams 1
        done
    done ;;
*) echo "kv-bench: unknown mode '$mode' (quality, recall, stream, speed)" >&2; exit 1 ;;
esac > "$out"
