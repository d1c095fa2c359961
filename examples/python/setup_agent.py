#!/usr/bin/env python3
"""Registers the agent the guide's pipeline trains (`code-generator-v2`) on a local server: the
built-in model, tiny, with a short warm start, so the pipeline finishes in about a minute on a
CPU (it trains for real, but this small a model learns little); and
writes the pipeline's data file from the seed task suite (`agentcore tasks generate`)."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from agentcore.sdk import TrainingClient  # noqa: E402

client = TrainingClient(os.environ["AGENTCORE_URL"], os.environ["AGENTCORE_API_KEY"])
client.register_agent(
    "code-generator-v2",
    agent_type="code",
    model={"built_in": {"steps": int(os.getenv("WARM_START_STEPS", "300")), "n_demos": 600, "batch_size": 16,
                        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "max_seq_len": 256}}},
)
agentcore = os.environ.get("AGENTCORE_BIN", "agentcore")
def generate(n, seed):
    out = subprocess.run([agentcore, "tasks", "generate", "--n", str(n), "--seed", str(seed), "--difficulty", "1"],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]
with open(os.environ.get("AGENTCORE_DATA", "training_data.json"), "w") as f:
    json.dump({"train": generate(120, 11), "eval": generate(48, 12)}, f)
print("registered code-generator-v2; data written")
