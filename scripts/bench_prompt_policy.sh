#!/usr/bin/env bash
# Benchmark of the prompt policy (issue 13): Gemma 3 270M served by llama.cpp's OpenAI-compatible
# server on loopback (a real process), trained as the `policy: prompt` agent of
# examples/agents/gemma-api.yaml on difficulty-1 seed-suite tasks, evaluated greedily on 120
# held-out queries before and after (paired McNemar). One line per seed; the JSON events of each
# run in $OUT_DIR/seed-N.jsonl.
#   scripts/bench_prompt_policy.sh                  # seeds 1 2 3
#   SEEDS=1 N_ITERATIONS=30 scripts/bench_prompt_policy.sh
# Env: BIN (default: a release build), AGENT (the agent file, examples/agents/gemma-api.yaml),
# PORT (8765), N_ITERATIONS (30), EVAL_N (120), REPLICAS (1: llama.cpp servers on PORT,
# PORT+1, ..., the agent's `replicas`), THREADS (2, shared out),
# SERVER (llamacpp: llama-cpp-python's server, scripts/serve_llamacpp.sh; llama-server:
# llama.cpp's own, scripts/serve_llama_server.sh, with PARALLEL slots, default 4, and the
# agent's `concurrency` set to PARALLEL x REPLICAS), TRAIN_MINUTES (unset: none; else the job is
# sent SIGINT that many minutes after it starts, so it ends its iteration, checkpoints and runs
# the final evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-target/bench-prompt-policy}
PORT=${PORT:-8765}
mkdir -p "$OUT_DIR"
if [[ -z ${BIN:-} ]]; then
  cargo build --release -q -p agentcore-cli
  BIN=./target/release/agentcore
fi
REPLICAS=${REPLICAS:-1}
THREADS=${THREADS:-2}
SERVER=${SERVER:-llamacpp}
PARALLEL=${PARALLEL:-4}
PER=$(( THREADS / REPLICAS > 0 ? THREADS / REPLICAS : 1 ))
SERVERS=()
trap 'kill "${SERVERS[@]}" 2>/dev/null || true' EXIT
for ((r = 0; r < REPLICAS; r++)); do
  case $SERVER in
    llamacpp) scripts/serve_llamacpp.sh "$((PORT + r))" "$PER" > "$OUT_DIR/llama-$r.log" 2>&1 & ;;
    llama-server)
      scripts/serve_llama_server.sh "$((PORT + r))" "$PER" "$PARALLEL" > "$OUT_DIR/llama-$r.log" 2>&1 & ;;
    *) echo "SERVER must be llamacpp or llama-server, got $SERVER" >&2; exit 2 ;;
  esac
  SERVERS+=($!)
done
for ((r = 0; r < REPLICAS; r++)); do
  until curl -sf "http://127.0.0.1:$((PORT + r))/v1/models" > /dev/null; do sleep 0.5; done
done
sed "s/8765/$PORT/" "${AGENT:-examples/agents/gemma-api.yaml}" > "$OUT_DIR/agent.yaml"
if [[ $SERVER == llama-server ]]; then
  sed -i "s/^  concurrency: .*/  concurrency: $(( PARALLEL * REPLICAS ))/" "$OUT_DIR/agent.yaml"
fi
if (( REPLICAS > 1 )); then
  urls=$(for ((r = 1; r < REPLICAS; r++)); do printf '"http://127.0.0.1:%d/v1", ' "$((PORT + r))"; done)
  sed -i "s|^  base_url: .*|&\n  replicas: [${urls%, }]|" "$OUT_DIR/agent.yaml"
fi
for seed in ${SEEDS:-1 2 3}; do
  "$BIN" tasks generate --n 400 --difficulty 1 --seed "$seed" > "$OUT_DIR/train-$seed.jsonl"
  "$BIN" tasks generate --n "${EVAL_N:-120}" --difficulty 1 --seed "$((seed + 1000))" \
    > "$OUT_DIR/eval-$seed.jsonl"
  cat > "$OUT_DIR/config-$seed.yaml" <<CFG
n_iterations: ${N_ITERATIONS:-30}
batch_size: 8
n_trajectories_per_query: 4
eval_interval: ${N_ITERATIONS:-30}
checkpoint_interval: 5
seed: $seed
CFG
  home=$(mktemp -d)
  start=$(date +%s)
  "$BIN" train --agent "$OUT_DIR/agent.yaml" --data "$OUT_DIR/train-$seed.jsonl" \
    --eval-data "$OUT_DIR/eval-$seed.jsonl" --config "$OUT_DIR/config-$seed.yaml" \
    --data-dir "$home" --json > "$OUT_DIR/seed-$seed.jsonl" 2> "$OUT_DIR/seed-$seed.err" &
  job=$!
  timer=
  if [[ -n ${TRAIN_MINUTES:-} ]]; then
    ( sleep "$(( TRAIN_MINUTES * 60 ))"; kill -INT "$job" 2>/dev/null || true ) &
    timer=$!
  fi
  wait "$job"
  [[ -z $timer ]] || { pkill -P "$timer" 2>/dev/null; kill "$timer" 2>/dev/null; } || true
  end=$(date +%s)
  python3 - "$OUT_DIR/seed-$seed.jsonl" "$seed" "$((end - start))" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
done = [e for e in events if e["event"] == "done"][0]
its = [e for e in events if e["event"] == "iteration"]
base, final = done["baseline_success_rate"], done["final_success_rate"]
gain = (final - base) * 100
ok = gain >= 20 and done["p_value"] < 1e-4 and int(sys.argv[3]) <= 45 * 60
last = its[-1] if its else {}
# The settings the job ran with, from its own `started` event (not what the repo says now).
started = [e for e in events if e["event"] == "started"][0]
pp = started["settings"]["api"]["prompt_policy"]
print(f"seed {sys.argv[2]} ran with min_similarity {pp['min_similarity']}, "
      f"exemplars_shown {pp['exemplars_shown']}, retrieval {pp['retrieval']['kind']}, "
      f"grounded_exemplars {pp['grounded_exemplars']}, stop_option {pp.get('stop_option', False)}")
print(f"seed {sys.argv[2]}: {base*100:.1f}% -> {final*100:.1f}% ({gain:+.1f} points, "
      f"McNemar p = {done['p_value']:.2e}) on {done['eval_queries']} queries, "
      f"{len(its)} iterations, wall {sys.argv[3]} s, cost ${done['cost_usd']}, "
      f"exemplars {last.get('exemplar_bank_size')}, lessons {last.get('library_size')}, "
      f"reflection ops {sum(e.get('reflection_ops_applied', 0) for e in its)} applied / "
      f"{sum(e.get('reflection_ops_rejected', 0) for e in its)} rejected: "
      f"{'PASS' if ok else 'FAIL'}")
PY
done
