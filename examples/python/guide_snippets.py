#!/usr/bin/env python3
"""
The guide's remaining snippets as written, against a local server (examples/python/run_pipeline.sh
runs it after the pipeline; AGENTCORE_JOB is the pipeline's job): the Configuration section, Best
Practice 2, the Troubleshooting assignments (each value is checked as it is assigned and sent),
Phase 3 (a job started with that config, a webhook subscription, the convergence check, and the
Overfitting snippet's cancel) and Phase 4 on the pipeline's job. Only the agent id and the
webhook URL differ: the guide's https://myapp.com is not reachable here, so a loopback receiver
stands in (the server runs with --allow-private-webhooks).
"""

import json
import os

from agentcore.sdk import TrainingClient
from agentcore.training import GRPOConfig

client = TrainingClient(base_url=os.getenv("AGENTCORE_URL"), api_key=os.getenv("AGENTCORE_API_KEY"))
job_id = os.environ["AGENTCORE_JOB"]
with open(os.environ["AGENTCORE_DATA"]) as f:
    data = json.load(f)

# --- Configuration: Basic, Advanced, as written ----------------------------------------------
config = GRPOConfig(
    n_iterations=500,
    batch_size=16,
    n_trajectories_per_query=8,
    learning_rate=0.0001,
    max_budget_usd=100.00
)
config = GRPOConfig(
    # Training duration
    n_iterations=1000,
    batch_size=32,

    # Exploration
    n_trajectories_per_query=12,  # More exploration
    max_steps_per_trajectory=30,   # Allow longer trajectories

    # Optimization
    learning_rate=0.0001,
    gamma=0.99,  # Discount factor for multi-step credit

    # Resource limits
    max_budget_usd=200.00,
    checkpoint_interval=20,  # Save less frequently
)
# --- Best Practice 2: Start Small, Iterate -------------------------------------------------
config = GRPOConfig(n_iterations=50, batch_size=8)
config = GRPOConfig(n_iterations=500, batch_size=16)
config = GRPOConfig(n_iterations=1000, batch_size=32)
print("Configuration snippets: all valid")

# --- Phase 2's "Start Conservative", then the Troubleshooting changes, as written ------------
config = GRPOConfig(
    n_iterations=100,    # Start small
    batch_size=8,        # Lower memory
    n_trajectories_per_query=4,  # Reduce cost
    learning_rate=0.0001
)
config.learning_rate = 0.0005  # 5x increase
config.n_trajectories_per_query = 16  # Double trajectories
config.batch_size = 8  # Half the size
config.n_trajectories_per_query = 4
config.max_steps_per_trajectory = 10
sent = config.to_dict()
assert sent == {"n_iterations": 100, "batch_size": 8, "n_trajectories_per_query": 4, "learning_rate": 0.0005,
                "max_steps_per_trajectory": 10}, sent
print(f"Troubleshooting config sent: {sent}")

# --- Phase 3: Training Execution ---------------------------------------------------------
# 1. Start job
job = client.start_training(
    agent_id="code-generator-v2",
    config=config,
    training_data=data["train"],
    evaluation_data=data["eval"],
)
new_job = job["job_id"]
assert job["total_iterations"] == 100, job

# 2. Monitor (automated with webhooks)
subscription = client.subscribe_webhook(
    events=["training.job.progress", "training.budget.warning"],
    url="http://127.0.0.1:9/webhooks/training"
)
assert subscription["secret"].startswith("whsec_"), subscription

# 3. Check convergence
status = client.get_status(new_job)
if status["metrics"]["train_loss"] < 0.1:
    print("Training converged!")

# Troubleshooting, Overfitting: stop the job
client.cancel(new_job)
cancelled = client.wait(new_job, poll_seconds=0.5, progress=False, timeout=120)
print(f"Phase 3: job {new_job[:8]} with the troubleshooting config ended {cancelled['status']}")

# --- Phase 4: Evaluation, on the pipeline's job -------------------------------------------
# Evaluate on held-out data
eval_metrics = client.evaluate(job_id)

# Key metrics
success_rate = eval_metrics["metrics"]["success_rate"]
avg_reward = eval_metrics["metrics"]["avg_reward"]
improvement = eval_metrics["baseline_comparison"]["success_rate_improvement"]

# Statistical significance
p_value = eval_metrics["baseline_comparison"]["p_value"]
significant = p_value < 0.05
print(f"Phase 4: success {success_rate:.2%}, avg reward {avg_reward:.3f}, improvement {improvement:+.2%}, "
      f"p = {p_value:.4f}, significant {significant}")
