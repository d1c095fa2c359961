#!/usr/bin/env bash
# The Python SDK as a package: type-checked (mypy --strict), built as a wheel and an sdist
# (python -m build), the wheel installed in a fresh venv, its version the workspace's.
# Tools come from PyPI into a venv under target/ (reused between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/python-tools
[ -x "$tools/bin/mypy" ] || { python3 -m venv "$tools" && "$tools/bin/pip" install -q mypy build; }
"$tools/bin/mypy" --strict python/agentcore
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$tools/bin/python" -m build -q --outdir "$out/dist" python > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
wheel=$(ls "$out"/dist/agentcore-"$version"-py3-none-any.whl)
ls "$out"/dist/agentcore-"$version".tar.gz > /dev/null
python3 -m venv "$out/venv"
"$out/venv/bin/pip" install -q --no-index "$wheel"
# Imported from the installed wheel (not the source tree), with its type hints.
(cd "$out" && "$out/venv/bin/python" - "$version" <<'PY'
import importlib.resources, sys
import agentcore
from agentcore.sdk import AsyncTrainingClient, TrainingClient
from agentcore.training import GRPOConfig
assert agentcore.__version__ == sys.argv[1], (agentcore.__version__, sys.argv[1])
assert "site-packages" in agentcore.__file__, agentcore.__file__
assert importlib.resources.files("agentcore").joinpath("py.typed").is_file()
assert GRPOConfig().batch_size == 16
print(f"python SDK {agentcore.__version__}: mypy --strict clean, wheel and sdist built, wheel installs")
PY
)
