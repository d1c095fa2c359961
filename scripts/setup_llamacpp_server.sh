#!/usr/bin/env bash
# Installs llama.cpp's OpenAI-compatible server (the PyPI package llama-cpp-python, with its
# server extras) into a venv in the agentcore cache, for the OpenAI-backend tests:
#   scripts/setup_llamacpp_server.sh        # prints the venv's python
# The package builds llama.cpp from source with cmake (about 5 minutes on 2 cores); a second run
# finds the venv and returns at once. Env: AGENTCORE_CACHE (default ~/.cache/agentcore).
set -euo pipefail
VERSION=0.3.36
CACHE=${AGENTCORE_CACHE:-$HOME/.cache/agentcore}
VENV=$CACHE/llamacpp-venv
PY=$VENV/bin/python
if [[ -x $PY ]] && "$PY" -c "import llama_cpp, llama_cpp.server.app, uvicorn; assert llama_cpp.__version__ == '$VERSION'" 2>/dev/null; then
  echo "$PY"; exit 0
fi
mkdir -p "$CACHE"
TMP=$(mktemp -d "$CACHE/llamacpp-venv.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 -m venv "$TMP" >&2
"$TMP/bin/pip" install -q --upgrade pip >&2
# CPU build, portable (no -march=native: the cache may move between machines).
CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  "$TMP/bin/pip" install -q "llama-cpp-python[server]==$VERSION" >&2
# venvs hard-code their path: rebuild the launcher scripts for the final location.
rm -rf "$VENV"
mv "$TMP" "$VENV"
trap - EXIT
python3 -m venv --upgrade "$VENV" >&2
"$PY" -c "import llama_cpp.server.app" >&2
echo "$PY"
