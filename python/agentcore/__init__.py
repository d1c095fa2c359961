"""Python SDK of the agentcore GRPO training service.

- ``agentcore.sdk.TrainingClient``: the guide's client (start_training, get_status, evaluate,
  cancel, export_trajectories, subscribe_webhook, list_jobs, register_agent).
- ``agentcore.training.GRPOConfig`` and ``get_global_registry()``: configs and custom rewards,
  served to the trainer over HTTP (the remote-reward protocol).
- ``agentcore.webhooks.verify_webhook``: checks Standard Webhooks signatures.
"""

__version__ = "0.1.0"
