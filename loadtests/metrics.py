"""Per-request samples and the per-run figures, with the keys of ``vllm bench serve``.

Percentiles come from the raw samples with numpy's default linear interpolation.
Failed requests are left out of every latency distribution and counted in ``failed``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)

# Latency metrics, in vLLM's names. The last three exist only in open-loop runs,
# where a request has a scheduled arrival time.
LATENCY_METRICS = (
    "ttft",
    "ttft_content",
    "tpot",
    "itl",
    "e2el",
    "client_queue_time",
    "ttft_including_client_queue",
    "e2el_including_client_queue",
)
# Metrics that have one value per request (ITL has one per gap), usable for goodput.
PER_REQUEST_METRICS = tuple(m for m in LATENCY_METRICS if m != "itl")


@dataclass
class Sample:
    """One request as the load generator saw it. Times in seconds."""

    start: float  # wall clock (time.time()) at st, to place the request in a stage
    success: bool
    status: int = 0
    error: str | None = None
    ttft: float | None = None
    ttft_content: float | None = None
    e2el: float | None = None
    elapsed: float | None = None  # until the request ended, failed or not
    itl: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    chunks: int = 0
    tokens_source: str = "usage"  # usage | tokenizer | chunks
    client_queue: float | None = None  # st - scheduled arrival (open loop only)
    kind: str = ""  # the scenario part (short, long, completions)
    proc: str = ""  # the process that sent it
    text: str | None = None  # generated text, kept only when usage is missing

    @property
    def tpot(self) -> float | None:
        """``(E2EL - TTFT) / (output_tokens - 1)``, only when output_tokens > 1."""
        if not self.success or self.e2el is None or self.ttft is None:
            return None
        if self.output_tokens is None or self.output_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def value(self, metric: str) -> float | None:
        """The per-request value of a metric in seconds (None when it does not apply)."""
        if not self.success:
            return None
        queue = self.client_queue
        match metric:
            case "ttft":
                return self.ttft
            case "ttft_content":
                return self.ttft_content
            case "tpot":
                return self.tpot
            case "e2el":
                return self.e2el
            case "client_queue_time":
                return queue
            case "ttft_including_client_queue":
                return None if queue is None or self.ttft is None else self.ttft + queue
            case "e2el_including_client_queue":
                return None if queue is None or self.e2el is None else self.e2el + queue
        raise KeyError(metric)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["itl"] = [round(x, 7) for x in self.itl]
        if self.text is None:
            del data["text"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sample:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def metric_values(samples: Iterable[Sample], metric: str) -> list[float]:
    """Raw values (seconds) of a metric over the successful samples; ITL pools gaps."""
    values: list[float] = []
    for sample in samples:
        if not sample.success:
            continue
        if metric == "itl":
            values.extend(sample.itl)
            continue
        value = sample.value(metric)
        if value is not None:
            values.append(value)
    return values


def percentile(values: Sequence[float], q: float) -> float:
    """numpy's default (linear) percentile."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def distribution_ms(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    """``mean_/median_/std_/pNN_<prefix>_ms`` from raw values in seconds."""
    keys = ["mean", "median", "std"] + [f"p{p}" for p in PERCENTILES]
    if not values:
        return {f"{k}_{prefix}_ms": None for k in keys}
    arr = np.asarray(values, dtype=float) * 1000.0
    out: dict[str, float | None] = {
        f"mean_{prefix}_ms": float(np.mean(arr)),
        f"median_{prefix}_ms": float(np.median(arr)),
        f"std_{prefix}_ms": float(np.std(arr)),
    }
    for p in PERCENTILES:
        out[f"p{p}_{prefix}_ms"] = float(np.percentile(arr, p))
    return out


def is_good(sample: Sample, thresholds_ms: Mapping[str, float]) -> bool:
    """vLLM's goodput test: every per-request SLO met (``<=``); TPOT counts 0 for 1 token."""
    if not sample.success:
        return False
    for metric, limit in thresholds_ms.items():
        value = sample.value(metric)
        if value is None:
            if metric == "tpot":
                value = 0.0
            else:
                return False
        if value * 1000.0 > limit:
            return False
    return True


def peaks(samples: Sequence[Sample]) -> tuple[float, int]:
    """vLLM's ``max_output_tokens_per_s`` and ``max_concurrent_requests`` (1 s buckets)."""
    done = [s for s in samples if s.success and s.ttft is not None and s.e2el is not None]
    if not done:
        return 0.0, 0
    t0 = min(s.start for s in done)
    t_end = max(s.start + (s.e2el or 0.0) for s in done)
    n = int(math.ceil(t_end - t0)) + 1
    tokens = np.zeros(n)
    concurrent = np.zeros(n)
    for s in done:
        t = s.start + (s.ttft or 0.0)
        times = [t]
        for gap in s.itl:
            t += gap
            times.append(t)
        for tt in times:
            b = int(tt - t0)
            if 0 <= b < n:
                tokens[b] += 1
        first = int(s.start - t0)
        last = int(s.start + (s.e2el or 0.0) - t0)
        concurrent[first : last + 1] += 1
    return float(tokens.max()), int(concurrent.max())


def summarize(
    samples: Sequence[Sample],
    duration: float,
    goodput_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The figures of one stage, keyed as ``vllm bench serve --save-result`` keys them."""
    ok = [s for s in samples if s.success]
    failed = [s for s in samples if not s.success]
    duration = max(duration, 1e-9)
    total_input = sum(s.prompt_tokens or 0 for s in ok)
    total_output = sum(s.output_tokens or 0 for s in ok)
    result: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(failed),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration,
        "request_goodput": None,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    if goodput_ms:
        good = sum(1 for s in ok if is_good(s, goodput_ms))
        result["request_goodput"] = good / duration
        result["good_fraction"] = good / len(samples) if samples else None
    max_tokens_per_s, max_concurrent = peaks(samples)
    result["max_output_tokens_per_s"] = max_tokens_per_s
    result["max_concurrent_requests"] = max_concurrent
    for metric in LATENCY_METRICS:
        values = metric_values(samples, metric)
        if metric.startswith(("client_queue", "ttft_including", "e2el_including")) and not values:
            continue
        result.update(distribution_ms(values, metric))
    result["total_chunks"] = sum(s.chunks for s in ok)
    result["output_tokens_source"] = dict(Counter(s.tokens_source for s in ok))
    result["error_counts"] = dict(Counter(s.error or f"HTTP {s.status}" for s in failed).most_common(10))
    return result


def summarize_embeddings(
    samples: Sequence[Sample],
    duration: float,
    goodput_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The figures of the embedding requests of a stage, with ``vllm bench serve``'s keys
    for an embeddings run: requests, input tokens and the latency (E2EL) only; nothing
    is streamed, so there is no TTFT, TPOT, ITL nor output token."""
    ok = [s for s in samples if s.success]
    failed = [s for s in samples if not s.success]
    duration = max(duration, 1e-9)
    total_input = sum(s.prompt_tokens or 0 for s in ok)
    result: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(failed),
        "total_input_tokens": total_input,
        "request_throughput": len(ok) / duration,
        "request_goodput": None,
        "total_token_throughput": total_input / duration,
    }
    if goodput_ms:
        good = sum(1 for s in ok if is_good(s, goodput_ms))
        result["request_goodput"] = good / duration
        result["good_fraction"] = good / len(samples) if samples else None
    result.update(distribution_ms(metric_values(samples, "e2el"), "e2el"))
    for metric in ("client_queue_time", "e2el_including_client_queue"):
        values = metric_values(samples, metric)
        if values:
            result.update(distribution_ms(values, metric))
    result["error_counts"] = dict(Counter(s.error or f"HTTP {s.status}" for s in failed).most_common(10))
    return result
