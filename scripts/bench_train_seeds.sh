#!/usr/bin/env bash
# Robustness benchmark of the embedded default (issue 5): `agentcore train` with seeds 1, 2, 3,
# each from a fresh data directory (warm start included), one after the other on this machine.
# Prints one summary line per seed and writes the JSON events of each run to $OUT_DIR/seed-N.jsonl
# (the validation curve is in the `iteration` objects' eval_success_rate). About 15 minutes a seed
# on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-target/bench-train-seeds}
mkdir -p "$OUT_DIR"
cargo build --release -q -p agentcore-cli
for seed in ${SEEDS:-1 2 3}; do
  home=$(mktemp -d)
  start=$(date +%s)
  ./target/release/agentcore train --seed "$seed" --data-dir "$home" --json \
    > "$OUT_DIR/seed-$seed.jsonl" 2> "$OUT_DIR/seed-$seed.err"
  end=$(date +%s)
  python3 - "$OUT_DIR/seed-$seed.jsonl" "$seed" "$((end - start))" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
done = [e for e in events if e["event"] == "done"][0]
base = done["baseline_success_rate"]
curve = [(e["iteration"], e["eval_success_rate"]) for e in events
         if e["event"] == "iteration" and e["eval_success_rate"] is not None]
lowest = min([base] + [v for _, v in curve])
gain = (done["final_success_rate"] - base) * 100
ok = gain >= 30 and done["p_value"] < 1e-6 and int(sys.argv[3]) <= 900 and (base - lowest) * 100 <= 5
print(f"seed {sys.argv[2]}: {base*100:.1f}% -> {done['final_success_rate']*100:.1f}% "
      f"({gain:+.1f} points, p = {done['p_value']:.2e}), wall {sys.argv[3]} s, "
      f"lowest validation {lowest*100:.1f}%, curve "
      + " ".join(f"{i}:{v*100:.1f}" for i, v in curve) + f" -> {'PASS' if ok else 'FAIL'}")
PY
  rm -rf "$home"
done
