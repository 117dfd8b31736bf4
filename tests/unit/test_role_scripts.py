"""The readiness wait and the gateway's health checker, against local HTTP servers."""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, load_script

wait_health = load_script(REPO / "roles/llf_server/files/llf_wait_health.py")
gateway_health = load_script(REPO / "roles/llf_gateway/files/llf_gateway_health.py")


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", httpd.server_address[1]
    httpd.shutdown()


def free_port() -> int:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    port = httpd.server_address[1]
    httpd.server_close()
    return port


# --- llf_wait_health ------------------------------------------------------------

def test_wait_returns_when_health_answers(server: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    host, port = server
    assert wait_health.main([f"http://{host}:{port}/health", "30"]) == 0
    assert "answered 200" in capsys.readouterr().out


def test_wait_fails_fast_when_the_service_gave_up(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    status = [sys.executable, "-c", "print('llf-vllm  FATAL  Exited too quickly')"]
    assert wait_health.main([url, "600", "--", *status]) == 1
    assert re.search(r"the service stopped trying after \d+ s, before ", capsys.readouterr().err)


def states(tmp_path: Path, *outputs: str) -> list[str]:
    """A status command that prints the given outputs one per call (then the last one again)."""
    script = tmp_path / "status.py"
    counter = tmp_path / "calls"
    script.write_text(
        "import pathlib, sys\n"
        f"outputs = {list(outputs)!r}\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "n = int(counter.read_text()) if counter.exists() else 0\n"
        "counter.write_text(str(n + 1))\n"
        "print(outputs[min(n, len(outputs) - 1)])\n"
    )
    return [sys.executable, str(script)]


@pytest.mark.parametrize(
    "outputs",
    [
        ("llf-vllm  STARTING", "llf-vllm  RUNNING   pid 101, uptime 0:00:12",
         "llf-vllm  RUNNING   pid 202, uptime 0:00:01"),
        ("ActiveState=activating\nNRestarts=0", "ActiveState=activating\nNRestarts=1"),
    ],
    ids=["supervisor-new-pid", "systemd-restart-count"],
)
def test_wait_fails_fast_when_the_start_crash_loops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], outputs: tuple[str, ...]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    assert wait_health.wait(url, 600, states(tmp_path, *outputs), interval=0.01) == 1
    assert "exited while starting and was started again" in capsys.readouterr().err


def test_wait_keeps_waiting_while_the_same_start_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    command = states(tmp_path, "ActiveState=activating\nNRestarts=0")
    assert wait_health.wait(url, 0.3, command, interval=0.05) == 1
    assert "did not answer 200 within" in capsys.readouterr().err


def test_wait_fails_fast_on_backoff_and_failed(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    for name, output in [("supervisor", "llf-vllm  BACKOFF  Exited too quickly"), ("systemd", "ActiveState=failed")]:
        (tmp_path / name).mkdir()
        assert wait_health.wait(url, 600, states(tmp_path / name, output), interval=0.01) == 1


def test_wait_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    assert wait_health.wait(url, 0.2, [sys.executable, "-c", "print('STARTING')"], interval=0.05) == 1
    assert "did not answer 200 within 0 s" in capsys.readouterr().err


def test_wait_usage() -> None:
    assert wait_health.main([]) == 2


# --- llf_gateway_health ---------------------------------------------------------

def config(tmp_path: Path, backends: list[dict]) -> Path:
    """backends.json; a backend given with a port (no models) serves model m on it."""
    for backend in backends:
        if "port" in backend:
            backend["models"] = [{"name": "m", "served_name": "m", "port": backend.pop("port")}]
    path = tmp_path / "backends.json"
    path.write_text(json.dumps({
        "backends": backends, "upstream_file": str(tmp_path / "upstream.conf"),
        "models_file": str(tmp_path / "models.json"),
        "drain_dir": str(tmp_path / "drain"), "timeout": 2, "metrics_file": str(tmp_path / "gateway.prom"),
        "reload_command": [sys.executable, "-c", f"open({str(tmp_path / 'reloads')!r}, 'a').write('x')"],
    }))
    (tmp_path / "drain").mkdir(exist_ok=True)
    return path


def reloads(tmp_path: Path) -> int:
    path = tmp_path / "reloads"
    return len(path.read_text()) if path.exists() else 0


def upstreams(tmp_path: Path) -> dict[str, list[str]]:
    """The upstream file: upstream name -> its server lines."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in (tmp_path / "upstream.conf").read_text().splitlines():
        if line.startswith("upstream "):
            current = line.split()[1]
            found[current] = []
        elif line.strip().startswith("server "):
            found[current].append(line.strip())
    return found


def test_gateway_marks_failing_and_drained_servers_down(server: tuple[str, int], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    host, port = server
    dead = free_port()
    path = config(tmp_path, [{"name": "a", "address": host, "port": port},
                             {"name": "b", "address": host, "port": dead},
                             {"name": "c", "address": host, "port": port}])
    assert gateway_health.main(["--config", str(path), "--once"]) == 0
    upstream = (tmp_path / "upstream.conf").read_text()
    assert "least_conn;" in upstream
    assert f"server {host}:{port} max_fails=1 fail_timeout=10s;  # a" in upstream
    assert f"server {host}:{dead} max_fails=1 fail_timeout=10s down;  # b" in upstream
    assert reloads(tmp_path) == 1
    # nothing changed: no rewrite, no reload
    assert gateway_health.check_once(gateway_health.read_config(path)) is False
    assert reloads(tmp_path) == 1
    # a rolling update drains c
    (tmp_path / "drain" / "c").write_text("")
    assert gateway_health.check_once(gateway_health.read_config(path)) is True
    upstream = (tmp_path / "upstream.conf").read_text()
    assert f"server {host}:{port} max_fails=1 fail_timeout=10s down;  # c drained" in upstream
    assert "a=up, b=down, c=drained" in capsys.readouterr().out
    # what it saw, as node exporter's textfile collector reads it
    families = {f.name: f for f in text_string_to_metric_families((tmp_path / "gateway.prom").read_text())}
    up = {s.labels["server"]: s.value for s in families["llf_gateway_backend_up"].samples}
    drained = {s.labels["server"]: s.value for s in families["llf_gateway_backend_drained"].samples}
    assert up == {"a": 1, "b": 0, "c": 1} and drained == {"a": 0, "b": 0, "c": 1}
    checked = families["llf_gateway_health_check_timestamp_seconds"].samples[0].value
    assert abs(checked - time.time()) < 600


def test_gateway_writes_an_upstream_per_model(server: tuple[str, int], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two servers: both serve the chat model, one also the embedding model on a port that
    does not answer; a drain takes a server out of every model's upstream."""
    host, port = server
    dead = free_port()
    chat = {"name": "smollm2-135m-instruct", "served_name": "smollm2", "kind": "chat", "port": port,
            "max_model_len": 4096}
    path = config(tmp_path, [
        {"name": "a", "address": host, "models": [chat, {"name": "all-minilm-l6-v2", "served_name": "minilm/é",
                                                           "kind": "embedding", "port": dead, "max_model_len": 512}]},
        {"name": "b", "address": "127.0.0.2", "models": [{**chat, "max_model_len": 2048}]},
    ])
    gateway_health.check_once(gateway_health.read_config(path))
    chat_up, embed_up = gateway_health.upstream_name("smollm2"), gateway_health.upstream_name("minilm/é")
    assert embed_up == "llf_model_" + "minilm/é".encode().hex()
    flags = "max_fails=1 fail_timeout=10s"
    assert upstreams(tmp_path) == {
        # b does not answer (nothing listens on 127.0.0.2) while a does: b is out
        chat_up: [f"server {host}:{port} {flags};  # a", f"server 127.0.0.2:{port} {flags} down;  # b"],
        # the embedding model's only server does not answer: kept in, nginx tries it
        embed_up: [f"server {host}:{dead} {flags};  # a"],
    }
    assert f"a=down, a:{port}=up, a:{dead}=down, b=down" in capsys.readouterr().out
    # GET /v1/models: every model once, the smallest context length of its servers
    listed = json.loads((tmp_path / "models.json").read_text())
    created = int(path.stat().st_mtime)
    assert listed == {"object": "list", "data": [
        {"id": "smollm2", "object": "model", "created": created, "owned_by": "vllm", "max_model_len": 2048},
        {"id": "minilm/é", "object": "model", "created": created, "owned_by": "vllm", "max_model_len": 512},
    ]}
    families = {f.name: f for f in text_string_to_metric_families((tmp_path / "gateway.prom").read_text())}
    models_up = {(s.labels["server"], s.labels["model"]): s.value for s in families["llf_gateway_model_up"].samples}
    assert models_up == {("a", "smollm2"): 1, ("a", "minilm/é"): 0, ("b", "smollm2"): 0}
    # a drain is per server: a is down in both of its models' upstreams (b, failing, is
    # then the chat model's only hope: kept in)
    (tmp_path / "drain" / "a").write_text("")
    gateway_health.check_once(gateway_health.read_config(path))
    assert upstreams(tmp_path) == {
        chat_up: [f"server {host}:{port} {flags} down;  # a drained", f"server 127.0.0.2:{port} {flags};  # b"],
        embed_up: [f"server {host}:{dead} {flags} down;  # a drained"],
    }


@pytest.mark.parametrize(("data", "message"), [
    ([], "an object with a list of backends"),
    ({"backends": [], "drain_dir": "/d"}, "needs upstream_file"),
    ({"backends": [{"name": "a"}], "upstream_file": "/u", "drain_dir": "/d"}, "needs a name and an address"),
    ({"backends": [{"name": "a", "address": "h", "port": 8000}], "upstream_file": "/u", "drain_dir": "/d"},
     "backend a needs a list of models"),
    ({"backends": [{"name": "a", "address": "h", "models": [{"served_name": "m", "port": "80"}]}],
      "upstream_file": "/u", "drain_dir": "/d"}, "needs a served_name and a port"),
])
def test_gateway_refuses_a_configuration_it_cannot_use(data: object, message: str) -> None:
    with pytest.raises(gateway_health.ConfigError, match=message):
        gateway_health.parse_config(data)


def test_gateway_names_a_bad_configuration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "backends.json"
    path.write_text('{"backends": "none"}')
    assert gateway_health.main(["--config", str(path), "--once"]) == 2
    assert capsys.readouterr().err == f"{path}: the configuration must be an object with a list of backends\n"


def test_gateway_metrics_quote_server_names() -> None:
    data = {"backends": [{"name": 'we"ird\\name\n', "address": "h", "models": [{"served_name": "m", "port": 1}]}]}
    text = gateway_health.render_metrics(data, {('we"ird\\name\n', 1): True}, set(), 0.0)
    (sample,) = next(f for f in text_string_to_metric_families(text) if f.name == "llf_gateway_backend_up").samples
    assert sample.labels == {"server": 'we"ird\\name\n'}


def test_gateway_keeps_servers_up_when_every_one_fails(tmp_path: Path) -> None:
    dead = free_port()
    path = config(tmp_path, [{"name": "a", "address": "127.0.0.1", "port": dead}])
    gateway_health.check_once(gateway_health.read_config(path))
    upstream = (tmp_path / "upstream.conf").read_text()
    assert f"server 127.0.0.1:{dead} max_fails=1 fail_timeout=10s;  # a" in upstream  # not down: no live one


def test_gateway_reports_a_failed_reload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, [{"name": "a", "address": "127.0.0.1", "port": free_port()}])
    data = gateway_health.read_config(path)
    data["reload_command"] = [sys.executable, "-c", "import sys; sys.exit('nginx: bad config')"]
    assert gateway_health.check_once(data) is True
    assert "nginx reload failed: nginx: bad config" in capsys.readouterr().err


def test_gateway_without_a_reload_command_only_writes_the_file(tmp_path: Path) -> None:
    path = config(tmp_path, [{"name": "a", "address": "127.0.0.1", "port": free_port()}])
    data = gateway_health.read_config(path)
    del data["reload_command"]  # the service: a systemd path unit reloads nginx
    assert gateway_health.check_once(data) is True
    assert "# a" in (tmp_path / "upstream.conf").read_text()
    assert reloads(tmp_path) == 0
    assert gateway_health.check_once(data) is False
