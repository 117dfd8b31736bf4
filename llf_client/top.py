"""`llf-client top`: live figures of every endpoint, read from its /metrics and /health.

Each refresh reads every endpoint once (in parallel). Gauges (requests running and
waiting, KV cache use) are the latest reading; latencies (TTFT p50/p95, ITL p50) come
from the histograms' growth over the last `window` seconds, never lifetime averages;
token rates and errors from the counters' growth since the previous reading. An
endpoint that refuses /metrics (a gateway answers 403/404) is shown as "metrics not
available".
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .client import EndpointClient, status_error
from .config import Endpoint
from .errors import LLFError, ServerError
from .metrics import Metrics, MetricsParseError, counter_delta, first_present, histogram_delta

DEFAULT_INTERVAL = 2.0
DEFAULT_WINDOW = 60.0
READ_TIMEOUT = 5.0  # seconds for each of /health and /metrics

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # vLLM renamed it
TTFT = "vllm:time_to_first_token_seconds"
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
FINISHED = "vllm:request_success_total"  # label finished_reason: stop, length, abort, error
HTTP_REQUESTS = "http_requests_total"  # label status: 2xx, 4xx, 5xx
NOT_AVAILABLE = "metrics not available"


@dataclass
class Reading:
    """One visit to an endpoint: /health, then /metrics."""

    at: float  # seconds on a monotonic clock
    health_status: int | None = None  # None: not reached
    metrics: Metrics | None = None
    metrics_state: str = "ok"  # ok, not available, error, down
    error: LLFError | None = None
    note: str | None = None


def read_endpoint(client: EndpointClient, clock: Callable[[], float] = time.monotonic) -> Reading:
    """Read one endpoint; failures are kept in the reading, never raised."""
    reading = Reading(at=clock())
    try:
        status = client.request("GET", "/health").status_code
        if status in (403, 404):  # a gateway passes only /v1/...: ask what it does pass
            status = client.request("GET", "/v1/models").status_code
            if status not in (200, 403, 404):
                raise status_error(status, "", client.endpoint)
        reading.health_status = status
        response = client.request("GET", "/metrics")
    except LLFError as err:
        reading.metrics_state = "down" if reading.health_status is None else "error"
        reading.error = err
        return reading
    if response.status_code in (401, 403, 404):
        reading.metrics_state = NOT_AVAILABLE
        reading.note = f"/metrics answered {response.status_code}"
    elif response.status_code != 200:
        reading.metrics_state = "error"
        reading.error = status_error(response.status_code, "/metrics", client.endpoint)
    else:
        try:
            reading.metrics = Metrics.parse(response.text)
        except MetricsParseError as err:
            reading.metrics_state = "error"
            reading.error = ServerError(f"/metrics: {err}", where=client.endpoint.label)
    if reading.error is None and reading.health_status not in (200, None):
        reading.error = ServerError(
            f"/health answered {reading.health_status}",
            where=client.endpoint.label,
            hint="the server is starting or unwell: see its log",
        )
    return reading


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _per_second(delta: float | None, seconds: float) -> float | None:
    return None if delta is None or seconds <= 0 else delta / seconds


def _by_label(before: Metrics, after: Metrics, name: str, label: str) -> dict[str, float]:
    """Growth of a counter over two readings, per value of one label."""
    out: dict[str, float] = {}
    for value in after.label_values(name, label):
        delta = counter_delta(before, after, name, {label: value})
        if delta is not None:
            out[value] = delta
    return out


def snapshot(endpoint: Endpoint, readings: Sequence[Reading], failures: int = 0) -> dict[str, Any]:
    """The figures of one endpoint from its readings, oldest first (at least one)."""
    latest = readings[-1]
    health = (
        "down"
        if latest.health_status is None
        else ("ok" if latest.health_status == 200 else f"HTTP {latest.health_status}")
    )
    doc: dict[str, Any] = {
        "endpoint": endpoint.name,
        "base_url": endpoint.base_url,
        "health": health,
        "health_status": latest.health_status,
        "metrics": latest.metrics_state,
        "note": latest.note,
        "error": latest.error.one_line() if latest.error else None,
        "models": [],
        "requests_running": None,
        "requests_waiting": None,
        "kv_cache_percent": None,
        "window_s": None,
        "requests_finished": None,
        "finish_reasons": {},
        "ttft_p50_ms": None,
        "ttft_p95_ms": None,
        "itl_p50_ms": None,
        "rate_window_s": None,
        "prompt_tokens_per_s": None,
        "generation_tokens_per_s": None,
        "errors": {"scrape_failures": failures, "http_4xx": None, "http_5xx": None, "aborted": None, "failed": None},
    }
    now = latest.metrics
    if now is None:
        return doc
    doc["models"] = now.label_values(RUNNING, "model_name")
    doc["requests_running"] = now.value(RUNNING)
    doc["requests_waiting"] = now.value(WAITING)
    kv_name = first_present(now, KV_CACHE)
    kv = now.value(kv_name) if kv_name else None
    doc["kv_cache_percent"] = None if kv is None else round(kv * 100.0, 1)

    earlier = [r for r in readings[:-1] if r.metrics is not None]
    if not earlier:
        return doc
    oldest, previous = earlier[0], earlier[-1]
    assert oldest.metrics is not None and previous.metrics is not None
    doc["window_s"] = round(latest.at - oldest.at, 1)
    ttft = histogram_delta(oldest.metrics, now, TTFT)
    itl_name = first_present(now, ITL)
    itl = histogram_delta(oldest.metrics, now, itl_name) if itl_name else None
    if ttft is not None:
        doc["ttft_p50_ms"] = _round(_ms(ttft.quantile(0.5)))
        doc["ttft_p95_ms"] = _round(_ms(ttft.quantile(0.95)))
    if itl is not None:
        doc["itl_p50_ms"] = _round(_ms(itl.quantile(0.5)))
    reasons = _by_label(oldest.metrics, now, FINISHED, "finished_reason")
    if FINISHED in now:
        doc["requests_finished"] = round(sum(reasons.values()))
        doc["finish_reasons"] = {k: round(v) for k, v in reasons.items()}
        doc["errors"]["aborted"] = round(reasons.get("abort", 0.0))
        doc["errors"]["failed"] = round(reasons.get("error", 0.0))
    if HTTP_REQUESTS in now:
        statuses = _by_label(oldest.metrics, now, HTTP_REQUESTS, "status")
        doc["errors"]["http_4xx"] = round(statuses.get("4xx", 0.0))
        doc["errors"]["http_5xx"] = round(statuses.get("5xx", 0.0))

    seconds = latest.at - previous.at
    doc["rate_window_s"] = round(seconds, 1)
    doc["prompt_tokens_per_s"] = _round(_per_second(counter_delta(previous.metrics, now, PROMPT_TOKENS), seconds))
    doc["generation_tokens_per_s"] = _round(
        _per_second(counter_delta(previous.metrics, now, GENERATION_TOKENS), seconds)
    )
    return doc


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def error_count(doc: dict[str, Any]) -> int:
    """Every error of an endpoint's snapshot added up (the ERRORS column)."""
    return sum(v for v in doc["errors"].values() if v)


class Watch:
    """The readings of one endpoint over the window."""

    def __init__(self, client: EndpointClient, window: float = DEFAULT_WINDOW) -> None:
        self.client = client
        self.window = window
        self.readings: deque[Reading] = deque()
        self.failures = 0

    @property
    def endpoint(self) -> Endpoint:
        return self.client.endpoint

    def read(self) -> Reading:
        return read_endpoint(self.client)

    def add(self, reading: Reading) -> None:
        if reading.metrics_state in ("error", "down"):
            self.failures += 1
        self.readings.append(reading)
        # Keep the last reading at or before the window's start as its base.
        while len(self.readings) > 2 and self.readings[1].at <= reading.at - self.window:
            self.readings.popleft()

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.endpoint, list(self.readings), self.failures)


def read_all(watches: Sequence[Watch], pool: ThreadPoolExecutor) -> None:
    """One reading of every endpoint, in parallel."""
    for watch, reading in zip(watches, list(pool.map(lambda w: w.read(), watches)), strict=True):
        watch.add(reading)


def document(watches: Sequence[Watch], interval: float, window: float) -> dict[str, Any]:
    """The JSON snapshot of `top --once --json`."""
    endpoints = [w.snapshot() for w in watches]
    return {
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "interval_s": interval,
        "window_s": window,
        "ok": all(e["error"] is None for e in endpoints),
        "endpoints": endpoints,
    }


# --- the terminal view ------------------------------------------------------------------


def _cell(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


HEADERS = (
    "ENDPOINT",
    "HEALTH",
    "RUN",
    "WAIT",
    "KV%",
    "TTFT50",
    "TTFT95",
    "ITL50",
    "IN/s",
    "OUT/s",
    "DONE",
    "ERR",
)


def row(doc: dict[str, Any]) -> list[str]:
    """One endpoint's cells, in the order of HEADERS (latencies in ms)."""
    if doc["metrics"] != "ok":
        figures = ["n/a" if doc["metrics"] == NOT_AVAILABLE else "-"] * 9  # a note below says why
    else:
        figures = [
            _cell(doc["requests_running"]),
            _cell(doc["requests_waiting"]),
            _cell(doc["kv_cache_percent"], 1),
            _cell(doc["ttft_p50_ms"]),
            _cell(doc["ttft_p95_ms"]),
            _cell(doc["itl_p50_ms"]),
            _cell(doc["prompt_tokens_per_s"], 1),
            _cell(doc["generation_tokens_per_s"], 1),
            _cell(doc["requests_finished"]),
        ]
    return [doc["endpoint"], doc["health"], *figures, str(error_count(doc))]


def render(doc: dict[str, Any], *, errors: bool = True) -> Group:
    """The view: a title, one row per endpoint, a line per endpoint with a problem.

    `errors=False` leaves out the error lines (the CLI prints them on stderr).
    """
    stamp = doc["time"][11:19]
    title = (
        f"llf-client top {stamp}  every {doc['interval_s']:g} s  "
        f"TTFT/ITL (ms), DONE: last {doc['window_s']:g} s  q quits"
    )
    table = Table(box=box.SIMPLE, collapse_padding=True, pad_edge=False, show_edge=False)
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("ENDPOINT", "HEALTH") else "right", no_wrap=True)
    notes: list[Text] = []
    for endpoint in doc["endpoints"]:
        table.add_row(*row(endpoint), style=None if endpoint["error"] is None else "red")
        if endpoint["metrics"] == NOT_AVAILABLE:
            notes.append(Text(f"{endpoint['endpoint']}: {NOT_AVAILABLE} ({endpoint['note']})"))
        if endpoint["error"] and errors:
            notes.append(Text(endpoint["error"], style="red"))
    return Group(Text(title, style="bold"), table, *notes)


def print_view(doc: dict[str, Any], file: TextIO | None = None) -> None:
    """The view printed once (`--once` without `--json`), errors left to stderr."""
    Console(file=file).print(render(doc, errors=False))


class Keys:
    """Single key presses from a terminal in cbreak mode; elsewhere only waiting."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.fd: int | None = None
        self._saved: Any = None

    @contextmanager
    def cbreak(self) -> Iterator[Keys]:
        try:
            tty_in = self.stream.isatty()
        except (AttributeError, ValueError):
            tty_in = False
        if not tty_in:
            yield self
            return
        import termios
        import tty

        self.fd = self.stream.fileno()
        self._saved = termios.tcgetattr(self.fd)
        try:
            tty.setcbreak(self.fd)
            yield self
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None

    def quit_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when `q` was pressed."""
        if self.fd is None:
            time.sleep(max(0.0, seconds))
            return False
        ready, _, _ = select.select([self.fd], [], [], max(0.0, seconds))
        if not ready:
            return False
        pressed = os.read(self.fd, 64).decode(errors="replace")
        return "q" in pressed.lower()


def run_live(
    watches: Sequence[Watch],
    interval: float,
    window: float,
    *,
    console: Console | None = None,
    keys: Keys | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_refreshes: int | None = None,
) -> None:
    """Refresh the view every `interval` seconds until `q` (or Ctrl-C, raised)."""
    console = console or Console()
    keys = keys or Keys(sys.stdin)
    pool = ThreadPoolExecutor(max_workers=min(8, len(watches)), thread_name_prefix="llf-top")
    refreshes = 0
    try:
        with keys.cbreak(), Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                started = clock()
                futures = [pool.submit(watch.read) for watch in watches]
                while not all(f.done() for f in futures):
                    if keys.quit_within(0.1):
                        return
                for watch, done in zip(watches, futures, strict=True):
                    watch.add(done.result())
                live.update(render(document(watches, interval, window)), refresh=True)
                refreshes += 1
                if max_refreshes is not None and refreshes >= max_refreshes:
                    return
                while (left := started + interval - clock()) > 0:
                    if keys.quit_within(left):
                        return
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def once(
    watches: Sequence[Watch], interval: float, window: float, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Two readings `interval` apart, then the snapshot (for `--once`)."""
    with ThreadPoolExecutor(max_workers=min(8, len(watches))) as pool:
        read_all(watches, pool)
        sleep(interval)
        read_all(watches, pool)
    return document(watches, interval, min(window, interval))
