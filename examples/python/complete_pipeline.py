#!/usr/bin/env python3
"""
Complete training pipeline example: the guide's, with only the URL and key (from the
environment, as in the guide), the data file (AGENTCORE_DATA) and a small config changed.
Run examples/python/run_pipeline.sh to start a local server and run it.
"""

import os
import json
import time
from agentcore.sdk import TrainingClient
from agentcore.training import GRPOConfig

def main():
    # 1. Load training data
    with open(os.getenv("AGENTCORE_DATA", "training_data.json")) as f:
        data = json.load(f)

    training_data = data["train"]
    eval_data = data["eval"]

    # 2. Configure training
    config = GRPOConfig(
        n_iterations=int(os.getenv("AGENTCORE_ITERATIONS", "6")),
        batch_size=4,
        n_trajectories_per_query=4,
        learning_rate=0.0001,
        max_budget_usd=50.00,
        checkpoint_interval=2
    )

    # 3. Initialize client
    client = TrainingClient(
        base_url=os.getenv("AGENTCORE_URL"),
        api_key=os.getenv("AGENTCORE_API_KEY")
    )

    # 4. Start training
    job = client.start_training(
        agent_id="code-generator-v2",
        config=config,
        training_data=training_data,
        evaluation_data=eval_data
    )

    print(f"Training started: {job['job_id']}")

    # 5. Monitor progress
    while True:
        status = client.get_status(job["job_id"])

        print(f"\n=== Iteration {status['current_iteration']}/{status['total_iterations']} ===")
        print(f"Progress: {status['progress_percent']:.1f}%")
        print(f"Loss: {status['metrics']['train_loss']:.4f}")
        print(f"Val Accuracy: {status['metrics']['validation_accuracy']:.2%}")
        print(f"Budget: ${status['cost_usd']} / ${status['budget_usd']}")

        if status["status"] == "completed":
            print("\n✅ Training completed successfully!")
            break
        elif status["status"] in ["failed", "cancelled"]:
            print(f"\n❌ Training {status['status']}")
            break

        time.sleep(60)

    # 6. Evaluate
    eval_result = client.evaluate(job["job_id"])

    print("\n=== Evaluation Results ===")
    print(f"Success Rate: {eval_result['metrics']['success_rate']:.2%}")
    print(f"Improvement: +{eval_result['baseline_comparison']['success_rate_improvement']:.2%}")
    print(f"Statistical Significance: {eval_result['baseline_comparison']['statistically_significant']}")

    # 7. Export data (optional)
    trajectories = client.export_trajectories(
        job_id=job["job_id"],
        success_only=True,
        min_reward=0.7,
        limit=100
    )

    print(f"\nExported {len(trajectories['trajectories'])} high-quality trajectories")

if __name__ == "__main__":
    main()
