#!/usr/bin/env bash
# Serves Gemma 3 270M (scripts/fetch_gemma3.sh) with llama.cpp's own `llama-server`
# (scripts/setup_llama_server.sh) on 127.0.0.1:PORT, in the foreground:
#   scripts/serve_llama_server.sh [PORT] [THREADS] [PARALLEL] [SERVER ARGS...]
# Defaults: 8765, 2 threads, 4 slots. Each slot has 4,096 tokens of context and keeps the KV
# cache of its last prompt, and a request goes to the slot whose cached prompt it shares most
# with, so a trajectory's next turn re-reads only what was added since its last one; the slots'
# requests are decoded together (continuous batching). `--jinja` applies the model's own chat
# template to chat requests (the reflector's).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-8765}
THREADS=${2:-2}
PARALLEL=${3:-4}
shift $(( $# < 3 ? $# : 3 ))
BIN=$(scripts/setup_llama_server.sh)
MODEL=$(scripts/fetch_gemma3.sh)
exec "$BIN" --host 127.0.0.1 --port "$PORT" --model "$MODEL" --alias gemma-3-270m \
  --threads "$THREADS" --parallel "$PARALLEL" --ctx-size $(( 4096 * PARALLEL )) \
  --jinja --no-webui --log-disable "$@"
