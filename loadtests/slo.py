"""SLO files: targets per metric and percentile, validity budgets, and the verdict.

Format (YAML)::

    min_samples: 30                 # a target needs at least this many values
    targets:
      - ttft_content p95 <= 500 ms  # <metric> <stat> <= <number> <ms|s>
      - tpot p95 <= 100 ms
      - error_rate <= 1 %
      - {target: e2el p99 <= 10 s, min_samples: 100}
    validity:
      client_cpu_percent: 50        # load-generator CPU over a stage (100 = one core)
      schedule_lag_ms: 50           # open loop: p95 of client queue time
      server_gap_ms: 100            # client mean TTFT minus server mean TTFT
      server_gap_action: warn       # warn | invalid
    capacity:
      min_users: 1                  # step shape: the capacity that passes
    embeddings:                     # the targets of /v1/embeddings requests
      min_samples: 30               # (default: the top-level min_samples)
      targets:
        - e2el p95 <= 500 ms        # an embedding request's latency
        - error_rate <= 1 %
        - request_throughput >= 2 req/s

A percentile target also needs ``100 / (100 - p)`` values (p99: 100), else it is
inconclusive. The top-level targets judge chat and completions requests, the
``embeddings`` section the embedding requests (scenarios embeddings and rag); each
group is measured on its own requests only. Exit codes: 0 pass, 1 a target missed,
3 invalid or inconclusive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loadtests import EXIT_INVALID, EXIT_MISSED, EXIT_PASS
from loadtests.errors import SloError
from loadtests.metrics import LATENCY_METRICS, PER_REQUEST_METRICS, Sample, metric_values

PASS = "pass"
MISS = "miss"
INCONCLUSIVE = "inconclusive"
OK = "ok"
INVALID = "invalid"
WARN = "warn"

_TARGET = re.compile(
    r"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?:(?P<stat>p\d+(?:\.\d+)?|mean|median|max)\s*)?"
    r"<=\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%)\s*$"
)
_MIN_RATE = re.compile(r"^\s*request_throughput\s*>=\s*(?P<value>\d+(?:\.\d+)?)\s*req/s\s*$")
_TOP_KEYS = {"min_samples", "targets", "validity", "capacity", "embeddings"}
# What an embedding request has: one latency (E2EL), no tokens streamed.
EMBEDDING_METRICS = ("e2el", "client_queue_time", "e2el_including_client_queue")
CHAT = "chat"
EMBEDDINGS = "embeddings"
_VALIDITY_KEYS = {"client_cpu_percent", "schedule_lag_ms", "server_gap_ms", "server_gap_action"}


@dataclass(frozen=True)
class Target:
    """``<metric> <stat> <= limit`` (latency limits in ms, error_rate in percent), or
    ``request_throughput >= limit`` (requests per second, stat "min")."""

    metric: str
    stat: str  # p95, mean, median, max; "rate" for error_rate; "min" for request_throughput
    limit: float
    min_samples: int
    text: str
    group: str = CHAT  # chat | embeddings: the requests it judges

    @property
    def percentile(self) -> float | None:
        return float(self.stat[1:]) if self.stat.startswith("p") else None

    @property
    def needed(self) -> int:
        """Values needed for a conclusive verdict."""
        q = self.percentile
        if q is None:
            return self.min_samples
        return max(self.min_samples, math.ceil(100.0 / (100.0 - q) - 1e-9))


@dataclass(frozen=True)
class Validity:
    client_cpu_percent: float = 50.0
    schedule_lag_ms: float = 50.0
    server_gap_ms: float = 100.0
    server_gap_action: str = WARN


@dataclass(frozen=True)
class Slo:
    targets: tuple[Target, ...]
    validity: Validity = field(default_factory=Validity)
    min_users: int = 1
    path: str = ""
    embeddings: tuple[Target, ...] | None = None  # the 'embeddings' section, if any

    def group(self, name: str) -> tuple[Target, ...]:
        """The targets of the chat requests or of the embedding requests."""
        return self.targets if name == CHAT else (self.embeddings or ())

    def goodput_ms(self, group: str = CHAT) -> dict[str, float]:
        """Per-request thresholds for goodput: the tightest limit per metric."""
        out: dict[str, float] = {}
        for t in self.group(group):
            if t.metric in PER_REQUEST_METRICS:
                out[t.metric] = min(out.get(t.metric, math.inf), t.limit)
        return out


@dataclass(frozen=True)
class TargetResult:
    target: Target
    value: float | None
    n: int
    status: str

    def row(self) -> dict[str, Any]:
        return {
            "target": self.target.text,
            "metric": self.target.metric,
            "stat": self.target.stat,
            "limit": self.target.limit,
            "value": self.value,
            "n": self.n,
            "needed": self.target.needed,
            "status": self.status,
            "group": self.target.group,
        }


@dataclass(frozen=True)
class Check:
    """A validity check of the measurement itself (not of the server)."""

    name: str
    value: float | None
    limit: float
    status: str  # ok | warn | invalid
    detail: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "value": self.value,
            "limit": self.limit,
            "status": self.status,
            "detail": self.detail,
        }


def parse_target(spec: Any, min_samples: int, group: str = CHAT) -> Target:
    """A target from its string form or ``{target: ..., min_samples: N}``."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"target", "min_samples"}
        if unknown or "target" not in spec:
            raise SloError(f"target {spec!r}: use {{target: '...', min_samples: N}}")
        min_samples = _positive_int(spec.get("min_samples", min_samples), "min_samples")
        spec = spec["target"]
    if not isinstance(spec, str):
        raise SloError(f"target {spec!r} is not a string like 'ttft p95 <= 500 ms'")
    rate = _MIN_RATE.match(spec)
    if rate:  # a throughput floor: judged on the stage's duration, one request suffices
        return Target("request_throughput", "min", float(rate["value"]), 1, spec.strip(), group)
    m = _TARGET.match(spec)
    if not m:
        raise SloError(
            f"target {spec!r} does not read '<metric> <stat> <= <number> <ms|s|%>' "
            "or 'request_throughput >= <number> req/s'"
        )
    metric, stat, unit = m["metric"], m["stat"], m["unit"]
    value = float(m["value"])
    if metric == "error_rate":
        if stat is not None or unit != "%":
            raise SloError(f"target {spec!r}: write error_rate as 'error_rate <= 1 %'")
        return Target(metric, "rate", value, min_samples, spec.strip(), group)
    if metric not in LATENCY_METRICS:
        known = ", ".join((*LATENCY_METRICS, "error_rate", "request_throughput"))
        raise SloError(f"target {spec!r}: unknown metric {metric!r} (known: {known})")
    if group == EMBEDDINGS and metric not in EMBEDDING_METRICS:
        known = ", ".join((*EMBEDDING_METRICS, "error_rate", "request_throughput"))
        raise SloError(f"target {spec!r}: an embedding request has no {metric} (use {known})")
    if stat is None:
        raise SloError(f"target {spec!r}: give a statistic (p95, mean, median, max)")
    if unit == "%":
        raise SloError(f"target {spec!r}: latency limits are in ms or s")
    if stat.startswith("p") and not 0 < float(stat[1:]) < 100:
        raise SloError(f"target {spec!r}: the percentile must lie between 0 and 100")
    limit = value * 1000.0 if unit == "s" else value
    return Target(metric, stat, limit, min_samples, spec.strip(), group)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SloError(f"{name} must be a positive integer, not {value!r}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SloError(f"validity.{name} must be a non-negative number, not {value!r}")
    return float(value)


def parse_slo(data: Any, path: str = "") -> Slo:
    """Validate the YAML document of an SLO file."""
    if not isinstance(data, dict):
        raise SloError("the SLO file must be a mapping with a 'targets' list")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SloError(f"unknown key(s) in the SLO file: {', '.join(sorted(unknown))}")
    min_samples = _positive_int(data.get("min_samples", 20), "min_samples")
    embeddings = _embeddings(data.get("embeddings"), min_samples) if "embeddings" in data else None
    specs = data.get("targets")
    if embeddings is not None and specs is None:
        specs = []  # a file for embedding runs only
    elif not isinstance(specs, list) or not specs:
        raise SloError("the SLO file needs a non-empty 'targets' list")
    targets = tuple(parse_target(s, min_samples) for s in specs)
    raw_validity = data.get("validity") or {}
    if not isinstance(raw_validity, dict) or set(raw_validity) - _VALIDITY_KEYS:
        raise SloError(f"validity takes only: {', '.join(sorted(_VALIDITY_KEYS))}")
    defaults = Validity()
    action = raw_validity.get("server_gap_action", defaults.server_gap_action)
    if action not in (WARN, INVALID):
        raise SloError(f"validity.server_gap_action must be warn or invalid, not {action!r}")
    validity = Validity(
        client_cpu_percent=_number(
            raw_validity.get("client_cpu_percent", defaults.client_cpu_percent),
            "client_cpu_percent",
        ),
        schedule_lag_ms=_number(raw_validity.get("schedule_lag_ms", defaults.schedule_lag_ms), "schedule_lag_ms"),
        server_gap_ms=_number(raw_validity.get("server_gap_ms", defaults.server_gap_ms), "server_gap_ms"),
        server_gap_action=action,
    )
    capacity = data.get("capacity") or {}
    if not isinstance(capacity, dict) or set(capacity) - {"min_users"}:
        raise SloError("capacity takes only: min_users")
    min_users = _positive_int(capacity.get("min_users", 1), "capacity.min_users")
    return Slo(targets=targets, validity=validity, min_users=min_users, path=path, embeddings=embeddings)


def _embeddings(section: Any, min_samples: int) -> tuple[Target, ...]:
    """The ``embeddings`` section: ``{min_samples: N, targets: [...]}``."""
    if not isinstance(section, dict) or set(section) - {"min_samples", "targets"}:
        raise SloError("embeddings takes only: min_samples, targets")
    min_samples = _positive_int(section.get("min_samples", min_samples), "embeddings.min_samples")
    specs = section.get("targets")
    if not isinstance(specs, list) or not specs:
        raise SloError("embeddings needs a non-empty 'targets' list")
    return tuple(parse_target(s, min_samples, EMBEDDINGS) for s in specs)


def load_slo(path: str | Path) -> Slo:
    """Read and validate an SLO file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SloError(f"cannot read SLO file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SloError(f"SLO file {p} is not valid YAML: {e}") from None
    try:
        return parse_slo(data, str(p))
    except SloError as e:
        raise SloError(f"{p}: {e}") from None


def measure(target: Target, samples: Sequence[Sample], duration: float | None = None) -> tuple[float | None, int]:
    """The measured value of a target (ms, percent or req/s) and the number of values."""
    if target.metric == "request_throughput":
        completed = sum(1 for s in samples if s.success)
        return (completed / duration if duration and samples else None), len(samples)
    if target.metric == "error_rate":
        n = len(samples)
        failed = sum(1 for s in samples if not s.success)
        return (100.0 * failed / n if n else None), n
    values = metric_values(samples, target.metric)
    if not values:
        return None, 0
    arr = np.asarray(values, dtype=float) * 1000.0
    match target.stat:
        case "mean":
            value = float(np.mean(arr))
        case "median":
            value = float(np.median(arr))
        case "max":
            value = float(np.max(arr))
        case _:
            value = float(np.percentile(arr, float(target.stat[1:])))
    return value, len(values)


def evaluate(
    slo: Slo, samples: Sequence[Sample], duration: float | None = None, group: str = CHAT
) -> list[TargetResult]:
    """The verdict of every target of a group on the raw samples of a stage (of that group).

    ``duration`` (seconds) is needed by a request_throughput target only.
    """
    results = []
    for target in slo.group(group):
        value, n = measure(target, samples, duration)
        if value is None or n < target.needed:
            status = INCONCLUSIVE
        elif target.stat == "min":
            status = PASS if value >= target.limit else MISS
        elif value <= target.limit:
            status = PASS
        else:
            status = MISS
        results.append(TargetResult(target, value, n, status))
    return results


def exit_code(results: Sequence[TargetResult], checks: Sequence[Check]) -> int:
    """Invalid measurement first (3), then a missed target (1), then inconclusive (3)."""
    if any(c.status == INVALID for c in checks):
        return EXIT_INVALID
    if any(r.status == MISS for r in results):
        return EXIT_MISSED
    if any(r.status == INCONCLUSIVE for r in results):
        return EXIT_INVALID
    return EXIT_PASS
