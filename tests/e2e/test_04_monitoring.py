"""The local deploy's monitoring (`make install MONITORING=1`, as every local deploy of
the tests is): Debian's Prometheus, Alertmanager and node exporter under the server's
supervisord, on loopback, scraping the real server; the dashboard's panels have data;
the deliberate stop of the fault tests (test_03) reached the webhook as LLFServerDown.

The same under systemd, with a gateway and alerts resolving, runs on the test hosts
(test_95_lab.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import requests

from tests.conftest import record_figure
from tests.e2e.conftest import SUPERVISORCTL, AlertReceiver, Deployment, dashboard_queries, has_numbers

pytestmark = pytest.mark.e2e

PROMETHEUS = "http://127.0.0.1:9090/api/v1"
# what a machine without a gateway cannot show
GATEWAY_PANELS = {"Servers in the gateway", "Upstream state (gateway health checker)",
                  "Gateway requests and connections (nginx stub_status)"}


@pytest.fixture(scope="module")
def monitored(deployment: Deployment) -> Deployment:
    if os.path.exists("/run/systemd/system"):
        pytest.skip("systemd is PID 1 here: monitoring under systemd runs on the test hosts")
    return deployment


def query(expr: str) -> list[dict]:
    response = requests.get(f"{PROMETHEUS}/query", params={"query": expr}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]["result"]


def test_prometheus_scrapes_the_server_and_this_host(monitored: Deployment) -> None:
    targets = requests.get(f"{PROMETHEUS}/targets", params={"state": "active"}, timeout=30).json()["data"]
    up = sorted((t["labels"]["job"], t["labels"]["server"], t["health"]) for t in targets["activeTargets"])
    assert up == [("node", "local", "up"), ("vllm", "local", "up")], up
    # one request, seen by Prometheus as vLLM counts it
    before = sum(float(s["value"][1]) for s in query('vllm:request_success_total{job="vllm"}'))
    send_completion(monitored)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = sum(float(s["value"][1]) for s in query('vllm:request_success_total{job="vllm"}'))
        if after >= before + 1:
            break
        time.sleep(2)
    assert after >= before + 1
    record_figure(f"local Prometheus saw a request after {60 - (deadline - time.monotonic()):.0f} s")


def send_completion(server: Deployment) -> None:
    requests.post(f"{server.server.base_url}/completions", timeout=60,
                  headers={"Authorization": f"Bearer {server.server.api_key}"},
                  json={"model": server.server.model, "prompt": "Hello", "max_tokens": 4})


def test_every_panel_has_data_but_the_gateways(monitored: Deployment) -> None:
    # the panels draw rates, and a counter a restarted server creates at its first request
    # has none until Prometheus scrapes it again after another: traffic until it has one
    served = 'sum(rate(http_requests_total{job="vllm",handler=~"/v1/(chat/completions|completions)"}[10m])) > 0'
    deadline = time.monotonic() + 120
    while not has_numbers(query(served)) and time.monotonic() < deadline:
        send_completion(monitored)
        time.sleep(16)  # one scrape (15 s) later
    root = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "/"], capture_output=True, text=True, check=False)
    expected = GATEWAY_PANELS | ({"Model disk free"} if root.stdout.strip() in ("overlay", "") else set())
    empty = {title for title, expr in dashboard_queries("10m") if not has_numbers(query(expr))}
    assert empty == expected


def test_the_deliberate_stop_reached_the_webhook(monitored: Deployment, local_alerts: AlertReceiver) -> None:
    # the fault tests stopped the server for minutes (LLFServerDown: 1 min); Alertmanager
    # waits 30 s for more of the group, so the first message may already say "resolved":
    # either way the alert fired and reached the receiver
    deadline = time.monotonic() + 120
    while not local_alerts.statuses("LLFServerDown") and time.monotonic() < deadline:
        time.sleep(2)
    assert local_alerts.statuses("LLFServerDown") & {"firing", "resolved"}, local_alerts.received[-3:]
    alert = next(a for m in local_alerts.received for a in m["alerts"] if a["labels"]["alertname"] == "LLFServerDown")
    assert alert["labels"]["server"] == "local" and alert["startsAt"]
    record_figure(f"local Alertmanager sent LLFServerDown: {sorted(local_alerts.statuses('LLFServerDown'))}")


def test_prometheus_listens_on_loopback_and_comes_back_when_killed(monitored: Deployment) -> None:
    others = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    for address in [a for a in others if ":" not in a][:1]:
        for port in (9090, 9093, 9100):
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
                pass
    pid = subprocess.run([*SUPERVISORCTL, "pid", "llf-prometheus"], capture_output=True, text=True,
                         check=True).stdout.strip()
    os.kill(int(pid), 9)
    killed = time.monotonic()
    deadline = killed + 60
    while time.monotonic() < deadline:
        try:
            if requests.get("http://127.0.0.1:9090/-/ready", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    assert requests.get("http://127.0.0.1:9090/-/ready", timeout=5).status_code == 200
    record_figure(f"supervisor: kill -9 of Prometheus until ready again: {time.monotonic() - killed:.1f} s")
