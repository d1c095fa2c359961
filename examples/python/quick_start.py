#!/usr/bin/env python3
"""
The guide's Quick Start, steps 1 to 5, and its Real-Time Monitoring snippet, as written, against a
local server (examples/python/run_pipeline.sh runs it). What differs from the guide, and why:
- the base URL and key come from the environment (the guide's is a hosted one); the WebSocket
  URI is the same server's, with the key in the documented ``?token=`` query (the guide's
  snippet has no way to authenticate otherwise);
- Step 1's "... 98+ more examples" and Step 3's ``eval_data`` come from the pipeline's data file;
- Step 2's job (500 iterations of 16 x 8 trajectories) would run for hours on a CPU, so once it
  has made progress this harness cancels it (from a thread, as a user would from another
  terminal); Step 4's loop then ends with ``cancelled``, and Step 5 evaluates the checkpoint the
  cancellation wrote. The monitor follows that job live over the WebSocket with the
  ``websockets`` package (PyPI), as the guide does.
Nothing else is changed: the snippets below are the guide's text.
"""

import asyncio
import json
import os
import threading
import time

from agentcore.sdk import TrainingClient as _HarnessClient

with open(os.environ["AGENTCORE_DATA"]) as _f:
    _data = json.load(_f)

# --- Step 1: Prepare Training Data ---------------------------------------------------------
training_data = [
    {
        "query": "Sort the list [5, 2, 8, 1]",
        "expected_outcome": {
            "result": [1, 2, 5, 8],
            "test_passed": True
        }
    },
    {
        "query": "Find the maximum value in [10, 3, 7]",
        "expected_outcome": {
            "result": 10,
            "test_passed": True
        }
    },
    # ... 98+ more examples
]
training_data += _data["train"]
eval_data = _data["eval"]

# --- Step 2: Configure Training -------------------------------------------------------------
from agentcore.training import GRPOConfig

config = GRPOConfig(
    n_iterations=500,           # Number of training iterations
    batch_size=16,              # Queries per iteration
    n_trajectories_per_query=8, # Trajectories to generate per query
    learning_rate=0.0001,       # Policy gradient learning rate
    max_budget_usd=50.00,       # Training cost limit
    checkpoint_interval=10,     # Save checkpoint every N iterations
)

# --- Step 3: Start Training -----------------------------------------------------------------
from agentcore.sdk import TrainingClient

client = TrainingClient(
    base_url=os.getenv("AGENTCORE_URL"),
    api_key=os.getenv("AGENTCORE_API_KEY")
)

# Start training job
job = client.start_training(
    agent_id="code-generator-v2",
    config=config,
    training_data=training_data,
    evaluation_data=eval_data  # 20% held-out for validation
)

print(f"Training job started: {job['job_id']}")
job_id = job["job_id"]

# (Harness: the guide's monitor follows the job live while steps 4 and 5 run.)
_seen = {"progress": 0, "checkpoint": 0}
_printed = []


def _monitor():
    # --- Real-Time Monitoring, as written (but for the URI) --------------------------------
    import websockets

    async def monitor_training(job_id):
        uri = f"{os.environ['AGENTCORE_URL'].replace('http', 'ws', 1)}/training/ws/{job_id}?token={os.environ['AGENTCORE_API_KEY']}"

        async with websockets.connect(uri) as ws:
            async for message in ws:
                event = json.loads(message)

                if event["type"] == "progress":
                    print(f"Iteration {event['iteration']}/{event['total']}")
                    print(f"Loss: {event['loss']:.4f}")

                elif event["type"] == "checkpoint":
                    print(f"Checkpoint saved: {event['checkpoint_id']}")
                _seen[event["type"]] = _seen.get(event["type"], 0) + 1

    asyncio.run(monitor_training(job_id))


_ws = threading.Thread(target=_monitor)
_ws.start()


def _cancel_after_progress():
    # (Harness: stop the 500-iteration job once it has trained, as a user would.)
    c = _HarnessClient(base_url=os.getenv("AGENTCORE_URL"), api_key=os.getenv("AGENTCORE_API_KEY"))
    while c.get_status(job_id)["current_iteration"] < 2:
        time.sleep(0.5)
    c.cancel(job_id, reason="quick start: stopped after two iterations")


threading.Thread(target=_cancel_after_progress, daemon=True).start()

# --- Step 4: Monitor Progress ---------------------------------------------------------------
import time

while True:
    status = client.get_status(job["job_id"])

    print(f"Progress: {status['progress_percent']}%")
    print(f"Current Loss: {status['metrics']['train_loss']:.3f}")
    print(f"Validation Accuracy: {status['metrics']['validation_accuracy']:.2%}")
    print(f"Budget Used: ${status['cost_usd']} / ${status['budget_usd']}")

    if status["status"] in ["completed", "failed", "cancelled"]:
        break

    time.sleep(60)  # Poll every minute

# --- Step 5: Evaluate Results ---------------------------------------------------------------
# Run evaluation on best checkpoint
eval_result = client.evaluate(job["job_id"])

print(f"Success Rate: {eval_result['metrics']['success_rate']:.2%}")
print(f"Improvement: +{eval_result['baseline_comparison']['success_rate_improvement']:.2%}")

if eval_result['baseline_comparison']['statistically_significant']:
    print("✅ Improvement is statistically significant!")

# (Harness: what the steps and the monitor saw.)
_ws.join(timeout=120)
assert not _ws.is_alive(), "the WebSocket did not close after the job ended"
assert status["status"] == "cancelled", status["status"]
assert _seen["progress"] >= 2 and _seen["progress"] == status["current_iteration"], (_seen, status["current_iteration"])
print(f"Quick Start: steps 1-5 ran; the job ended {status['status']} at iteration "
      f"{status['current_iteration']}; the WebSocket monitor saw {_seen['progress']} progress and "
      f"{_seen['checkpoint']} checkpoint messages")
