"""The server's own view: vLLM's Prometheus histograms, scraped before and after a stage.

The text is parsed by llf_client.metrics (the one Prometheus parser of LLF). The
delta of ``_sum``/``_count`` gives the server-side mean over the stage; the delta of
the cumulative buckets gives quantile estimates, interpolated within a bucket as
Prometheus' ``histogram_quantile`` does.

A run may read several ``/metrics`` URLs (``--metrics-url``, one per server behind a
gateway, which refuses ``/metrics`` itself): each server's delta is taken on its own
and the deltas are added, so a server that restarted or failed a scrape drops out
without spoiling the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import requests

from llf_client.metrics import Histogram, Metrics, MetricsParseError, histogram_delta
from loadtests.config import verify

# Our name -> vLLM's histogram family (seconds).
SERVER_METRICS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "queue_time": "vllm:request_queue_time_seconds",
    "e2el": "vllm:e2e_request_latency_seconds",
    "itl": "vllm:inter_token_latency_seconds",
}
QUANTILES = (50, 90, 95, 99)

# One scrape of every metrics URL: url -> its text, None when it failed.
Scrapes = Mapping[str, str | None]

__all__ = ["Histogram", "QUANTILES", "SERVER_METRICS", "Scrapes", "scrape", "scrape_all", "stage_summary"]


def metrics_url(url: str) -> str:
    """``<root>/metrics`` from a server root, an OpenAI base URL or the metrics URL itself."""
    root = url.strip().rstrip("/").removesuffix("/metrics").removesuffix("/v1")
    return f"{root}/metrics"


def scrape(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0, ca_cert: str | None = None
) -> str | None:
    """GET the metrics page of ``url``; None when the server has no such page or fails.

    ``ca_cert``: the CA file to trust for https (the run's, e.g. the gateway's).
    """
    try:
        response = requests.get(metrics_url(url), headers=headers, timeout=timeout, verify=verify(ca_cert))
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    return response.text


def scrape_all(
    urls: Sequence[str],
    headers_for: Mapping[str, dict[str, str]] | None = None,
    timeout: float = 5.0,
    ca_cert: str | None = None,
) -> dict[str, str | None]:
    """One scrape of every URL: url -> text (None where it failed)."""
    headers_for = headers_for or {}
    return {url: scrape(url, headers_for.get(url), timeout, ca_cert) for url in urls}


def _parse(text: str | None) -> Metrics | None:
    if text is None:
        return None
    try:
        return Metrics.parse(text)
    except MetricsParseError:
        return None


def _as_scrapes(value: str | Scrapes | None) -> Scrapes:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"": value}
    return value


def merged_deltas(before: str | Scrapes | None, after: str | Scrapes | None, model: str | None) -> dict[str, Any]:
    """Each family's histogram over the stage, summed over the servers scraped both times.

    Returns ``{"histograms": {family: Histogram}, "servers": [urls used]}``.
    """
    first, last = _as_scrapes(before), _as_scrapes(after)
    where = {"model_name": model} if model is not None else None
    totals: dict[str, Histogram] = {}
    used: list[str] = []
    for url, text in last.items():
        m1, m0 = _parse(text), _parse(first.get(url))
        if m0 is None or m1 is None:
            continue
        server_used = False
        for family in SERVER_METRICS.values():
            delta = histogram_delta(m0, m1, family, where)
            if delta is None:  # absent, or the server restarted between the scrapes
                continue
            totals[family] = totals[family].plus(delta) if family in totals else delta
            server_used = True
        if server_used:
            used.append(url)
    return {"histograms": totals, "servers": used}


def stage_summary(before: str | Scrapes | None, after: str | Scrapes | None, model: str | None) -> dict[str, Any]:
    """Server-side count, mean and quantile estimates (ms) of each histogram over a stage.

    ``before``/``after`` are one scrape's text or the scrapes of several servers
    (url -> text). A quantile in the lowest bucket is given as ``pNN_below_ms`` (its
    upper bound). With several URLs, ``metrics_urls`` lists those that were summed.
    """
    merged = merged_deltas(before, after, model)
    histograms: dict[str, Histogram] = merged["histograms"]
    out: dict[str, Any] = {}
    for key, family in SERVER_METRICS.items():
        delta = histograms.get(family)
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
    servers = [url for url in merged["servers"] if url]
    if out and servers and len(_as_scrapes(after)) > 1:
        out["metrics_urls"] = servers
    return out
