"""The real deployment every end-to-end test shares.

`make install` runs once per session on this machine with the embedded default model,
exactly as a user runs it, except that the endpoints file goes to a temporary
LLF_CONFIG and llf_venv/ is reached through a symlink (VENV=...), so that the final
`make uninstall` removes the link rather than the venv pytest itself runs from.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, Server, record_figure

MODEL = "smollm2-135m-instruct"
# the local deploy serves the chat model alone on every core; tests/e2e/test_15_models.py
# adds the embedding model beside it (issue 11: several models per host) on the last core,
# naming the chat model's cores so that it keeps them (a model whose share of the cores
# changes restarts), and tests/e2e/test_85_model_removal.py takes it off the list again
EMBED_MODEL = "all-minilm-l6-v2"
_CORES = os.cpu_count() or 1
MODEL_CPUS = {MODEL: f"0-{_CORES - 1}" if _CORES > 1 else "0", EMBED_MODEL: str(_CORES - 1)}
TWO_MODELS = (f"MODELS={MODEL},{EMBED_MODEL}", "ARGS=-e '" + json.dumps({"llf_server_model_cpus": MODEL_CPUS}) + "'")
# LLF's supervisord, which runs the local deploy's programs (no systemd here)
SUPERVISORCTL = ["/opt/llf/supervisor/bin/supervisorctl", "-c", "/etc/llf/supervisord.conf"]

# the processes of one vLLM server, as the kernel names them (vLLM sets the titles): the
# model's worker runs inside the engine core's process (llf_server_inprocess_worker: auto)
VLLM_PROCESSES = {
    "API server": "vllm.entrypoints.openai.api_server",
    "VLLM::EngineCore": "^VLLM::EngineCore",
}
# the third process vLLM starts when the worker has a process of its own
VLLM_WORKER = "^VLLM::Worker"
# this machine's own processes only: test hosts' processes are visible here too
PGREP = ["pgrep", "--ns", str(os.getpid()), "--nslist", "pid", "-u", "llf", "-f"]


def oldest_pid(pattern: str) -> int | None:
    found = subprocess.run([*PGREP[:-1], "-o", "-f", pattern], capture_output=True, text=True, check=False)
    return int(found.stdout.split()[0]) if found.stdout.strip() else None


def served_total(address: str, port: int) -> float:
    """A vLLM server's vllm:request_success_total, read from its own /metrics."""
    text = requests.get(f"http://{address}:{port}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "vllm:request_success_total")


def server_answers(base_url: str, key: str | None, model: str = MODEL) -> bool:
    """A real (one-token) completion succeeds."""
    try:
        response = requests.post(
            f"{base_url}/completions",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            json={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
            timeout=10,
        )
    except requests.RequestException:
        return False
    return response.status_code == 200


INSTALL_TIMEOUT = 3600
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "llf.json"


def dashboard_queries(window: str) -> list[tuple[str, str]]:
    """(panel title, query) of every target of the dashboard, for all servers over `window`."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"].replace("$server", ".*").replace("$__rate_interval", window))
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def has_numbers(result: list[dict]) -> bool:
    """A Prometheus instant-query result with at least one value that is a number."""
    return any(series["value"][1] != "NaN" for series in result)

# the local deploy's Alertmanager sends its alerts here (make install ALERT_WEBHOOK=...)
LOCAL_WEBHOOK = ("127.0.0.1", 9798)


class AlertReceiver:
    """An Alertmanager webhook: keeps every notification it is sent."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(address, Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def statuses(self, alertname: str) -> set[str]:
        return {alert["status"] for message in self.received for alert in message["alerts"]
                if alert["labels"]["alertname"] == alertname}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class MakeResult:
    returncode: int
    output: str
    seconds: float


@dataclass
class Deployment:
    server: Server
    install: MakeResult
    env: dict[str, str]
    venv_link: Path
    endpoints_file: Path


class Harness:
    """Runs make targets the way a user does, in the shared test environment."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.venv_link = workdir / "llf_venv"
        self.endpoints_file = workdir / "config" / "endpoints.yml"
        self.env = dict(os.environ)
        self.env["LLF_CONFIG"] = str(self.endpoints_file)
        self.env["ANSIBLE_NOCOLOR"] = "1"
        self.env["ANSIBLE_FORCE_COLOR"] = "0"
        self.env.pop("MAKEFLAGS", None)
        self.env.pop("MAKELEVEL", None)
        self.link_venv()

    def link_venv(self) -> None:
        if not self.venv_link.is_symlink():
            self.venv_link.symlink_to(REPO / "llf_venv")

    def run(self, cmd: list[str], label: str, timeout: int) -> MakeResult:
        """Run a command in the shared environment, output and error merged."""
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, check=False)
        result = MakeResult(proc.returncode, proc.stdout, time.monotonic() - started)
        print(f"{label}: exit {proc.returncode} in {result.seconds:.1f} s")
        return result

    def playbook(self, name: str, inventory: Path, *args: str, timeout: int = INSTALL_TIMEOUT) -> MakeResult:
        """ansible-playbook from llf_venv, as the README shows for other inventories."""
        cmd = [str(REPO / "llf_venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
               str(REPO / "playbooks" / name), *args]
        return self.run(cmd, f"ansible-playbook {name} {' '.join(args)}", timeout)

    def make(self, *args: str, timeout: int = INSTALL_TIMEOUT) -> MakeResult:
        cmd = ["make", "--no-print-directory", "-C", str(REPO), f"VENV={self.venv_link}", *args]
        return self.run(cmd, f"make {' '.join(args)}", timeout)


def recap(output: str, host: str = "local") -> dict[str, int]:
    """The PLAY RECAP counters of one host."""
    lines = [line for line in output.splitlines() if line.startswith(host + " ") and "ok=" in line]
    assert lines, f"no PLAY RECAP in the output:\n{output[-3000:]}"
    counters = {}
    for field in lines[-1].split(":", 1)[1].split():
        key, _, value = field.partition("=")
        counters[key] = int(value)
    return counters


@pytest.fixture(scope="session")
def local_alerts():
    receiver = AlertReceiver(LOCAL_WEBHOOK)
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory, local_alerts: AlertReceiver) -> Harness:
    harness = Harness(tmp_path_factory.mktemp("llf-e2e"))
    # every local deploy of the tests is monitored (Prometheus and Alertmanager here too)
    harness.env["MONITORING"] = "1"
    harness.env["ALERT_WEBHOOK"] = local_alerts.url
    return harness


@pytest.fixture(scope="session")
def deployment(harness: Harness) -> Deployment:
    result = harness.make("install", f"MODEL={MODEL}")
    assert result.returncode == 0, f"make install failed:\n{result.output[-6000:]}"
    record_figure(f"fresh make install: {result.seconds:.1f} s")
    endpoints = yaml.safe_load(harness.endpoints_file.read_text(encoding="utf-8"))["endpoints"]
    first = endpoints[0]
    server = Server(base_url=first["base_url"], model=first["model"], api_key=first.get("api_key"))
    return Deployment(server, result, harness.env, harness.venv_link, harness.endpoints_file)
