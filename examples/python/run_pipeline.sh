#!/usr/bin/env bash
# Runs the guide's "Complete Training Pipeline" (complete_pipeline.py) against a local
# `agentcore serve`: starts the server with a fresh data directory, registers the agent, writes
# the data file, runs the example unchanged but for URL, key, data file and config, and stops the
# server. AGENTCORE_BIN: the binary (default: target/release/agentcore, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${AGENTCORE_BIN:-target/release/agentcore}
[ -x "$BIN" ] || cargo build --release -q -p agentcore-cli
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
secret=$(head -c 24 /dev/urandom | base64)
AGENTCORE_JWT_SECRET=$secret "$BIN" serve --port 0 --data-dir "$work" --allow-private-webhooks \
  2> "$work/server.log" &
server=$!
for _ in $(seq 100); do grep -q "agentcore serve: http" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o "http://[0-9.:]*" "$work/server.log" | head -1)
# A token for the pipeline, signed with the server's secret (HS256).
token=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps({"sub": "pipeline", "org": "examples", "exp": int(time.time()) + 7200,
                  "permissions": ["training:start", "training:view", "training:cancel",
                                  "training:evaluate", "data:export", "agents:manage",
                                  "training:deploy", "agents:invoke"]}).encode())
s = b(hmac.new(sys.argv[1].encode(), h + b"." + p, hashlib.sha256).digest())
print((h + b"." + p + b"." + s).decode())
PY
)
export AGENTCORE_URL=$url AGENTCORE_API_KEY=$token AGENTCORE_DATA=$work/training_data.json AGENTCORE_BIN=$BIN
python3 examples/python/setup_agent.py
PYTHONPATH=python python3 examples/python/complete_pipeline.py | tee "$work/pipeline.out"
grep -q "Training completed successfully" "$work/pipeline.out"
# Phase 5: deploy the job's best checkpoint, A/B test it, invoke it.
AGENTCORE_JOB=$(grep -o "Training started: [0-9a-f-]*" "$work/pipeline.out" | cut -d' ' -f3)
export AGENTCORE_JOB
# Following the job: WebSocket stream (blocking and asyncio), wait, typed results and errors.
PYTHONPATH=python python3 examples/python/follow_job.py
# The guide's other snippets as written: configuration, troubleshooting, Phase 3 and 4.
PYTHONPATH=python python3 examples/python/guide_snippets.py
# The Quick Start (steps 1-5) and the Real-Time Monitoring snippet as written: the monitor uses
# the `websockets` package (PyPI), installed into a venv under target/ (reused between runs).
guide=target/python-guide
"$guide/bin/python" -c "import websockets" 2>/dev/null \
  || { python3 -m venv "$guide" && "$guide/bin/pip" install -q "websockets>=13,<17"; }
PYTHONPATH=python "$guide/bin/python" examples/python/quick_start.py
PYTHONPATH=python python3 examples/python/deploy_ab.py
# The same from the CLI (AGENTCORE_URL and AGENTCORE_API_KEY are exported above).
"$BIN" deploy list code-generator-v2 --environment production > "$work/deployments.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("CLI deploy list:", d["total_count"], "deployments")' "$work/deployments.json"
"$BIN" invoke code-generator-v2 "Compute the sum of [1, 2]" --user-key cli-user > "$work/invoke.json"
inv=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["invocation_id"])' "$work/invoke.json")
"$BIN" feedback "$inv" --success true > /dev/null
"$BIN" invocations code-generator-v2 --all > "$work/invocations.jsonl"
echo "CLI invocations: $(wc -l < "$work/invocations.jsonl") exported"
"$BIN" ab status code-generator-v2 > "$work/ab.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("CLI ab status:", d["status"], d["traffic_split"], d["decision"])' "$work/ab.json"
if "$BIN" deploy code-generator-v2 no-such-checkpoint 2> "$work/deploy.err"; then exit 1; else echo "CLI deploy refused: exit $?"; fi
