"""The guide's ``TrainingClient`` over the service's JSON-RPC API."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, AsyncIterator, Callable, Dict, Iterable, Iterator, List, Optional, Set, Type

from .training import GRPOConfig, get_global_registry

RPC_PATH = "/api/v1/jsonrpc"
# Status metrics the guide formats as numbers: NaN (not a number yet) instead of None before
# the first iteration or evaluation, so f"{x:.4f}" prints "nan" rather than raising.
_NUMERIC_METRICS = ("train_loss", "validation_accuracy", "avg_reward", "success_rate")


class AgentcoreError(Exception):
    """A JSON-RPC error of the service: ``code``, ``message``, ``data``. Each code of the
    contract has its subclass (``NotFound``, ``DeploymentGateError``, ...), so callers can catch
    the one they handle."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code, self.message, self.data = code, message, data


class ParseError(AgentcoreError):
    """-32700: the request was not JSON."""


class InvalidRequest(AgentcoreError):
    """-32600: an invalid request, or a config value out of range (``data``: field, error)."""


class MethodNotFound(AgentcoreError):
    """-32601."""


class InvalidParams(AgentcoreError):
    """-32602: a malformed parameter (the message quotes it)."""


class InternalError(AgentcoreError):
    """-32603: the message gives the correlation id of the server's log line."""


class NotFound(AgentcoreError):
    """-32001: no such job, checkpoint or agent (visible to the caller)."""


class BudgetExceeded(AgentcoreError):
    """-40001."""


class DataValidationError(AgentcoreError):
    """-40002: the training data was refused (the message gives the count or the index)."""


class CannotCancel(AgentcoreError):
    """-40003: the job has already ended."""


class EvaluationFailed(AgentcoreError):
    """-40004."""


class ExportLimitExceeded(AgentcoreError):
    """-40005: ``limit`` over 10000."""


class DeploymentGateError(AgentcoreError):
    """-40006: the checkpoint is not significantly better (the message quotes p and the
    improvement); ``force=True`` overrides."""


class NoDeployment(AgentcoreError):
    """-40007: no deployment or A/B test for that agent and environment."""


class PermissionDenied(AgentcoreError):
    """-40103: the message names the permission."""


ERRORS: Dict[int, Type[AgentcoreError]] = {
    -32700: ParseError, -32600: InvalidRequest, -32601: MethodNotFound, -32602: InvalidParams,
    -32603: InternalError, -32001: NotFound, -40001: BudgetExceeded, -40002: DataValidationError,
    -40003: CannotCancel, -40004: EvaluationFailed, -40005: ExportLimitExceeded,
    -40006: DeploymentGateError, -40007: NoDeployment, -40103: PermissionDenied,
}


def rpc_error(code: int, message: str, data: Any = None) -> AgentcoreError:
    """The exception of a JSON-RPC error object (``AgentcoreError`` for a code outside the
    contract)."""
    return ERRORS.get(code, AgentcoreError)(code, message, data)


class HTTPError(Exception):
    """An HTTP-level refusal: 401 (token), 413 (body size), 429 (rate limit; ``retry_after``)."""

    def __init__(self, status: int, body: str, retry_after: Optional[float] = None) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status, self.body, self.retry_after = status, body, retry_after


class Record(dict):  # type: ignore[type-arg]
    """A result of the service: a dict, as the guide indexes it (``status["metrics"]
    ["train_loss"]``), whose keys also read as attributes (``status.metrics.train_loss``).
    The subclasses name the fields of each result for readers and type checkers."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r} (fields: {', '.join(self)})") from None


class JobStatus(Record):
    """``training.get_status``."""
    job_id: str
    agent_id: str
    status: str
    current_iteration: int
    total_iterations: int
    progress_percent: float
    metrics: Record
    cost_usd: str
    budget_usd: str
    best_checkpoint_id: Optional[str]
    error_message: Optional[str]


class Evaluation(Record):
    """``training.evaluate``: metrics, baseline_metrics, baseline_comparison (p_value, ...)."""
    metrics: Record
    baseline_metrics: Record
    baseline_comparison: Record
    queries_evaluated: int


class ExportPage(Record):
    """``training.export_trajectories``: one page."""
    job_id: str
    trajectories: List[Record]
    total_count: int
    returned_count: int
    has_more: bool


class Deployment(Record):
    """``training.deploy_checkpoint`` and the rows of ``training.list_deployments``."""
    deployment_id: str
    agent_id: str
    environment: str
    version: int
    checkpoint_id: str
    status: str
    forced: bool
    evaluation: Optional[Record]


class AbReport(Record):
    """``training.get_ab_test``: per arm counts and Wilson intervals, the always-valid p-value
    and the decision."""
    status: str
    traffic_split: float
    p_value: float
    decision: str
    arms: Record


class Invocation(Record):
    """``agents.invoke``."""
    invocation_id: str
    answer: Any
    arm: str
    latency_ms: float
    cost_usd: str


def _record(value: Any, cls: Type[Record] = Record) -> Any:
    """JSON as records, nested ones included."""
    if isinstance(value, dict):
        return cls({k: _record(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_record(v) for v in value]
    return value


# Methods that change nothing: a call the server may have received (a 502, a timed-out read)
# is retried only for these. A refusal before any work (429, 503, a refused connection) is
# retried for every method.
_READ_ONLY = frozenset({
    "training.get_status", "training.list_jobs", "training.export_trajectories",
    "training.list_deployments", "training.get_ab_test", "agents.get", "agents.list",
    "training.list_checkpoints", "agents.export_invocations",
})
FINAL_STATUSES = ("completed", "failed", "cancelled")


def _paged(fetch: Callable[[int], Record], key: str) -> Iterator[Record]:
    """The items under ``key`` of every page ``fetch(offset)`` returns, until ``has_more`` ends."""
    offset = 0
    while True:
        page = fetch(offset)
        yield from page[key]
        offset += page["returned_count"]
        if not page["has_more"] or page["returned_count"] == 0:
            return


def _progress(bar: Any, status: Dict[str, Any]) -> Any:
    """Draws ``status`` on ``bar`` (made on the first call): tqdm when installed, else a line on
    stderr."""
    total, done = status.get("total_iterations") or 0, status.get("current_iteration") or 0
    loss = status.get("metrics", {}).get("train_loss")
    if bar is None:
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]

            bar = tqdm(total=total, unit="it", desc=str(status.get("job_id", ""))[:8])
        except ImportError:
            bar = _LineBar(total)
    bar.update(done - bar.n)
    bar.set_postfix_str(f"{status['status']} loss={loss if loss is None else f'{loss:.4f}'}")
    return bar


class _LineBar:
    """What ``wait`` draws without tqdm: ``[#####.....] 5/10 running loss=...`` on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.postfix, self._last = total, 0, "", ""

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        width = 30
        filled = width * self.n // self.total if self.total else 0
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.n}/{self.total} {text}"
        if line != self._last:  # a log file gets one line per change, not one per poll
            sys.stderr.write(line + ("\r" if sys.stderr.isatty() else "\n"))
            sys.stderr.flush()
            self._last = line

    def close(self) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\n")


class TrainingClient:
    """A client of one server: ``TrainingClient(base_url, api_key)``.

    ``timeout``: seconds per HTTP request. ``max_retries``: how often a call refused with 429
    or 503 (after the server's ``Retry-After``, else ``backoff * 2**attempt`` seconds), or one
    whose connection failed, is sent again; read-only calls are also retried after a 502, 504
    or a timed-out answer."""

    def __init__(self, base_url: Optional[str], api_key: Optional[str] = None, timeout: float = 600.0,
                 max_retries: int = 3, backoff: float = 0.5) -> None:
        if not base_url:
            raise ValueError("base_url is required (e.g. http://127.0.0.1:8080)")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._ids = itertools.count(1)

    # -- transport -------------------------------------------------------------------------
    def _post(self, body: bytes) -> str:
        req = urllib.request.Request(self.base_url + RPC_PATH, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as e:
            retry = e.headers.get("Retry-After")
            try:
                after = float(retry) if retry is not None else None
            except ValueError:
                after = None
            raise HTTPError(e.code, e.read().decode(errors="replace"), after) from None

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        """One JSON-RPC call, retried as the class says; the result as records."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": next(self._ids)}).encode()
        attempt = 0
        while True:
            try:
                text = self._post(body)
                break
            except HTTPError as e:
                retry = e.status in (429, 503) or (e.status in (502, 504) and method in _READ_ONLY)
                if not retry or attempt >= self.max_retries:
                    raise
                wait = e.retry_after if e.retry_after is not None else self.backoff * 2 ** attempt
            except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
                reason = getattr(e, "reason", e)
                never_sent = isinstance(reason, ConnectionRefusedError)
                if not (never_sent or method in _READ_ONLY) or attempt >= self.max_retries:
                    raise
                wait = self.backoff * 2 ** attempt
            attempt += 1
            time.sleep(wait)
        answer = json.loads(text)
        if answer.get("error"):
            err = answer["error"]
            raise rpc_error(err.get("code", 0), err.get("message", ""), err.get("data"))
        return _record(answer.get("result"))

    # -- following a job -----------------------------------------------------------------
    def wait(self, job_id: str, poll_seconds: float = 2.0, progress: bool = True,
             timeout: Optional[float] = None) -> "JobStatus":
        """Polls ``get_status`` until the job ends (completed, failed or cancelled) and returns
        the last status. ``progress``: a bar of iterations (tqdm when it is installed, else one
        line on stderr rewritten in place)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar: Any = None
        try:
            while True:
                status = self.get_status(job_id)
                if progress:
                    bar = _progress(bar, status)
                if status["status"] in FINAL_STATUSES:
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} is still {status['status']} after {timeout} s")
                time.sleep(poll_seconds)
        finally:
            if bar is not None:
                bar.close()

    def stream(self, job_id: str, reconnect: int = 5) -> Iterator[Record]:
        """The job's live messages from ``/training/ws/{job_id}`` (``type``: ``status``,
        ``progress``, ``checkpoint``, ``budget``) until the job ends. A dropped connection is
        opened again (up to ``reconnect`` times in a row); messages already yielded are not
        yielded again."""
        from .ws import WebSocket

        url = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        url += f"/training/ws/{urllib.parse.quote(job_id, safe='')}"
        seen: Set[str] = set()
        last_status: Optional[str] = None
        failures = 0
        while True:
            try:
                with WebSocket.connect(url, token=self.api_key, timeout=self.timeout) as ws:
                    for text in ws:
                        failures = 0
                        m = _record(json.loads(text))
                        if m.get("type") == "status":
                            if m.get("status") == last_status:
                                continue
                            last_status = m.get("status")
                        else:
                            key = json.dumps(m, sort_keys=True)
                            if key in seen:
                                continue
                            seen.add(key)
                        yield m
            except OSError:
                if failures >= reconnect:
                    raise
            else:
                if last_status in FINAL_STATUSES:
                    return
                if failures >= reconnect:
                    raise ConnectionError(f"job {job_id}: the WebSocket closed {failures + 1} times in a row before the job ended")
            failures += 1
            time.sleep(self.backoff * 2 ** (failures - 1))

    def iter_trajectories(self, job_id: str, success_only: bool = False, min_reward: Optional[float] = None,
                          page_size: int = 1000) -> Iterator[Record]:
        """Every exported trajectory of the job, page by page (``export_trajectories``)."""
        return _paged(lambda offset: self.export_trajectories(job_id, success_only=success_only, min_reward=min_reward,
                                                              limit=page_size, offset=offset), "trajectories")

    # -- the guide's calls ---------------------------------------------------------------
    def start_training(
        self,
        agent_id: str,
        config: Any = None,
        training_data: Optional[Iterable[Dict[str, Any]]] = None,
        evaluation_data: Optional[Iterable[Dict[str, Any]]] = None,
        metadata: Optional[Dict[str, Any]] = None,
        training_queries: Optional[Iterable[Dict[str, Any]]] = None,
        report_to: Optional[List[str]] = None,
    ) -> Record:
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
        if report_to is not None:
            params["report_to"] = list(report_to)
        return Record(self.call("training.start_grpo", params))

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

    def get_status(self, job_id: str) -> JobStatus:
        status = JobStatus(self.call("training.get_status", {"job_id": job_id}))
        metrics = status.setdefault("metrics", {})
        for k in _NUMERIC_METRICS:
            if metrics.get(k) is None:
                metrics[k] = float("nan")
        return status

    def list_jobs(self, agent_id: Optional[str] = None, status: Optional[str] = None, limit: int = 50, offset: int = 0) -> Record:
        params: Dict[str, Any] = {"limit": limit, "offset": offset}
        if agent_id:
            params["agent_id"] = agent_id
        if status:
            params["status"] = status
        return Record(self.call("training.list_jobs", params))

    def cancel(self, job_id: str, reason: Optional[str] = None) -> Record:
        return Record(self.call("training.cancel", {"job_id": job_id, "reason": reason}))

    def evaluate(self, job_id: str, checkpoint_id: Optional[str] = None, evaluation_queries: Optional[List[Dict[str, Any]]] = None) -> Evaluation:
        params: Dict[str, Any] = {"job_id": job_id}
        if checkpoint_id:
            params["checkpoint_id"] = checkpoint_id
        if evaluation_queries is not None:
            params["evaluation_queries"] = evaluation_queries
        return Evaluation(self.call("training.evaluate", params))

    def export_trajectories(self, job_id: str, success_only: bool = False, min_reward: Optional[float] = None, limit: int = 1000, offset: int = 0) -> ExportPage:
        params: Dict[str, Any] = {"job_id": job_id, "success_only": success_only, "limit": limit, "offset": offset}
        if min_reward is not None:
            params["min_reward"] = min_reward
        return ExportPage(self.call("training.export_trajectories", params))

    def subscribe_webhook(self, events: List[str], url: str) -> Record:
        return Record(self.call("training.subscribe_webhook", {"events": events, "url": url}))

    def register_agent(self, agent_id: str, agent_type: str = "default", model: Any = "built-in", **fields: Any) -> Record:
        return Record(self.call("agents.register", {"agent_id": agent_id, "agent_type": agent_type, "model": model, **fields}))

    # -- Phase 5: deployment, A/B tests, invocation ----------------------------------------
    def deploy_checkpoint(self, agent_id: str, checkpoint_id: str, environment: str = "production", force: bool = False) -> Deployment:
        """Deploys a checkpoint to an environment of its agent. ``production`` needs a held-out
        evaluation significantly better than the agent before training (McNemar p < 0.05); the
        service refuses others with code -40006, quoting p and the improvement, unless
        ``force=True`` (recorded on the deployment)."""
        return Deployment(self.call("training.deploy_checkpoint", {"agent_id": agent_id, "checkpoint_id": checkpoint_id, "environment": environment, "force": force}))

    def rollback_deployment(self, agent_id: str, environment: str = "production") -> Record:
        """Restores the deployment before the active one."""
        return Record(self.call("training.rollback_deployment", {"agent_id": agent_id, "environment": environment}))

    def list_deployments(self, agent_id: str, environment: Optional[str] = None, limit: int = 50, offset: int = 0) -> Record:
        params: Dict[str, Any] = {"agent_id": agent_id, "limit": limit, "offset": offset}
        if environment:
            params["environment"] = environment
        return Record(self.call("training.list_deployments", params))

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
    ) -> Record:
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
        result = Record(self.call("training.configure_ab_test", params))
        self._last_ab = dict(params, agent_id=result.get("agent_id", params.get("agent_id")))
        return result

    def get_ab_test(self, agent_id: str, environment: str = "production") -> AbReport:
        """The A/B report: per arm invocations, outcomes, success rate with its Wilson interval,
        mean latency and cost; ``difference``, the always-valid ``p_value`` and ``decision``
        (``continue``, ``experiment_better``, ``experiment_worse``)."""
        return AbReport(self.call("training.get_ab_test", {"agent_id": agent_id, "environment": environment}))

    def stop_ab_test(self, agent_id: str, environment: str = "production", promote: bool = False) -> Record:
        return Record(self.call("training.stop_ab_test", {"agent_id": agent_id, "environment": environment, "promote": promote}))

    def invoke(self, agent_id: str, query: str, environment: str = "production", user_key: Optional[str] = None,
               expected_outcome: Optional[Dict[str, Any]] = None) -> Invocation:
        """Runs the deployed agent on one query: answer, invocation and trajectory ids, arm,
        latency and cost. ``user_key`` keeps a user on one arm of an A/B test."""
        params: Dict[str, Any] = {"agent_id": agent_id, "query": query, "environment": environment}
        if user_key is not None:
            params["user_key"] = user_key
        if expected_outcome is not None:
            params["expected_outcome"] = expected_outcome
        return Invocation(self.call("agents.invoke", params))

    def export_invocations(self, agent_id: str, environment: Optional[str] = None, limit: int = 1000, offset: int = 0) -> ExportPage:
        """One page of the agent's invocations (oldest first) with their trajectories and
        outcomes: ``invocations``, ``total_count``, ``returned_count``, ``has_more``."""
        params: Dict[str, Any] = {"agent_id": agent_id, "limit": limit, "offset": offset}
        if environment:
            params["environment"] = environment
        return ExportPage(self.call("agents.export_invocations", params))

    def iter_invocations(self, agent_id: str, environment: Optional[str] = None, page_size: int = 1000) -> Iterator[Record]:
        """Every invocation of the agent, page by page (``export_invocations``)."""
        return _paged(lambda offset: self.export_invocations(agent_id, environment=environment, limit=page_size,
                                                             offset=offset), "invocations")

    def feedback(self, invocation_id: str, success: Optional[bool] = None, reward: Optional[float] = None) -> Record:
        """A user's verdict on an invocation (once): ``success``, or a ``reward`` (success: reward > 0)."""
        params: Dict[str, Any] = {"invocation_id": invocation_id}
        if success is not None:
            params["success"] = success
        if reward is not None:
            params["reward"] = reward
        return Record(self.call("agents.feedback", params))



class AsyncTrainingClient:
    """``TrainingClient``'s calls as coroutines, for asyncio code: ``await client.get_status(
    job_id)``, ``async for event in client.stream(job_id)``. Each call runs the blocking client's
    call on a worker thread (``asyncio.to_thread``), with the same retries, timeouts, results and
    exceptions."""

    def __init__(self, base_url: Optional[str], api_key: Optional[str] = None, **options: Any) -> None:
        self.sync = TrainingClient(base_url, api_key, **options)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(attr, *args, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = attr.__doc__
        return call

    async def _iterate(self, it: Iterator[Record]) -> AsyncIterator[Record]:
        while True:
            item = await asyncio.to_thread(next, it, None)
            if item is None:
                return
            yield item

    def stream(self, job_id: str, reconnect: int = 5) -> AsyncIterator[Record]:
        """``TrainingClient.stream`` as an async iterator."""
        return self._iterate(self.sync.stream(job_id, reconnect=reconnect))

    def iter_trajectories(self, job_id: str, **filters: Any) -> AsyncIterator[Record]:
        """``TrainingClient.iter_trajectories`` as an async iterator."""
        return self._iterate(self.sync.iter_trajectories(job_id, **filters))
