#!/usr/bin/env bash
# Builds llama.cpp's own OpenAI-compatible server, `llama-server` (C++: continuous batching of
# concurrent requests over --parallel slots, each slot keeping its prompt's KV cache), from the
# llama.cpp source that the PyPI sdist of llama-cpp-python vendors (the same version as
# scripts/setup_llamacpp_server.sh), and prints the binary's path:
#   scripts/setup_llama_server.sh        # -> $AGENTCORE_CACHE/llama-server-VERSION/llama-server
# About 8 minutes on 2 cores (cmake and ninja from PyPI in a venv; a C++ compiler from the
# machine); a second run finds the binary and returns at once. Used by
# scripts/serve_llama_server.sh and the prompt-policy benchmark (SERVER=llama-server); the tests
# keep llama-cpp-python's server (scripts/setup_llamacpp_server.sh), which installs faster.
# Env: AGENTCORE_CACHE (default ~/.cache/agentcore).
set -euo pipefail
VERSION=0.3.36
CACHE=${AGENTCORE_CACHE:-$HOME/.cache/agentcore}
DEST=$CACHE/llama-server-$VERSION
BIN=$DEST/llama-server
if [[ -x $BIN ]] && "$BIN" --version > /dev/null 2>&1; then
  echo "$BIN"; exit 0
fi
mkdir -p "$CACHE"
TMP=$(mktemp -d "$CACHE/llama-server.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 -m venv "$TMP/venv" >&2
"$TMP/venv/bin/pip" install -q cmake ninja >&2
# The sdist only (its build dependencies are not needed to download it).
"$TMP/venv/bin/pip" download -q --no-deps --no-binary llama-cpp-python -d "$TMP" \
  "llama-cpp-python==$VERSION" >&2
tar xzf "$TMP/llama_cpp_python-$VERSION.tar.gz" -C "$TMP"
SRC=$TMP/llama_cpp_python-$VERSION/vendor/llama.cpp
# CPU build, portable (no -march=native: the cache may move between machines), static so the
# binary stands alone.
PATH=$TMP/venv/bin:$PATH cmake -S "$SRC" -B "$TMP/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
PATH=$TMP/venv/bin:$PATH cmake --build "$TMP/build" --target llama-server \
  -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >&2
mkdir -p "$TMP/out"
cp "$TMP/build/bin/llama-server" "$TMP/out/"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
"$BIN" --version >&2
echo "$BIN"
