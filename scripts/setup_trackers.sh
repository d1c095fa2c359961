#!/usr/bin/env bash
# Installs the experiment trackers' own readers and server from PyPI (tensorboard, whose
# EventAccumulator reads event files, and mlflow, whose tracking server and client the
# `report_to: mlflow` test talks to) into a venv in the agentcore cache:
#   scripts/setup_trackers.sh        # prints the venv's python
# A second run finds the venv and returns at once. Env: AGENTCORE_CACHE (default
# ~/.cache/agentcore).
set -euo pipefail
CACHE=${AGENTCORE_CACHE:-$HOME/.cache/agentcore}
VENV=$CACHE/trackers-venv
PY=$VENV/bin/python
CHECK="import mlflow, mlflow.server, tensorboard.backend.event_processing.event_accumulator"
if [[ -x $PY ]] && "$PY" -c "$CHECK" 2>/dev/null; then
  echo "$PY"; exit 0
fi
mkdir -p "$CACHE"
TMP=$(mktemp -d "$CACHE/trackers-venv.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 -m venv "$TMP" >&2
"$TMP/bin/pip" install -q --upgrade pip >&2
"$TMP/bin/pip" install -q "tensorboard>=2.16" "mlflow>=2.10" >&2
# venvs hard-code their path: rebuild the launcher scripts for the final location.
rm -rf "$VENV"
mv "$TMP" "$VENV"
trap - EXIT
python3 -m venv --upgrade "$VENV" >&2
"$PY" -c "$CHECK" >&2
echo "$PY"
