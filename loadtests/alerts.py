"""Prometheus alert rules and the Grafana dashboard, generated from an SLO file.

The latency and error-rate targets that ``make loadtest`` enforces before traffic are
the ones Prometheus watches after it::

    python -m loadtests.alerts                     # writes both files (make alerts)
    python -m loadtests.alerts --check             # exit 1 when a file is out of date
    python -m loadtests.alerts --for 30s --rules /tmp/rules.yml   # short windows for tests

Labels the rules and the dashboard expect from Prometheus' scrape configuration:
vLLM's ``/metrics`` under ``job="vllm"``, the node exporter under ``job="node"``, the
nginx exporter under ``job="nginx"``, each vLLM and node target with a ``server``
label (the inventory hostname), and the gateway health checker's
``llf_gateway_backend_up{server}`` and ``llf_gateway_backend_drained{server}``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from loadtests.errors import SloError
from loadtests.slo import Slo, Target, load_slo

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SLO = REPO / "loadtests" / "slo.yaml"
DEFAULT_RULES = REPO / "monitoring" / "prometheus" / "llf-rules.yml"
DEFAULT_DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "llf.json"

# SLO metric -> (vLLM's histogram in seconds, the name people read)
HISTOGRAMS: dict[str, tuple[str, str]] = {
    "ttft": ("vllm:time_to_first_token_seconds", "TTFT"),
    "ttft_content": ("vllm:time_to_first_token_seconds", "TTFT"),
    "tpot": ("vllm:request_time_per_output_token_seconds", "TPOT"),
    "itl": ("vllm:inter_token_latency_seconds", "ITL"),
    "e2el": ("vllm:e2e_request_latency_seconds", "E2EL"),
}
# The gateway health checker's view, one series per server (label server=<inventory hostname>).
GATEWAY_UP = "llf_gateway_backend_up"
GATEWAY_DRAINED = "llf_gateway_backend_drained"
# vLLM's http_requests_total{handler} of the routes the gateway passes on (not /v1/models)
OPENAI_ROUTES = 'handler=~"/v1/(chat/completions|completions|embeddings)"'
_DURATION = re.compile(r"^[1-9][0-9]*(ms|s|m|h|d)$")


def _opt(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Options:
    """Thresholds, windows and job names; every field is a command-line option."""

    window: str = _opt("5m", "rate window of the latency, error-rate and preemption rules")
    slo_for: str = _opt("10m", "for: of the latency and error-rate rules")
    down_for: str = _opt("1m", "for: of LLFServerDown")
    gateway_for: str = _opt("1m", "for: of LLFServerOutOfGateway")
    queue_waiting: float = _opt(10.0, "requests waiting in vLLM's queue above which LLFQueueLong fires")
    queue_for: str = _opt("5m", "for: of LLFQueueLong")
    kv_cache_usage: float = _opt(0.9, "vllm:kv_cache_usage_perc (0..1) above which LLFKvCacheNearlyFull fires")
    kv_cache_for: str = _opt("5m", "for: of LLFKvCacheNearlyFull")
    preemption_for: str = _opt("5m", "for: of LLFPreemptions")
    disk_free: float = _opt(0.1, "free fraction of the model's filesystem below which LLFModelDiskNearlyFull fires")
    disk_for: str = _opt("10m", "for: of LLFModelDiskNearlyFull")
    disk_mountpoints: str = _opt(
        "/|/var|/var/lib|/var/lib/llf.*", "regex of the mount points that can hold /var/lib/llf/models"
    )
    memory_free: float = _opt(0.1, "MemAvailable/MemTotal below which LLFMemoryNearlyFull fires")
    memory_for: str = _opt("5m", "for: of LLFMemoryNearlyFull")
    vllm_job: str = _opt("vllm", "Prometheus job of the vLLM servers")
    node_job: str = _opt("node", "Prometheus job of the node exporters")
    nginx_job: str = _opt("nginx", "Prometheus job of the gateway's nginx exporter")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name == "window" or f.name.endswith("_for")) and not _DURATION.match(value):
                raise SloError(f"{f.name} must be a Prometheus duration such as 30s or 5m, not {value!r}")
        for name in ("kv_cache_usage", "disk_free", "memory_free"):
            if not 0 < getattr(self, name) < 1:
                raise SloError(f"{name} must lie between 0 and 1, not {getattr(self, name)!r}")
        if self.queue_waiting < 0:
            raise SloError(f"queue_waiting must not be negative, not {self.queue_waiting!r}")

    def with_for(self, duration: str) -> Options:
        """Every ``for:`` set to one duration (a test inventory's short windows)."""
        changes: dict[str, Any] = {f.name: duration for f in fields(self) if f.name.endswith("_for")}
        return replace(self, **changes)


def _num(value: float) -> str:
    return f"{value:g}"


def _camel(metric: str) -> str:
    return "".join(part.capitalize() for part in metric.split("_"))


def latency_expr(metric: str, stat: str, selector: str, window: str, by: str = "server") -> str:
    """PromQL of a latency statistic (seconds) from vLLM's histogram ``metric``."""
    if stat == "mean":
        return (
            f"{_sum(by)}(rate({metric}_sum{{{selector}}}[{window}]))"
            f" / {_sum(by)}(rate({metric}_count{{{selector}}}[{window}]))"
        )
    q = 0.5 if stat == "median" else 1.0 if stat == "max" else float(stat[1:]) / 100.0
    by_le = f"{by}, le" if by else "le"
    return f"histogram_quantile({_num(q)}, sum by ({by_le}) (rate({metric}_bucket{{{selector}}}[{window}])))"


def _sum(by: str) -> str:
    return f"sum by ({by}) " if by else "sum "


def error_ratio_expr(selector: str, window: str, by: str = "server") -> str:
    """HTTP 5xx answers over all answers of the OpenAI routes, from vLLM's own counter."""
    routes = f"{selector},{OPENAI_ROUTES}"
    answers = f"{_sum(by)}(rate(http_requests_total{{{routes}}}[{window}]))"
    # vLLM has no 5xx series until the first 5xx: count 0 until then
    return f'({_sum(by)}(rate(http_requests_total{{{routes},status="5xx"}}[{window}])) or 0 * {answers}) / {answers}'



def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def slo_alert(target: Target, slo_path: str, opts: Options) -> dict[str, Any] | None:
    """The alert of one SLO target; None for a client-side metric vLLM does not measure."""
    vllm = f'job="{opts.vllm_job}"'
    source = f"{slo_path}: `{target.text}`"
    if target.metric == "error_rate":
        limit = target.limit / 100.0
        return _alert(
            "LLFErrorRateAboveSlo",
            f"{error_ratio_expr(vllm, opts.window)} > {_num(limit)}",
            opts.slo_for,
            "warning",
            "Error rate of {{ $labels.server }} is {{ $value | humanizePercentage }}"
            f" (SLO: {target.text})",
            f"{source}. HTTP 5xx answers over all answers of the OpenAI routes (completions, chat, embeddings) "
            f"over {opts.window}, from vLLM's http_requests_total (status grouped as 2xx/4xx/5xx). "
            "4xx (a client's mistake) is not counted; "
            "a request that fails after its stream began answered 200 and shows as finished_reason=error "
            "in vllm:request_success_total (the dashboard's finish reasons).",
        )
    if target.metric not in HISTOGRAMS:
        return None
    metric, label = HISTOGRAMS[target.metric]
    limit_s = target.limit / 1000.0
    return _alert(
        f"LLF{_camel(target.metric)}{target.stat.capitalize()}AboveSlo",
        f"{latency_expr(metric, target.stat, vllm, opts.window)} > {_num(limit_s)}",
        opts.slo_for,
        "warning",
        f"{label} {target.stat} of {{{{ $labels.server }}}} is {{{{ $value | humanizeDuration }}}}"
        f" (SLO: {target.text})",
        f"{source}. Estimated from vLLM's histogram {metric} over {opts.window} "
        "(interpolated within a bucket, as histogram_quantile does).",
    )


def fleet_alerts(opts: Options) -> list[dict[str, Any]]:
    vllm = f'job="{opts.vllm_job}"'
    node = f'job="{opts.node_job}"'
    fs = f'{node},fstype!~"tmpfs|ramfs|squashfs|overlay",mountpoint=~"{opts.disk_mountpoints}"'
    return [
        _alert(
            "LLFServerDown",
            f"up{{{vllm}}} == 0",
            opts.down_for,
            "critical",
            "vLLM server {{ $labels.server }} is down",
            "Prometheus cannot scrape {{ $labels.instance }}/metrics: the server is stopped, starting, "
            "or unreachable. Look at `systemctl status llf-vllm` (or supervisorctl) and its log on the host.",
        ),
        _alert(
            "LLFServerOutOfGateway",
            f"({GATEWAY_UP} == 0) unless on (server) ({GATEWAY_DRAINED} == 1)",
            opts.gateway_for,
            "warning",
            "Server {{ $labels.server }} is out of the gateway",
            f"The gateway's health checker (llf-gateway-health) exports {GATEWAY_UP}{{server}}: 1 while the "
            "server's /health answers 200, 0 when it does not and the server is taken out of nginx's upstream; "
            f"{GATEWAY_DRAINED}{{server}} is 1 while a rolling update drains it on purpose (no alert then).",
        ),
        _alert(
            "LLFQueueLong",
            f"sum by (server) (vllm:num_requests_waiting{{{vllm}}}) > {_num(opts.queue_waiting)}",
            opts.queue_for,
            "warning",
            "{{ $value }} requests waiting on {{ $labels.server }}",
            f"vllm:num_requests_waiting above {_num(opts.queue_waiting)} for {opts.queue_for}: the server "
            "cannot take more requests at once; add a server or lower the load.",
        ),
        _alert(
            "LLFKvCacheNearlyFull",
            f"max by (server) (vllm:kv_cache_usage_perc{{{vllm}}}) > {_num(opts.kv_cache_usage)}",
            opts.kv_cache_for,
            "warning",
            "KV cache of {{ $labels.server }} is {{ $value | humanizePercentage }} full",
            f"vllm:kv_cache_usage_perc (a fraction, 1 = full) above {_num(opts.kv_cache_usage)} for "
            f"{opts.kv_cache_for}: new requests wait and running ones may be preempted.",
        ),
        _alert(
            "LLFPreemptions",
            f"sum by (server) (rate(vllm:num_preemptions_total{{{vllm}}}[{opts.window}])) > 0",
            opts.preemption_for,
            "warning",
            "vLLM on {{ $labels.server }} preempts requests ({{ $value | humanize }}/s)",
            f"vllm:num_preemptions_total grew over {opts.window}: the KV cache ran out and requests were "
            "evicted and recomputed, which slows them; give the KV cache more memory or lower the concurrency.",
        ),
        _alert(
            "LLFModelDiskNearlyFull",
            f"node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}} < {_num(opts.disk_free)}",
            opts.disk_for,
            "warning",
            "{{ $labels.mountpoint }} on {{ $labels.server }} has {{ $value | humanizePercentage }} free",
            f"node exporter: the filesystem that can hold /var/lib/llf/models (mount points matching "
            f"{opts.disk_mountpoints}) has less than {_num(opts.disk_free * 100)} % free.",
        ),
        _alert(
            "LLFMemoryNearlyFull",
            f"node_memory_MemAvailable_bytes{{{node}}} / node_memory_MemTotal_bytes{{{node}}}"
            f" < {_num(opts.memory_free)}",
            opts.memory_for,
            "warning",
            "{{ $labels.server }} has {{ $value | humanizePercentage }} of its memory available",
            f"node exporter: MemAvailable below {_num(opts.memory_free * 100)} % of MemTotal for "
            f"{opts.memory_for}; the kernel's OOM killer picks vLLM's worker first.",
        ),
    ]


def rules(slo: Slo, opts: Options) -> dict[str, Any]:
    """The Prometheus rule file: one group for the SLO, one for the fleet."""
    slo_path = _display(slo.path)
    slo_rules = [a for a in (slo_alert(t, slo_path, opts) for t in slo.targets) if a is not None]
    return {
        "groups": [
            {"name": "llf-slo", "rules": slo_rules},
            {"name": "llf-fleet", "rules": fleet_alerts(opts)},
        ]
    }


def _display(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def render_rules(slo: Slo, opts: Options) -> str:
    skipped = [t.text for t in slo.targets if t.metric != "error_rate" and t.metric not in HISTOGRAMS]
    head = [
        f"# Generated by `python -m loadtests.alerts` (make alerts) from {_display(slo.path)}: do not edit.",
        "# Expects job=\"vllm\"/\"node\" targets labelled server=<inventory hostname> (README: Monitoring).",
    ]
    if skipped:
        head.append(f"# Not watched (measured by the client only): {', '.join(skipped)}")
    body = yaml.safe_dump(rules(slo, opts), sort_keys=False, width=1000, allow_unicode=True)
    return "\n".join(head) + "\n" + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.alerts",
        description="Generate Prometheus alert rules and the Grafana dashboard from an SLO file.",
    )
    parser.add_argument("--slo", default=str(DEFAULT_SLO), help="SLO file (default: %(default)s)")
    parser.add_argument("--rules", default=str(DEFAULT_RULES), help="rule file to write (default: %(default)s)")
    parser.add_argument(
        "--dashboard", default=str(DEFAULT_DASHBOARD), help="dashboard to write; '' for none (default: %(default)s)"
    )
    parser.add_argument("--for", dest="for_all", metavar="DURATION", help="set every for: at once (e.g. 30s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    defaults = Options()
    for f in fields(Options):
        kind = float if isinstance(getattr(defaults, f.name), float) else str
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=kind,
            default=getattr(defaults, f.name),
            help=f"{f.metadata['help']} (default: %(default)s)",
        )
    args = parser.parse_args(argv)
    try:
        opts = Options(**{f.name: getattr(args, f.name) for f in fields(Options)})
        if args.for_all:
            opts = opts.with_for(args.for_all)
        slo = load_slo(args.slo)
    except SloError as e:
        print(f"loadtests.alerts: {e}", file=sys.stderr)
        return 2
    from loadtests.dashboard import render_dashboard  # imports this module

    outputs = {Path(args.rules): render_rules(slo, opts)}
    if args.dashboard:
        outputs[Path(args.dashboard)] = render_dashboard(slo, opts)
    stale = []
    for path, text in outputs.items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"loadtests.alerts: out of date: {', '.join(stale)}; run `make alerts` and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

