#!/usr/bin/env bash
# Serves Gemma 3 270M (scripts/fetch_gemma3.sh) with llama.cpp's own `llama-server`
# (scripts/setup_llama_server.sh) on 127.0.0.1:PORT, in the foreground:
#   scripts/serve_llama_server.sh [PORT] [THREADS] [PARALLEL] [SERVER ARGS...]
# Defaults: 8765, 2 threads, 4 slots. Each slot has 4,096 tokens of context and keeps the KV
# cache of its last prompt, and a request goes to the slot whose cached prompt it shares most
# with, so a trajectory's next turn re-reads only what was added since its last one; the slots'
# requests are decoded together (continuous batching). `--jinja` applies the model's own chat
# template to chat requests (the reflector's).
# `--swa-full`: Gemma 3 attends over a sliding window in most layers, and llama.cpp keeps only the
# window's KV cache for those by default, so no cached prompt could be reused (every request
# reported `cache_n` 0 and prefilled its whole prompt). With the full cache a slot reuses the
# prefix it shares with its last prompt: the same 106-token prompt, sent again, prefilled 10
# tokens in 36 ms instead of 106 in 210-260 ms; 4 iterations of 32 rollouts of the prompt-policy
# agent took 26-28 s each instead of 45-56 s (BENCHMARKS.md). The cost is memory: a few hundred
# MB of KV cache for this model at 4 slots.
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
  --swa-full --jinja --no-webui --log-disable "$@"
