"""The Grafana dashboard of an LLF fleet, generated with the alert rules (loadtests/alerts.py).

The SLO file's latency and error-rate limits are drawn as threshold lines, so the
dashboard and the rules cannot drift apart. Every query reads ``$server`` (the
``server`` label, one or more inventory hostnames) and ``$__rate_interval``.
"""

from __future__ import annotations

import json
from typing import Any

from loadtests.alerts import (
    GATEWAY_DRAINED,
    GATEWAY_UP,
    HISTOGRAMS,
    OPENAI_ROUTES,
    Options,
    _display,
    error_ratio_expr,
    latency_expr,
)
from loadtests.slo import Slo

UID = "llf-fleet"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
LIMIT_COLOURS = ("red", "dark-red", "purple")


def _num(value: float) -> str:
    return f"{value:g}"


class _Layout:
    """Places panels two to a row, 12 of Grafana's 24 columns each."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": len(self.panels) + 1,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.x = 0
            self.y += 8

    def add(self, panel: dict[str, Any], width: int = 12) -> None:
        if self.x + width > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": 8, "w": width, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += width
        if self.x >= 24:
            self._newline()


def _thresholds(limits: list[float], ok: str = "green") -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": ok, "value": None}]
    for i, limit in enumerate(sorted(set(limits))):
        steps.append({"color": LIMIT_COLOURS[min(i, len(LIMIT_COLOURS) - 1)], "value": limit})
    return {"mode": "absolute", "steps": steps}


def panel(
    title: str,
    queries: list[tuple[str, str]],
    unit: str,
    description: str,
    limits: list[float] | None = None,
    kind: str = "timeseries",
    below: bool = False,
) -> dict[str, Any]:
    """A panel of (PromQL, legend) queries; ``limits`` are drawn as red lines."""
    defaults: dict[str, Any] = {"unit": unit}
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 0,
            "showPoints": "never",
            "spanNulls": False,
            "thresholdsStyle": {"mode": "line" if limits else "off"},
        }
    if limits:
        defaults["thresholds"] = (
            # a floor (free memory, free disk): red below the limit
            {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": limits[0]}]}
            if below
            else _thresholds(limits)
        )
    out: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(queries)
        ],
    }
    if kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if kind == "state-timeline":
        defaults["mappings"] = [
            {"type": "value", "options": {"0": {"text": "out", "color": "red"}, "1": {"text": "in", "color": "green"}}}
        ]
        out["options"] = {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9}
    return out


def latency_panels(slo: Slo, sel: str) -> list[dict[str, Any]]:
    """One panel per vLLM latency histogram: p50 and the SLO's statistics, per server and fleet-wide."""
    panels = []
    for key in ("ttft", "itl", "e2el", "tpot"):
        metric, label = HISTOGRAMS[key]
        targets = [t for t in slo.targets if t.metric in HISTOGRAMS and HISTOGRAMS[t.metric][0] == metric]
        stats = ["p50"] + [t.stat for t in targets if t.stat != "p50"]
        if not targets and key != "tpot":
            stats.append("p95")
        stats = list(dict.fromkeys(stats))
        queries: list[tuple[str, str]] = []
        for stat in stats:
            queries.append((latency_expr(metric, stat, sel, RATE), f"{{{{server}}}} {stat}"))
            queries.append((latency_expr(metric, stat, sel, RATE, by=""), f"fleet {stat}"))
        slo_text = "; ".join(t.text for t in targets) or "no target in the SLO file"
        panels.append(
            panel(
                f"{label} ({', '.join(stats)}); SLO: {slo_text}",
                queries,
                "s",
                f"From vLLM's histogram {metric}; the red line is the SLO file's limit ({slo_text}).",
                limits=[t.limit / 1000.0 for t in targets],
            )
        )
    return panels


def dashboard(slo: Slo, opts: Options) -> dict[str, Any]:
    sel = f'job="{opts.vllm_job}",server=~"$server"'
    node = f'job="{opts.node_job}",server=~"$server"'
    nginx = f'job="{opts.nginx_job}"'
    gw = 'server=~"$server"'
    error_targets = [t.limit / 100.0 for t in slo.targets if t.metric == "error_rate"]
    lay = _Layout()

    lay.row("Fleet")
    lay.add(
        panel(
            "vLLM servers up",
            [(f"sum(up{{{sel}}})", "up"), (f"count(up{{{sel}}})", "scraped")],
            "short",
            "Servers whose /metrics Prometheus scrapes (up == 1) out of those it knows.",
            kind="stat",
        ),
        width=6,
    )
    lay.add(
        panel(
            "Servers in the gateway",
            [(f"sum({GATEWAY_UP}{{{gw}}})", "in"), (f"sum({GATEWAY_DRAINED}{{{gw}}})", "drained")],
            "short",
            f"{GATEWAY_UP}: 1 while the gateway's health checker sends the server requests; "
            f"{GATEWAY_DRAINED}: 1 while a rolling update drains it.",
            kind="stat",
        ),
        width=6,
    )
    lay.add(
        panel(
            "Error ratio (HTTP 5xx of the OpenAI routes)",
            [(error_ratio_expr(sel, RATE), "{{server}}"), (error_ratio_expr(sel, RATE, by=""), "fleet")],
            "percentunit",
            "vLLM's http_requests_total: 5xx answers over all answers of the OpenAI routes; "
            "the red line is the SLO file's error_rate.",
            limits=error_targets,
        )
    )

    lay.row("Latency (vLLM's histograms; red: the SLO file's limits)")
    for p in latency_panels(slo, sel):
        lay.add(p)

    lay.row("Load")
    lay.add(
        panel(
            "Tokens per second",
            [
                (f"sum by (server) (rate(vllm:prompt_tokens_total{{{sel}}}[{RATE}]))", "{{server}} in (prompt)"),
                (f"sum by (server) (rate(vllm:generation_tokens_total{{{sel}}}[{RATE}]))", "{{server}} out"),
            ],
            "short",
            "Prompt tokens prefilled and tokens generated per second (vllm:prompt_tokens_total, "
            "vllm:generation_tokens_total).",
        )
    )
    lay.add(
        panel(
            "Requests running and waiting",
            [
                (f"sum by (server) (vllm:num_requests_running{{{sel}}})", "{{server}} running"),
                (f"sum by (server) (vllm:num_requests_waiting{{{sel}}})", "{{server}} waiting"),
            ],
            "short",
            f"vLLM's scheduler: requests in a batch and requests queued; LLFQueueLong fires above "
            f"{_num(opts.queue_waiting)} waiting.",
            limits=[opts.queue_waiting],
        )
    )
    lay.add(
        panel(
            "KV cache usage",
            [(f"max by (server) (vllm:kv_cache_usage_perc{{{sel}}})", "{{server}}")],
            "percentunit",
            f"vllm:kv_cache_usage_perc (1 = full); LLFKvCacheNearlyFull fires above {_num(opts.kv_cache_usage)}.",
            limits=[opts.kv_cache_usage],
        )
    )
    lay.add(
        panel(
            "Finish reasons and preemptions",
            [
                (
                    f"sum by (finished_reason) (rate(vllm:request_success_total{{{sel}}}[{RATE}]))",
                    "{{finished_reason}}",
                ),
                (f"sum by (server) (rate(vllm:num_preemptions_total{{{sel}}}[{RATE}]))", "{{server}} preemptions"),
            ],
            "reqps",
            "vllm:request_success_total by finished_reason (stop, length, abort: the client went away, "
            "error: failed inside the engine, repetition) and vllm:num_preemptions_total.",
        )
    )
    lay.add(
        panel(
            "HTTP answers by status (servers)",
            [
                (
                    f"sum by (server, status) (rate(http_requests_total{{{sel},{OPENAI_ROUTES}}}[{RATE}]))",
                    "{{server}} {{status}}",
                )
            ],
            "reqps",
            "vLLM's http_requests_total of the OpenAI routes by status class (2xx, 4xx, 5xx).",
        )
    )

    lay.row("Gateway")
    lay.add(
        panel(
            "Upstream state (gateway health checker)",
            [(f"{GATEWAY_UP}{{{gw}}}", "{{server}}")],
            "short",
            f"{GATEWAY_UP}{{server}}: 1 in nginx's upstream, 0 out (failed /health or drained).",
            kind="state-timeline",
        )
    )
    lay.add(
        panel(
            "Gateway requests and connections (nginx stub_status)",
            [
                (f"sum(rate(nginx_http_requests_total{{{nginx}}}[{RATE}]))", "requests/s"),
                (f"sum(nginx_connections_active{{{nginx}}})", "active"),
                (f"sum(nginx_connections_reading{{{nginx}}})", "reading"),
                (f"sum(nginx_connections_writing{{{nginx}}})", "writing"),
                (f"sum(nginx_connections_waiting{{{nginx}}})", "waiting (keepalive)"),
                (f"min(nginx_up{{{nginx}}})", "nginx up"),
            ],
            "short",
            "Debian's prometheus-nginx-exporter reads nginx's stub_status, which counts requests and "
            "connections but no status codes: the gateway's own 401/429 are not visible here (its access log "
            "has them); the servers' 4xx/5xx are in 'HTTP answers by status'.",
        )
    )

    lay.row("Hosts (node exporter)")
    lay.add(
        panel(
            "CPU busy",
            [(f'1 - avg by (server) (rate(node_cpu_seconds_total{{{node},mode="idle"}}[{RATE}]))', "{{server}}")],
            "percentunit",
            "Share of all cores not idle.",
        ),
        width=8,
    )
    lay.add(
        panel(
            "Memory available",
            [
                (
                    f"min by (server) (node_memory_MemAvailable_bytes{{{node}}}"
                    f" / node_memory_MemTotal_bytes{{{node}}})",
                    "{{server}}",
                )
            ],
            "percentunit",
            f"MemAvailable / MemTotal; LLFMemoryNearlyFull fires below {_num(opts.memory_free)}.",
            limits=[opts.memory_free],
            below=True,
        ),
        width=8,
    )
    fs = f'{node},fstype!~"tmpfs|ramfs|squashfs|overlay",mountpoint=~"{opts.disk_mountpoints}"'
    lay.add(
        panel(
            "Model disk free",
            [
                (
                    f"node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}}",
                    "{{server}} {{mountpoint}}",
                )
            ],
            "percentunit",
            f"Free share of the filesystems that can hold /var/lib/llf/models; LLFModelDiskNearlyFull fires "
            f"below {_num(opts.disk_free)}.",
            limits=[opts.disk_free],
            below=True,
        ),
        width=8,
    )

    server_query = f'label_values(up{{job="{opts.vllm_job}"}}, server)'
    return {
        "uid": UID,
        "title": "LLF fleet",
        "description": f"Generated by `python -m loadtests.alerts` from {_display(slo.path)}: do not edit.",
        "tags": ["llf", "vllm"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "LLF Prometheus", "value": "llf-prometheus"},
                    "hide": 0,
                },
                {
                    "name": "server",
                    "label": "Server",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": server_query,
                    "query": {"query": server_query, "refId": "server"},
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": lay.panels,
    }


def render_dashboard(slo: Slo, opts: Options) -> str:
    return json.dumps(dashboard(slo, opts), indent=2, ensure_ascii=False) + "\n"
