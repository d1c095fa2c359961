"""GRPO configuration and the reward registry of the guide."""

from __future__ import annotations

import difflib
import json
import math
import os
import threading
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

class ConfigError(ValueError):
    """A config value breaks a rule of the contract. The message is the server's, word for
    word: ``invalid config: `batch_size` must be in 1..=128, got 200``."""

    def __init__(self, field: str, rule: str, value: Any) -> None:
        self.field, self.rule, self.value = field, rule, _rust_display(value)
        super().__init__(f"invalid config: `{field}` {rule}, got {self.value}")


def _rust_display(v: Any) -> str:
    """A value as the server prints it in a rule's message (Rust's ``Display``): no exponent,
    ``2`` for 2.0, ``NaN`` and ``inf``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = format(Decimal(repr(v)), "f")
        return text[:-2] if text.endswith(".0") else text
    return str(v)


def _int_in(lo: int, hi: Optional[int] = None) -> Tuple[Callable[[Any], bool], str]:
    if hi is None:
        return (lambda v: v >= lo), f"must be >= {lo}"
    return (lambda v: lo <= v <= hi), f"must be in {lo}..={hi}"


def _finite(v: float) -> bool:
    return not (math.isnan(v) or math.isinf(v))


# name: (kind, default, (check, rule)). Kinds: int, float, decimal, choice:<a|b>, and "opt_"
# for fields whose absence (None) means "off". Defaults and rules mirror the server's
# GRPOConfig (crates/agentcore-grpo/src/config.rs); a test of the workspace checks that they
# agree (`cargo test -p agentcore-cli --test python_sdk`).
_SPEC: Dict[str, Tuple[str, Any, Optional[Tuple[Callable[[Any], bool], str]]]] = {
    "n_iterations": ("int", 1000, _int_in(1, 10000)),
    "batch_size": ("int", 16, _int_in(1, 128)),
    "n_trajectories_per_query": ("int", 8, _int_in(1, 16)),
    "learning_rate": ("float", 0.0001, (lambda v: 0 < v <= 1, "must be > 0 and <= 1")),
    "max_budget_usd": ("decimal", Decimal("100.00"), (lambda v: v >= 0, "must be >= 0")),
    "checkpoint_interval": ("int", 10, _int_in(1)),
    "max_steps_per_trajectory": ("int", 20, _int_in(1, 100)),
    "gamma": ("float", 0.99, (lambda v: 0 <= v <= 1, "must be in 0..=1")),
    "loss_type": ("choice:grpo|dapo|dr_grpo|gspo", "dapo", None),
    "scale_rewards": ("choice:group|batch|none", "group", None),
    "advantage_estimator": ("choice:grpo|rloo", "grpo", None),
    "epsilon": ("float", 0.2, (lambda v: 0 < v < 1, "must be > 0 and < 1")),
    "epsilon_high": ("opt_float", None, (lambda v: 0 < v <= 10, "must be > 0 and <= 10 when given")),
    "beta": ("float", 0.0, (lambda v: v >= 0 and _finite(v), "must be >= 0 and finite")),
    "temperature": ("float", 1.0, (lambda v: 0 < v <= 10, "must be > 0 and <= 10")),
    "top_p": ("float", 1.0, (lambda v: 0 < v <= 1, "must be > 0 and <= 1")),
    "top_k": ("opt_int", None, (lambda v: v >= 1, "must be >= 1 when given (leave it out to disable)")),
    "max_completion_length": ("int", 256, _int_in(1, 32768)),
    "seed": ("int", 42, (lambda v: 0 <= v < 2**64, "must be in 0..=18446744073709551615")),
    "eval_interval": ("int", 10, _int_in(1)),
    "early_stopping_patience": (
        "opt_int", None, (lambda v: v >= 1, "must be >= 1 when given (leave it out to disable)")),
    "max_grad_norm": ("float", 1.0, (lambda v: v > 0 and _finite(v), "must be > 0 and finite")),
    "num_iterations": ("int", 1, _int_in(1, 16)),
    "warmup_steps": ("int", 0, _int_in(0)),
    "reward_shaping": ("shaping", None, None),
}

_SHAPING_DEFAULTS: Dict[str, Any] = {
    "enabled": False, "success_reward": 1.0, "failure_reward": 0.0, "tool_call_bonus": 0.1,
    "verification_bonus": 0.05, "step_penalty": 0.01,
}

# The field names the service accepts (GRPOConfig of the contract, TRL's names for the
# algorithm). An unknown name is refused here, as the server would refuse it.
_FIELDS = frozenset(_SPEC)


def _closest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean `{match[0]}`?)" if match else ""


def _coerce(name: str, value: Any) -> Any:
    """Checks `value`'s type and rule for field `name`; returns the value to store."""
    kind, _default, rule = _SPEC[name]
    if kind.startswith("opt_"):
        if value is None:
            return None
        kind = kind[4:]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"invalid config: `{name}` must be an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"invalid config: `{name}` must be a number, got {value!r}")
        value = float(value)
    elif kind == "decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise TypeError(f"invalid config: `{name}` must be a decimal number, got {value!r}")
        try:
            # A float goes through its shortest text (50.1 is 50.1, not 50.1000000000000014).
            value = Decimal(str(value))
        except InvalidOperation:
            raise TypeError(f"invalid config: `{name}` must be a decimal number, got {value!r}") from None
        if not value.is_finite():
            raise ConfigError(name, "must be a finite decimal", value)
    elif kind.startswith("choice:"):
        choices = kind[len("choice:"):].split("|")
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}", value)
        return value
    elif kind == "shaping":
        return _coerce_shaping(value)
    if rule is not None and not rule[0](value):
        raise ConfigError(name, rule[1], value)
    return value


def _coerce_shaping(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"invalid config: `reward_shaping` must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(_SHAPING_DEFAULTS))
    if unknown:
        raise TypeError(
            f"invalid config: unknown field `reward_shaping.{unknown[0]}`"
            + _closest(unknown[0], _SHAPING_DEFAULTS))
    out = dict(value)
    merged = dict(_SHAPING_DEFAULTS, **out)
    for k, v in merged.items():
        ok = isinstance(v, bool) if k == "enabled" else (
            isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            raise TypeError(f"invalid config: `reward_shaping.{k}` has the wrong type: {v!r}")
    for k in ("success_reward", "failure_reward"):
        if not _finite(float(merged[k])):
            raise ConfigError(f"reward_shaping.{k}", "must be a finite number", float(merged[k]))
    if merged["success_reward"] <= merged["failure_reward"]:
        raise ConfigError(
            "reward_shaping.success_reward",
            "must be greater than `reward_shaping.failure_reward` "
            f"({_rust_display(float(merged['failure_reward']))}), or the policy is rewarded for failing",
            float(merged["success_reward"]))
    for k in ("tool_call_bonus", "verification_bonus", "step_penalty"):
        v = float(merged[k])
        if not (v >= 0 and _finite(v)):
            rule = ("must be >= 0 and finite (it is subtracted once per step)"
                    if k == "step_penalty" else "must be >= 0 and finite")
            raise ConfigError(f"reward_shaping.{k}", rule, v)
    return out


class GRPOConfig:
    """The GRPO config of the contract. Every field reads as its value or the server's default
    (``GRPOConfig().batch_size == 16``); a value given or assigned is checked at once, with the
    server's rule and message (``ConfigError``, a ``ValueError``), and an unknown field is
    refused by name (``TypeError``). ``to_dict()`` sends the fields that were given or
    assigned, so the server's defaults apply to the rest; ``from_dict`` and ``from_file`` (the
    YAML, TOML or JSON job file ``agentcore train --config`` reads) build one back."""

    __slots__ = ("_fields",)

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "_fields", {})
        for name, value in fields.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _SPEC:
            raise TypeError(f"invalid config: unknown field `{name}`" + _closest(name, _SPEC))
        self._fields[name] = _coerce(name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_fields":
            raise AttributeError(name)
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        if name == "reward_shaping":
            return dict(_SHAPING_DEFAULTS)
        if name in _SPEC:
            return _SPEC[name][1]
        raise AttributeError(f"GRPOConfig has no field {name!r}" + _closest(name, _SPEC))

    def __delattr__(self, name: str) -> None:
        """Forgets a value given, so the server's default applies again."""
        self._fields.pop(name, None)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GRPOConfig) and self.to_dict(all_fields=True) == other.to_dict(all_fields=True)

    def __repr__(self) -> str:
        return f"GRPOConfig({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"

    def to_dict(self, all_fields: bool = False) -> Dict[str, Any]:
        """The config as the service reads it: the fields given (``all_fields``: every field,
        defaults included, ``None`` for those that are off). Money is a decimal string."""
        names = list(_SPEC) if all_fields else list(self._fields)
        out: Dict[str, Any] = {}
        for k in names:
            v = getattr(self, k)
            if all_fields and k == "reward_shaping":
                v = dict(_SHAPING_DEFAULTS, **v)
            out[k] = str(v) if isinstance(v, Decimal) else v
        return out

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> "GRPOConfig":
        """A config from a mapping (the ``config`` of a job, a parsed file); checked like the
        constructor's keywords."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise TypeError(f"a config must be a mapping of fields, got {data!r}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "GRPOConfig":
        """The config of a YAML, TOML or JSON file, as ``agentcore train --config`` reads it:
        a GRPOConfig, or a job file whose ``grpo`` key holds one. YAML needs PyYAML
        (``pip install 'agentcore[yaml]'``)."""
        text = Path(path).read_text(encoding="utf-8")
        suffix = Path(path).suffix.lower()
        if suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise ImportError(
                    f"reading {path} needs PyYAML: pip install 'agentcore[yaml]'") from None
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib  # Python 3.11+

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"{path}: a config file ends in .yaml, .yml, .toml or .json")
        if isinstance(data, dict) and "grpo" in data:
            data = data["grpo"]
        return cls.from_dict(data)


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
            host_text = h.decode() if isinstance(h, bytes) else str(h)
            return f"http://{host_text}:{p}"

    def shutdown(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server = None


_GLOBAL = RewardRegistry()


def get_global_registry() -> RewardRegistry:
    """The process-wide registry of the guide's custom-reward example."""
    return _GLOBAL
