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
# tokens in 34-39 ms instead of 106 in 208-266 ms; 4 iterations of 32 rollouts of the
# prompt-policy agent took 26-28 s each instead of 45-56 s (BENCHMARKS.md). The cost is memory,
# computed, not measured: the f16 KV cache of 18 layers x 1 KV head x 256 dimensions is 1 KiB
# per token per layer, 288 MiB for the 16,384 tokens of 4 slots, against about 85 MiB with the
# windowed layers cut to their window (the server's RSS after start was 622 MB either way; the
# pages fill as slots are used).
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
