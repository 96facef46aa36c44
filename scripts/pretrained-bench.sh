#!/usr/bin/env bash
# The KV experiments on a pretrained GGUF model (SmolLM2-135M: scripts/get-model.sh smollm2) that our small
# character models cannot show; the SmolLM2 tables in BENCHMARKS.md come from this script.
#   scripts/pretrained-bench.sh MODEL.gguf sinks|stream|policies|needle [OUT.jsonl]
# then: python3 scripts/kv-table.py OUT.jsonl   (policies, needle)
# sinks:    attention maps and sink statistics over 1024 tokens of the validation split (PNGs in build/attn-gguf/).
# stream:   window-only, sink + window and the full cache over CTX=4096 tokens (CTX > 256) (window 256, 4 sinks): perplexity
#           against position (--curve 16) after a 256-token prefill, STREAMS=1 stream.
# policies: the storage formats, the selection policies at 1/4 of a CTX=2048 context (with the random control)
#           and window, sink + window, H2O and SnapKV at 1/8 and 1/2: ppl, KL, top-1, bytes; prefill 1024,
#           STREAMS=2 streams of the validation split.
# needle:   the recall task in sentences (a pass key stated once, asked at the end; build/infer recall) over
#           CTX=2048 tokens through each policy at 1/4 of the context, STREAMS=2 items per distance.
# On 2 cores: sinks ~1 minute, stream ~15, policies ~40, needle ~25.
set -euo pipefail
usage="usage: scripts/pretrained-bench.sh MODEL.gguf sinks|stream|policies|needle [OUT.jsonl]"
if [ $# -lt 2 ] || [ "$1" = --help ] || [ "$1" = -h ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    [ $# -ge 2 ] || [ "${1:-}" = --help ] || [ "${1:-}" = -h ] || { echo "$usage" >&2; exit 2; }
    exit 0
fi
model=$1
mode=$2
if [ $# -ge 3 ]; then exec > "$3"; fi  # else the JSON lines go to the stdout we were given (appending stays appending)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p build
tail -c 111540 data/tinyshakespeare.txt > build/val.txt  # the validation split (last 10%) of the corpus
run() { build/infer "$@" --model "$model" --json; }
case "$mode" in
sinks)
    mkdir -p build/attn-gguf
    run attention --out build/attn-gguf --context "${CTX:-1024}" ;;
stream)
    ctx=${CTX:-4096}
    for spec in full window:256 sink:4,window:252; do
        run kv --eval build/val.txt --kv "$spec" --context "$ctx" --prefill 256 --streams "${STREAMS:-1}" --curve 16
    done ;;
policies)
    ctx=${CTX:-2048}
    q=$((ctx / 4)); e=$((ctx / 8)); h=$((ctx / 2))
    for spec in full+int8 full+int4 full+int2 full+kivi4 full+kivi2 \
                window:$q sink:4,window:$((q - 4)) h2o:$((q / 2)),$((q / 2)) tova:$q snapkv:$((q - 32)),32 random:$q \
                window:$e sink:4,window:$((e - 4)) h2o:$((e / 2)),$((e / 2)) snapkv:$((e - 32)),32 \
                window:$h sink:4,window:$((h - 4)) h2o:$((h / 2)),$((h / 2)) snapkv:$((h - 32)),32; do
        run kv --eval build/val.txt --kv "$spec" --context "$ctx" --prefill $((ctx / 2)) --streams "${STREAMS:-2}"
    done ;;
needle)
    ctx=${CTX:-2048}
    b=$((ctx / 4)); h=$((b / 2))
    for spec in full window:$b sink:4,window:$((b - 4)) h2o:$h,$h tova:$b snapkv:$((b - 32)),32 full+kivi2; do
        run recall --kv "$spec" --context "$ctx" --streams "${STREAMS:-2}"
    done ;;
*) echo "pretrained-bench: unknown mode '$mode' (sinks, stream, policies, needle)" >&2; exit 1 ;;
esac
