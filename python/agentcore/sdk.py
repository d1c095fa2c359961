"""The guide's ``TrainingClient`` over the service's JSON-RPC API."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from typing import Any, Dict, Iterable, List, Optional

from .training import GRPOConfig, get_global_registry

RPC_PATH = "/api/v1/jsonrpc"
# Status metrics the guide formats as numbers: NaN (not a number yet) instead of None before
# the first iteration or evaluation, so f"{x:.4f}" prints "nan" rather than raising.
_NUMERIC_METRICS = ("train_loss", "validation_accuracy", "avg_reward", "success_rate")


class AgentcoreError(Exception):
    """A JSON-RPC error of the service: ``code``, ``message``, ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code, self.message, self.data = code, message, data


class HTTPError(Exception):
    """An HTTP-level refusal: 401 (token), 413 (body size), 429 (rate limit; ``retry_after``)."""

    def __init__(self, status: int, body: str, retry_after: Optional[int] = None) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status, self.body, self.retry_after = status, body, retry_after


class TrainingClient:
    """A client of one server: ``TrainingClient(base_url, api_key)``."""

    def __init__(self, base_url: Optional[str], api_key: Optional[str] = None, timeout: float = 600.0) -> None:
        if not base_url:
            raise ValueError("base_url is required (e.g. http://127.0.0.1:8080)")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._ids = itertools.count(1)

    # -- transport -------------------------------------------------------------------------
    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": next(self._ids)}).encode()
        req = urllib.request.Request(self.base_url + RPC_PATH, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            retry = e.headers.get("Retry-After")
            raise HTTPError(e.code, e.read().decode(errors="replace"), int(retry) if retry and retry.isdigit() else None) from None
        answer = json.loads(text)
        if answer.get("error"):
            err = answer["error"]
            raise AgentcoreError(err.get("code", 0), err.get("message", ""), err.get("data"))
        return answer.get("result")

    # -- the guide's calls ---------------------------------------------------------------
    def start_training(
        self,
        agent_id: str,
        config: Any = None,
        training_data: Optional[Iterable[Dict[str, Any]]] = None,
        evaluation_data: Optional[Iterable[Dict[str, Any]]] = None,
        metadata: Optional[Dict[str, Any]] = None,
        training_queries: Optional[Iterable[Dict[str, Any]]] = None,
    ) -> Dict[str, Any]:
        """Queues a GRPO job. If the agent's type has a strategy in the global reward registry,
        the registry's reward server is started and registered for that type first, so the
        trainer scores trajectories with the Python function."""
        data = training_data if training_data is not None else training_queries
        if data is None:
            raise ValueError("training_data is required")
        cfg = config.to_dict() if isinstance(config, GRPOConfig) else dict(config or {})
        self._serve_rewards(agent_id)
        params: Dict[str, Any] = {"agent_id": agent_id, "config": cfg, "training_data": list(data)}
        if evaluation_data is not None:
            params["evaluation_data"] = list(evaluation_data)
        if metadata is not None:
            params["metadata"] = metadata
        return self.call("training.start_grpo", params)

    def _serve_rewards(self, agent_id: str) -> None:
        registry = get_global_registry()
        if not registry._strategies:
            return
        agent = self.call("agents.get", {"agent_id": agent_id})
        agent_type = agent.get("agent_type") or "default"
        name = registry.strategy(agent_type)
        if name is None:
            return
        base = registry.serve()
        self.call("rewards.register_remote", {"agent_type": agent_type, "name": name, "url": f"{base}/rewards/{name}"})

    def get_status(self, job_id: str) -> Dict[str, Any]:
        status = self.call("training.get_status", {"job_id": job_id})
        metrics = status.setdefault("metrics", {})
        for k in _NUMERIC_METRICS:
            if metrics.get(k) is None:
                metrics[k] = float("nan")
        return status

    def list_jobs(self, agent_id: Optional[str] = None, status: Optional[str] = None, limit: int = 50, offset: int = 0) -> Dict[str, Any]:
        params: Dict[str, Any] = {"limit": limit, "offset": offset}
        if agent_id:
            params["agent_id"] = agent_id
        if status:
            params["status"] = status
        return self.call("training.list_jobs", params)

    def cancel(self, job_id: str, reason: Optional[str] = None) -> Dict[str, Any]:
        return self.call("training.cancel", {"job_id": job_id, "reason": reason})

    def evaluate(self, job_id: str, checkpoint_id: Optional[str] = None, evaluation_queries: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        params: Dict[str, Any] = {"job_id": job_id}
        if checkpoint_id:
            params["checkpoint_id"] = checkpoint_id
        if evaluation_queries is not None:
            params["evaluation_queries"] = evaluation_queries
        return self.call("training.evaluate", params)

    def export_trajectories(self, job_id: str, success_only: bool = False, min_reward: Optional[float] = None, limit: int = 1000, offset: int = 0) -> Dict[str, Any]:
        params: Dict[str, Any] = {"job_id": job_id, "success_only": success_only, "limit": limit, "offset": offset}
        if min_reward is not None:
            params["min_reward"] = min_reward
        return self.call("training.export_trajectories", params)

    def subscribe_webhook(self, events: List[str], url: str) -> Dict[str, Any]:
        return self.call("training.subscribe_webhook", {"events": events, "url": url})

    def register_agent(self, agent_id: str, agent_type: str = "default", model: Any = "built-in", **fields: Any) -> Dict[str, Any]:
        return self.call("agents.register", {"agent_id": agent_id, "agent_type": agent_type, "model": model, **fields})

    # -- Phase 5: deployment, A/B tests, invocation ----------------------------------------
    def deploy_checkpoint(self, agent_id: str, checkpoint_id: str, environment: str = "production", force: bool = False) -> Dict[str, Any]:
        """Deploys a checkpoint to an environment of its agent. ``production`` needs a held-out
        evaluation significantly better than the agent before training (McNemar p < 0.05); the
        service refuses others with code -40006, quoting p and the improvement, unless
        ``force=True`` (recorded on the deployment)."""
        return self.call("training.deploy_checkpoint", {"agent_id": agent_id, "checkpoint_id": checkpoint_id, "environment": environment, "force": force})

    def rollback_deployment(self, agent_id: str, environment: str = "production") -> Dict[str, Any]:
        """Restores the deployment before the active one."""
        return self.call("training.rollback_deployment", {"agent_id": agent_id, "environment": environment})

    def list_deployments(self, agent_id: str, environment: Optional[str] = None, limit: int = 50, offset: int = 0) -> Dict[str, Any]:
        params: Dict[str, Any] = {"agent_id": agent_id, "limit": limit, "offset": offset}
        if environment:
            params["environment"] = environment
        return self.call("training.list_deployments", params)

    def configure_ab_test(
        self,
        agent_id: Any = None,
        baseline_checkpoint: Optional[str] = None,
        experiment_checkpoint: Optional[str] = None,
        traffic_split: Optional[float] = None,
        environment: str = "production",
        guardrail: Optional[bool] = None,
        alpha: Optional[float] = None,
        auto_raise: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Splits an environment's traffic between a baseline (``None``: the current deployment)
        and an experiment checkpoint. ``agent_id`` may be left out: the experiment's job names
        it. Configuring the same experiment again changes the split and keeps the outcomes;
        ``configure_ab_test(..., traffic_split=0.5)`` (a literal ``...``, as the guide writes it)
        repeats this client's last call with the arguments given."""
        given = {k: v for k, v in {"baseline_checkpoint": baseline_checkpoint, "experiment_checkpoint": experiment_checkpoint,
                                   "traffic_split": traffic_split, "guardrail": guardrail, "alpha": alpha,
                                   "auto_raise": auto_raise}.items() if v is not None}
        if agent_id is Ellipsis:
            last = getattr(self, "_last_ab", None)
            if last is None:
                raise ValueError("configure_ab_test(...): no earlier configure_ab_test call of this client to repeat")
            params = dict(last, **given)
        else:
            if experiment_checkpoint is None or traffic_split is None:
                raise ValueError("configure_ab_test needs experiment_checkpoint and traffic_split")
            params = dict(given, environment=environment)
            if agent_id is not None:
                params["agent_id"] = agent_id
        result = self.call("training.configure_ab_test", params)
        self._last_ab = dict(params, agent_id=result.get("agent_id", params.get("agent_id")))
        return result

    def get_ab_test(self, agent_id: str, environment: str = "production") -> Dict[str, Any]:
        """The A/B report: per arm invocations, outcomes, success rate with its Wilson interval,
        mean latency and cost; ``difference``, the always-valid ``p_value`` and ``decision``
        (``continue``, ``experiment_better``, ``experiment_worse``)."""
        return self.call("training.get_ab_test", {"agent_id": agent_id, "environment": environment})

    def stop_ab_test(self, agent_id: str, environment: str = "production", promote: bool = False) -> Dict[str, Any]:
        return self.call("training.stop_ab_test", {"agent_id": agent_id, "environment": environment, "promote": promote})

    def invoke(self, agent_id: str, query: str, environment: str = "production", user_key: Optional[str] = None,
               expected_outcome: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Runs the deployed agent on one query: answer, invocation and trajectory ids, arm,
        latency and cost. ``user_key`` keeps a user on one arm of an A/B test."""
        params: Dict[str, Any] = {"agent_id": agent_id, "query": query, "environment": environment}
        if user_key is not None:
            params["user_key"] = user_key
        if expected_outcome is not None:
            params["expected_outcome"] = expected_outcome
        return self.call("agents.invoke", params)

    def feedback(self, invocation_id: str, success: Optional[bool] = None, reward: Optional[float] = None) -> Dict[str, Any]:
        """A user's verdict on an invocation (once): ``success``, or a ``reward`` (success: reward > 0)."""
        params: Dict[str, Any] = {"invocation_id": invocation_id}
        if success is not None:
            params["success"] = success
        if reward is not None:
            params["reward"] = reward
        return self.call("agents.feedback", params)
