#!/usr/bin/env bash
# The model engine on a GPU (issue 16): builds agentcore with candle's CUDA backend and runs
# `bench model` (the reference tiny model and Gemma 3 270M generation), `bench grpo` (the TRL
# anchor's GRPO iteration) and `bench update` (one LoRA update of Gemma 3 270M) on one GPU,
# then prints tokens/s per GPU. Needs a CUDA toolkit (nvcc) and a driver; nothing in the CPU
# build or CI depends on it.
#   scripts/gpu_bench.sh [DEVICE]        # DEVICE: cuda:0 unless given
# Environment: CUDA_COMPUTE_CAP (e.g. 90 for H100) when nvidia-smi cannot tell it; OUT (a
# directory for the JSON reports, default target/gpu-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cuda:0}
OUT=${OUT:-target/gpu-bench}
command -v nvcc >/dev/null || { echo "gpu_bench: nvcc not found (a CUDA toolkit is needed to build --features cuda)" >&2; exit 2; }
if [[ -z ${CUDA_COMPUTE_CAP:-} ]] && command -v nvidia-smi >/dev/null; then
  CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  export CUDA_COMPUTE_CAP
fi
cargo build --release -p agentcore-cli --features cuda
BIN=./target/release/agentcore
GGUF=${AGENTCORE_GEMMA_GGUF:-$(bash scripts/fetch_gemma3.sh | tail -1)}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee "$OUT/gpus.txt"
"$BIN" bench model --device "$DEVICE" --gemma "$GGUF" --json > "$OUT/model.json"
"$BIN" bench grpo --device "$DEVICE" --json > "$OUT/grpo.json"
"$BIN" bench update --device "$DEVICE" --model "$GGUF" --json > "$OUT/update.json"
python3 - "$OUT" "$DEVICE" <<'PYEOF'
import json, sys
out, device = sys.argv[1], sys.argv[2]
m = json.load(open(f"{out}/model.json"))
g = json.load(open(f"{out}/grpo.json"))
u = json.load(open(f"{out}/update.json"))
s = g["settings"]
grpo_tokens = s["prompts"] * s["generations"] * (s["prompt_len"] + g["mean_completion_tokens"])
update = u["settings"]
print(f"one GPU ({device}), tokens/s:")
print(f"  tiny model training          {m['train_tokens_per_s']:>10.0f}")
print(f"  tiny model generation b1     {m['gen_tokens_per_s_batch1']:>10.0f}")
print(f"  tiny model generation b64    {m['gen_tokens_per_s_batch64']:>10.0f}")
if m.get("gemma_gen_tokens_per_s_batch1") is not None:
    print(f"  Gemma 3 270M generation b1   {m['gemma_gen_tokens_per_s_batch1']:>10.1f}")
    print(f"  Gemma 3 270M generation b8   {m['gemma_gen_tokens_per_s_batch8']:>10.1f}")
print(f"  GRPO iteration (TRL anchor)  {grpo_tokens / g['iteration_s']['median']:>10.0f}"
      f"   ({g['iteration_s']['median']:.3f} s per iteration)")
print(f"  Gemma 3 270M LoRA update     {update['rows'] * update['tokens'] / u['update_s']:>10.0f}"
      f"   ({u['update_s']:.1f} s, peak RSS {u['peak_rss_bytes'] / 1e9:.2f} GB)")
PYEOF
