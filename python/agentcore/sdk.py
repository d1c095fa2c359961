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
