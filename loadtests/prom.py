"""The server's own view: vLLM's Prometheus histograms, scraped before and after a stage.

The delta of ``_sum``/``_count`` gives the server-side mean over the stage; the
delta of the cumulative buckets gives quantile estimates, interpolated within a
bucket as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import requests

# Our name -> vLLM's histogram family (seconds).
SERVER_METRICS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "queue_time": "vllm:request_queue_time_seconds",
    "e2el": "vllm:e2e_request_latency_seconds",
    "itl": "vllm:inter_token_latency_seconds",
}
QUANTILES = (50, 90, 95, 99)

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets ``(le, count)`` sorted by ``le``, plus count and sum."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Estimate the q-quantile (0..1) like Prometheus' ``histogram_quantile``."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_le, lower_count = 0.0, 0.0
        for le, cum in self.buckets:
            if cum >= rank:
                if math.isinf(le):
                    return lower_le  # the highest finite bound, as Prometheus does
                if cum == lower_count:
                    return le
                return lower_le + (le - lower_le) * (rank - lower_count) / (cum - lower_count)
            lower_le, lower_count = le, cum
        return lower_le

    def in_first_bucket(self, q: float) -> bool:
        """True when the q-quantile lies in the lowest bucket, where nothing is resolved."""
        if self.count <= 0 or not self.buckets:
            return False
        return self.buckets[0][1] >= q * self.count

    def minus(self, before: Histogram) -> Histogram | None:
        """The stage's own histogram; None when the counters went back (a restart)."""
        prior = dict(before.buckets)
        buckets = tuple((le, cum - prior.get(le, 0.0)) for le, cum in self.buckets)
        count = self.count - before.count
        if count < 0 or any(c < 0 for _, c in buckets):
            return None
        return Histogram(buckets=buckets, count=count, sum=self.sum - before.sum)


def _labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    return {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(text)}


def parse_histograms(text: str, model: str | None = None) -> dict[str, Histogram]:
    """Every histogram family in an exposition, summed over its label sets.

    With ``model``, only series whose ``model_name`` label (if any) equals it count.
    """
    buckets: dict[str, dict[float, float]] = {}
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name = m["name"]
        labels = _labels(m["labels"])
        if model is not None and labels.get("model_name", model) != model:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        if name.endswith("_bucket") and "le" in labels:
            family = name.removesuffix("_bucket")
            le = float(labels["le"])
            family_buckets = buckets.setdefault(family, {})
            family_buckets[le] = family_buckets.get(le, 0.0) + value
        elif name.endswith("_count"):
            family = name.removesuffix("_count")
            counts[family] = counts.get(family, 0.0) + value
        elif name.endswith("_sum"):
            family = name.removesuffix("_sum")
            sums[family] = sums.get(family, 0.0) + value
    out = {}
    for family, bs in buckets.items():
        out[family] = Histogram(
            buckets=tuple(sorted(bs.items())),
            count=counts.get(family, 0.0),
            sum=sums.get(family, 0.0),
        )
    return out


def scrape(root_url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> str | None:
    """GET ``<root>/metrics``; None when the server has no such endpoint or fails."""
    try:
        response = requests.get(f"{root_url.rstrip('/')}/metrics", headers=headers, timeout=timeout)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    return response.text


def stage_summary(before: str | None, after: str | None, model: str | None) -> dict[str, Any]:
    """Server-side count, mean and quantile estimates (ms) of each histogram over a stage.

    A quantile in the lowest bucket is given as ``pNN_below_ms`` (its upper bound).
    """
    if before is None or after is None:
        return {}
    h0 = parse_histograms(before, model)
    h1 = parse_histograms(after, model)
    out: dict[str, Any] = {}
    for key, family in SERVER_METRICS.items():
        if family not in h1:
            continue
        empty = Histogram(buckets=(), count=0.0, sum=0.0)
        delta = h1[family].minus(h0.get(family, empty))
        if delta is None:
            continue
        mean = delta.mean()
        entry: dict[str, Any] = {
            "count": int(round(delta.count)),
            "mean_ms": None if mean is None else mean * 1000.0,
        }
        for q in QUANTILES:
            if delta.in_first_bucket(q / 100.0):
                # Below the lowest bucket bound: interpolating from 0 would invent a value.
                entry[f"p{q}_ms"] = None
                entry[f"p{q}_below_ms"] = delta.buckets[0][0] * 1000.0
                continue
            value = delta.quantile(q / 100.0)
            entry[f"p{q}_ms"] = None if value is None else value * 1000.0
        out[key] = entry
    return out
