#!/usr/bin/env python3
"""
Following a job from Python without writing a poll loop, on the job the complete pipeline
trained (AGENTCORE_JOB), against a local server (examples/python/run_pipeline.sh runs it):
the guide's WebSocket monitor through ``client.stream`` (the blocking and the asyncio client),
``client.wait`` with its progress bar, the typed results, the typed errors, and every exported
trajectory through ``iter_trajectories``.
"""

import asyncio
import os

from agentcore.sdk import AsyncTrainingClient, JobStatus, NotFound, TrainingClient

url, key = os.getenv("AGENTCORE_URL"), os.getenv("AGENTCORE_API_KEY")
client = TrainingClient(base_url=url, api_key=key)
job_id = os.environ["AGENTCORE_JOB"]

# The guide's monitor: a finished job's socket replays its messages, then closes.
progress, checkpoints = 0, 0
for event in client.stream(job_id):
    if event["type"] == "progress":
        progress += 1
        print(f"Stream: iteration {event['iteration']}/{event['total']}, loss {event['loss']:.4f}")
    elif event["type"] == "checkpoint":
        checkpoints += 1
        print(f"Stream: checkpoint saved: {event['checkpoint_id']}")
    elif event["type"] == "status":
        print(f"Stream: status {event.status}")

status = client.wait(job_id, progress=True)
assert isinstance(status, JobStatus) and status.status == status["status"] == "completed", status
assert progress == status.total_iterations, (progress, status.total_iterations)
print(f"Stream: {progress} progress and {checkpoints} checkpoint messages; wait: {status.status}")


async def monitor_training(job_id: str) -> int:
    seen = 0
    aclient = AsyncTrainingClient(base_url=url, api_key=key)
    async for event in aclient.stream(job_id):
        seen += event["type"] == "progress"
    s = await aclient.get_status(job_id)
    assert s.metrics.train_loss == s["metrics"]["train_loss"]
    return seen


print(f"Async stream: {asyncio.run(monitor_training(job_id))} progress messages")

page = client.export_trajectories(job_id, limit=5)
every = list(client.iter_trajectories(job_id, page_size=7))
assert len(every) == page.total_count and len({t["trajectory_id"] for t in every}) == len(every), (len(every), page.total_count)
print(f"Export: {len(every)} trajectories in pages of 7 (total_count {page.total_count})")

try:
    client.get_status("00000000-0000-0000-0000-000000000000")
except NotFound as e:
    print(f"Typed error: NotFound (code {e.code})")
