"""GRPO configuration and the reward registry of the guide."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional

# The config fields the service accepts (GRPOConfig of the contract, TRL's names for the
# algorithm). An unknown name is refused here, as the server would refuse it.
_FIELDS = {
    "n_iterations", "batch_size", "n_trajectories_per_query", "learning_rate", "max_budget_usd",
    "checkpoint_interval", "max_steps_per_trajectory", "gamma", "loss_type", "scale_rewards",
    "epsilon", "epsilon_high", "beta", "temperature", "top_p", "top_k", "max_completion_length",
    "seed", "eval_interval", "early_stopping_patience", "reward_shaping", "num_iterations",
    "warmup_steps", "max_grad_norm", "advantage_estimator",
}


class GRPOConfig:
    """A GRPO config: only the fields given are sent; the server fills in its defaults and
    checks every range (an error names the field, the rule and the value)."""

    def __init__(self, **fields: Any) -> None:
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise TypeError(f"GRPOConfig: unknown field(s) {', '.join(unknown)}")
        self._fields = dict(fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> Dict[str, Any]:
        out = {}
        for k, v in self._fields.items():
            # Money is a decimal string on the wire, never a float.
            out[k] = str(Decimal(str(v))) if k == "max_budget_usd" else v
        return out

    def __repr__(self) -> str:
        return f"GRPOConfig({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"


RewardFn = Callable[[Any], float]


class RewardRegistry:
    """Named reward functions and which agent types use them. Functions registered here are
    served to the trainer over HTTP by a small server the SDK starts; ``start_training`` tells
    the service where it is when the agent's type has a strategy."""

    def __init__(self) -> None:
        self._functions: Dict[str, RewardFn] = {}
        self._strategies: Dict[str, str] = {}
        self._server: Optional[ThreadingHTTPServer] = None
        self._lock = threading.Lock()

    def register(self, name: str, fn: RewardFn) -> None:
        if not callable(fn):
            raise TypeError(f"reward {name!r} must be callable")
        self._functions[name] = fn

    def set_agent_strategy(self, agent_type: str, name: str) -> None:
        if name not in self._functions:
            known = ", ".join(sorted(self._functions)) or "none"
            raise KeyError(f"no reward named {name!r} (registered: {known})")
        self._strategies[agent_type] = name

    def strategy(self, agent_type: str) -> Optional[str]:
        return self._strategies.get(agent_type)

    def get(self, name: str) -> RewardFn:
        return self._functions[name]

    def score(self, name: str, trajectory: Dict[str, Any]) -> float:
        """Calls reward ``name`` on a trajectory as the trainer posts it. The function sees an
        object with attribute access (``trajectory.success``, ``trajectory.final_answer``,
        ``trajectory.steps``, ``trajectory.query``, ``trajectory.expected_outcome``, ...)."""
        view = SimpleNamespace(**trajectory)
        value = float(self._functions[name](view))
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"reward {name!r} returned {value}")
        return value

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts (once) the reward server in a daemon thread; returns its base URL. Each
        reward is at ``/rewards/<name>``."""
        with self._lock:
            if self._server is None:
                registry = self

                class Handler(BaseHTTPRequestHandler):
                    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                        name = self.path.rstrip("/").rsplit("/", 1)[-1]
                        try:
                            length = int(self.headers.get("Content-Length", "0"))
                            body = json.loads(self.rfile.read(length) or b"{}")
                            score = registry.score(name, body)
                            out, code = json.dumps({"score": score}).encode(), 200
                        except KeyError:
                            out, code = json.dumps({"error": f"no reward {name!r}"}).encode(), 404
                        except Exception as e:  # the user's function failed: say so
                            out, code = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode(), 500
                        self.send_response(code)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(out)))
                        self.end_headers()
                        self.wfile.write(out)

                    def log_message(self, *args: Any) -> None:
                        pass

                self._server = ThreadingHTTPServer((host, port), Handler)
                threading.Thread(target=self._server.serve_forever, daemon=True).start()
            h, p = self._server.server_address[:2]
            return f"http://{h}:{p}"

    def shutdown(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server = None


_GLOBAL = RewardRegistry()


def get_global_registry() -> RewardRegistry:
    """The process-wide registry of the guide's custom-reward example."""
    return _GLOBAL
