#!/usr/bin/env bash
# An S3-compatible object store on loopback for the artifact-store tests: moto's server (PyPI
# `moto[server]`, an implementation of the S3 REST API) in a venv in the agentcore cache.
#   scripts/setup_s3.sh          # installs (once) and prints the venv's `moto_server` path
# The tests start `moto_server -H 127.0.0.1 -p PORT` themselves, one per test, on a free port,
# and stop it when they end. A second run finds the venv and returns at once.
# Env: AGENTCORE_CACHE (default ~/.cache/agentcore).
set -euo pipefail
CACHE=${AGENTCORE_CACHE:-$HOME/.cache/agentcore}
VENV=$CACHE/s3-venv
BIN=$VENV/bin/moto_server
CHECK="import moto.server, flask, werkzeug"
if [[ -x $BIN ]] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  echo "$BIN"; exit 0
fi
mkdir -p "$CACHE"
TMP=$(mktemp -d "$CACHE/s3-venv.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 -m venv "$TMP" >&2
"$TMP/bin/pip" install -q --upgrade pip >&2
"$TMP/bin/pip" install -q "moto[server]==5.1.*" >&2
# venvs hard-code their path: rebuild the launcher scripts for the final location.
rm -rf "$VENV"
mv "$TMP" "$VENV"
trap - EXIT
python3 -m venv --upgrade "$VENV" >&2
# `venv --upgrade` does not rewrite console scripts: point moto_server's shebang here.
sed -i "1s|.*|#!$VENV/bin/python|" "$BIN"
"$VENV/bin/python" -c "$CHECK" >&2
echo "$BIN"
