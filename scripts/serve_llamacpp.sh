#!/usr/bin/env bash
# Serves Gemma 3 270M (scripts/fetch_gemma3.sh) with llama.cpp's OpenAI-compatible server
# (scripts/setup_llamacpp_server.sh) on 127.0.0.1:PORT, in the foreground:
#   scripts/serve_llamacpp.sh [PORT] [THREADS] [SERVER ARGS...]   # default 8765, 2
# e.g. `scripts/serve_llamacpp.sh 8766 2 --embedding true` for an embeddings server (its
# completions are then unusable: run it beside the agent's server, not instead).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-8765}
THREADS=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
PY=$(scripts/setup_llamacpp_server.sh)
MODEL=$(scripts/fetch_gemma3.sh)
exec "$PY" -m llama_cpp.server --host 127.0.0.1 --port "$PORT" --model "$MODEL" \
  --n_threads "$THREADS" --n_ctx 4096 --chat_format gemma "$@"
