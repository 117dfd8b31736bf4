"""Reports: ``result.json`` (vllm bench serve's keys), ``summary.txt`` and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loadtests import EXIT_INVALID, EXIT_MISSED, EXIT_PASS, EXIT_USAGE
from loadtests.config import RunConfig
from loadtests.metrics import Sample, metric_values
from loadtests.scenarios import EMBED_KIND
from loadtests.slo import Slo

if TYPE_CHECKING:
    from loadtests.controller import StageResult

VERDICT_WORDS = {
    EXIT_PASS: "PASS",
    EXIT_MISSED: "MISSED",
    EXIT_USAGE: "USAGE ERROR",
    EXIT_INVALID: "INVALID/INCONCLUSIVE",
}
PLOTS = ("ttft_hist.png", "itl_hist.png", "latency_over_time.png", "throughput_over_time.png")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def stage_json(result: StageResult) -> dict[str, Any]:
    extra = {} if result.embeddings is None else {"embeddings": result.embeddings}
    return {
        "stage": result.name,
        "users": result.users,
        "start": result.start,  # wall clock: the window of the stage's samples in raw/
        "end": result.end,
        **result.summary,
        **extra,
        "server": result.server,
        "client_cpu_percent": result.cpu,
        "targets": [t.row() for t in result.targets],
        "checks": [c.row() for c in result.checks],
        "exit_code": result.exit_code,
        "verdict": VERDICT_WORDS[result.exit_code],
        "notes": result.notes,
    }


def build_result(
    config: RunConfig,
    slo: Slo,
    results: Sequence[StageResult],
    exit_code: int,
    capacity: int | None,
    stop_reason: str | None,
) -> dict[str, Any]:
    """The result document: vLLM's keys at the top level, one entry per stage below.

    The top level describes the measured stage (step shape: the capacity step, or the
    first step when none passed).
    """
    headline: StageResult | None = None
    if results:
        headline = results[0]
        for r in results:
            if capacity and r.users == capacity:
                headline = r
    # vllm bench serve's backend names
    endpoint = {"completions": "openai", "embeddings": "openai-embeddings"}.get(config.scenario, "openai-chat")
    doc: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": endpoint,
        "backend": endpoint,
        "label": "llf-loadtest",
        "model_id": config.model,
        "tokenizer_id": config.model,
        **({"embed_model_id": config.embed_model} if config.embed_model != config.model else {}),
        "num_prompts": None,
        "request_rate": config.rate if config.shape == "open" else "inf",
        "burstiness": config.burstiness,
        "max_concurrency": config.users,
        "scenario": config.scenario,
        "shape": config.shape,
        "seed": config.seed,
        "host": config.host,
        "workers": config.workers,
        "slo_file": slo.path,
    }
    if headline is not None:
        doc.update(stage_json(headline))
        doc["num_prompts"] = headline.summary["completed"] + headline.summary["failed"]
    doc["stages"] = [stage_json(r) for r in results]
    doc["capacity_users"] = capacity
    doc["stop_reason"] = stop_reason
    doc["exit_code"] = exit_code
    doc["verdict"] = VERDICT_WORDS[exit_code]
    return _clean(doc)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _quantile(entry: dict[str, Any], q: int) -> str:
    below = entry.get(f"p{q}_below_ms")
    return f"<{below:g}" if below is not None else _ms(entry.get(f"p{q}_ms"))


def _measured(row: dict[str, Any]) -> str:
    if row["value"] is None:
        return "-"
    unit = {"error_rate": "%", "request_throughput": "req/s"}.get(row["metric"], "ms")
    return f"{row['value']:.2f} {unit}"


def _latency_rows(figures: dict[str, Any], prefix: str) -> list[str]:
    """One row per latency metric present in the figures (chat or embeddings)."""
    rows = []
    for metric in ("ttft", "ttft_content", "tpot", "itl", "e2el", "client_queue_time"):
        if f"mean_{metric}_ms" not in figures:
            continue
        cells = [_ms(figures.get(f"{k}_{metric}_ms")) for k in ("mean", "p50", "p90", "p95", "p99")]
        rows.append(f"{prefix:<7}{metric:<21}" + "".join(f"{c:>9}" for c in cells))
    return rows


def summary_text(doc: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    lines = [
        f"LLF load test: scenario {doc['scenario']}, shape {doc['shape']}, "
        f"max concurrency {doc['max_concurrency']}, request rate {doc['request_rate']}, "
        f"model {doc['model_id']} at {doc['host']}",
    ]
    embeddings_only = doc["endpoint_type"] == "openai-embeddings"
    if doc.get("embed_model_id"):
        lines[0] += f", embedding model {doc['embed_model_id']}"
    for st in doc["stages"]:
        lines.append("")
        if embeddings_only:  # no stream, no output tokens: no chat figure to show
            figures = f"{st['request_throughput']:.2f} req/s, {st['total_token_throughput']:.1f} input tok/s"
        else:
            figures = f"{st['request_throughput']:.2f} req/s, {st['output_throughput']:.1f} output tok/s"
        lines.append(
            f"== stage {st['stage']} ({st['users']} users): {st['completed']} completed, "
            f"{st['failed']} failed in {st['duration']:.1f} s; {figures}"
        )
        server = st.get("server") or {}
        lines.append(f"{'':28}{'mean':>9}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}  (ms)")
        prefix = "embed" if embeddings_only else "client"
        lines += _latency_rows(st, prefix)
        embeddings = st.get("embeddings")
        if embeddings is not None:
            lines += _latency_rows(embeddings, "embed")
            lines.append(
                f"embeddings: {embeddings['completed']} completed, {embeddings['failed']} failed; "
                f"{embeddings['request_throughput']:.2f} req/s, {embeddings['total_token_throughput']:.1f} input tok/s"
            )
        # an embedding model's server TTFT is its whole request: only queue time and e2el then
        server_rows = [("queue_time", "queue time"), ("e2el", "e2el")]
        if not embeddings_only:
            server_rows.insert(0, ("ttft", "ttft"))
        for key, name in server_rows:
            if key in server:
                s = server[key]
                cells = [_ms(s.get("mean_ms"))] + [_quantile(s, q) for q in (50, 90, 95, 99)]
                lines.append(f"server {name:<21}" + "".join(f"{c:>9}" for c in cells) + f"  n={s['count']}")
        if server.get("metrics_urls"):
            urls = server["metrics_urls"]
            lines.append(f"server figures: /metrics of {', '.join(urls)}" + (" (summed)" if len(urls) > 1 else ""))
        if not server:
            lines.append("server: no /metrics delta (not vLLM, or not reachable)")
        lines.append(f"{'target':<36}{'measured':>14}{'n':>8}{'needed':>8}  verdict")
        for row in st["targets"]:
            name = row["target"] if row.get("group", "chat") == "chat" else f"embed {row['target']}"
            lines.append(f"{name:<36}{_measured(row):>14}{row['n']:>8}{row['needed']:>8}  {row['status'].upper()}")
        for c in st["checks"]:
            value = "-" if c["value"] is None else f"{c['value']:.1f}"
            lines.append(f"check {c['check']:<30}{value:>14}{c['limit']:>8g}  {c['status'].upper()}")
        for note in st.get("notes") or []:
            lines.append(f"note: {note}")
    lines.append("")
    if doc.get("capacity_users") is not None:
        lines.append(f"capacity: {doc['capacity_users']} users met every target")
    if doc.get("stop_reason"):
        lines.append(f"stopped early: {doc['stop_reason']}")
    lines.append(f"verdict: {doc['verdict']} (exit {doc['exit_code']})")
    return "\n".join(lines) + "\n"


def write_all(
    out: Path,
    config: RunConfig,
    slo: Slo,
    results: Sequence[StageResult],
    all_samples: Sequence[Sample],
    t0: float,
    exit_code: int,
    capacity: int | None,
    stop_reason: str | None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write result.json, summary.txt and the plots; print the summary."""
    out.mkdir(parents=True, exist_ok=True)
    doc = build_result(config, slo, results, exit_code, capacity, stop_reason)
    (out / "result.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    text = summary_text(doc)
    (out / "summary.txt").write_text(text, encoding="utf-8")
    if plots:
        write_plots(out, results, all_samples, t0)
    print(text, flush=True)
    return doc


def write_plots(out: Path, results: Sequence[StageResult], all_samples: Sequence[Sample], t0: float) -> list[Path]:
    """Histograms (chat: TTFT and ITL; embeddings: latency), latency and throughput over
    time (matplotlib Agg). A run without chat requests gets no chat figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streamed = [s for s in all_samples if s.kind != EMBED_KIND]
    embedded = [s for s in all_samples if s.kind == EMBED_KIND]
    hists = []
    if streamed or not embedded:
        hists += [("ttft_hist.png", "ttft", "TTFT (ms)", False), ("itl_hist.png", "itl", "ITL (ms)", False)]
    if embedded:
        hists.append(("embed_latency_hist.png", "e2el", "embedding latency (ms)", True))
    paths = []
    for name, metric, label, embedding in hists:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in results:
            samples = [s for s in r.samples if (s.kind == EMBED_KIND) == embedding]
            values = np.asarray(metric_values(samples, metric)) * 1000.0
            if len(values):
                ax.hist(values, bins=40, alpha=0.6, label=f"{r.name} (n={len(values)})")
        ax.set_xlabel(label)
        ax.set_ylabel("count")
        ax.set_title(f"{label.rsplit(' ', 1)[0]} distribution")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        paths.append(_save(fig, out / name))

    ok = [s for s in streamed if s.success]
    ok_embed = [s for s in embedded if s.success]
    bad = [s for s in all_samples if not s.success]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if ok:
        ax.scatter([s.start - t0 for s in ok], [(s.ttft or 0) * 1000 for s in ok], s=6, label="TTFT")
        ax.scatter([s.start - t0 for s in ok], [(s.e2el or 0) * 1000 for s in ok], s=6, label="E2EL")
    if ok_embed:
        x = [s.start - t0 for s in ok_embed]
        ax.scatter(x, [(s.e2el or 0) * 1000 for s in ok_embed], s=6, label="embeddings E2EL")
    if bad:
        ax.scatter([s.start - t0 for s in bad], [0] * len(bad), marker="x", c="r", label="failed")
    _stage_lines(ax, results, t0)
    ax.set_xlabel("request start (s since the run began)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency over time (warm-up included)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    paths.append(_save(fig, out / "latency_over_time.png"))

    done = ok + ok_embed
    axes: list[Any]
    if ok or not done:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        axes = [ax1, ax2]
    else:  # embeddings only: no output chunks to count
        fig, ax2 = plt.subplots(figsize=(9, 3.5))
        axes = [ax2]
    if done:
        end = max(s.start + (s.e2el or 0) for s in done) - t0
        bins = np.arange(0, math.ceil(end) + 2)
        if ok:
            token_times = []
            for s in ok:
                t = s.start - t0 + (s.ttft or 0)
                token_times.append(t)
                for gap in s.itl:
                    t += gap
                    token_times.append(t)
            axes[0].hist(token_times, bins=bins, histtype="step")
        ax2.hist([s.start - t0 + (s.e2el or 0) for s in done], bins=bins, histtype="step")
    for axis in axes:
        _stage_lines(axis, results, t0)
    if len(axes) == 2:
        axes[0].set_ylabel("output chunks / s")
    ax2.set_ylabel("completed req / s")
    ax2.set_xlabel("time (s since the run began)")
    axes[0].set_title("Throughput over time")
    paths.append(_save(fig, out / "throughput_over_time.png"))
    return paths


def _stage_lines(ax: Any, results: Sequence[StageResult], t0: float) -> None:
    for r in results:
        ax.axvline(r.start - t0, color="grey", linestyle=":", linewidth=1)
        ax.axvline(r.end - t0, color="grey", linestyle=":", linewidth=1)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
