"""The gateway's routing by model: the njs router alone (njs's CLI), then the role's
nginx site for real (a private nginx on loopback, the role's templates rendered, the
health checker's upstreams) in front of two fake servers. nginx, its njs module and
njs's CLI come from `make tools` (Debian's packages extracted into .cache/tools/nginx,
never installed), else from the system; without either the tests skip, or fail when
the environment sets CI."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import requests

from tests.conftest import REPO, load_script

ROLE = REPO / "roles" / "llf_gateway"
FETCHED = REPO / ".cache" / "tools" / "nginx"  # `make tools`
JS_MODULE = Path("usr/lib/nginx/modules/ngx_http_js_module.so")
MIME_TYPES = Path("etc/nginx/mime.types")
gateway_health = load_script(ROLE / "files" / "llf_gateway_health.py")

SERVERS_KEY = "servers-key-0123456789"
CLIENT_KEY = "client-key-0123456789"
TINY_KEY = "tiny-key-0123456789ab"  # one request a minute


# --- nginx and njs: `make tools`' extraction, else the system's -----------------------

def missing(what: str) -> NoReturn:
    message = (f"{what} not found: run `make tools` (extracts Debian's nginx, libnginx-mod-http-js and njs "
               "into .cache/tools/nginx) or install those packages")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def nginx_tree() -> tuple[str, Path]:
    """nginx's binary and the root its njs module and mime.types are under: the
    extracted packages' (one build: the module must match the binary), else the system's."""
    if all((FETCHED / path).exists() for path in ("usr/sbin/nginx", JS_MODULE, MIME_TYPES)):
        return str(FETCHED / "usr" / "sbin" / "nginx"), FETCHED
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not all(Path(path).exists() for path in (nginx, "/" / JS_MODULE, "/" / MIME_TYPES)):
        missing("nginx, its njs module or mime.types")
    return nginx, Path("/")


# --- the router's decisions (njs CLI) -------------------------------------------------

def njs_choose(cases: list[tuple[str, str | None, list[str]]]) -> list[dict[str, Any]]:
    fetched = FETCHED / "usr" / "bin" / "njs"
    njs = str(fetched) if fetched.exists() else shutil.which("njs")
    if njs is None:
        missing("njs's CLI")
    script = (
        "import route from 'llf_gateway_route.js';\n"
        f"const cases = {json.dumps(cases)};\n"
        "console.log(JSON.stringify(cases.map(c => route.choose(c[0], c[1], c[2]))));\n"
    )
    proc = subprocess.run([njs, "-p", str(ROLE / "files"), "-"], input=script, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return [{**c, "body": json.loads(c["body"])} if "body" in c else c for c in json.loads(proc.stdout)]


def openai_error(status: int, message: str, kind: str, param: str | None) -> dict[str, Any]:
    return {"status": status, "body": {"error": {"message": message, "type": kind, "param": param, "code": status}}}


def test_router_picks_the_upstream_the_health_checker_names() -> None:
    name = "Qwen/Qwen2.5 é"
    assert njs_choose([("POST", json.dumps({"model": name, "messages": []}), ["other", name])]) == [
        {"upstream": gateway_health.upstream_name(name)}
    ]


def test_router_answers_what_it_cannot_route_as_openai_does() -> None:
    models = ["smollm2"]
    assert njs_choose([
        ("POST", '{"model": "gpt-4"}', models),
        ("POST", '{"messages": []}', models),
        ("POST", '{"model": 3}', models),
        ("POST", "not json", models),
        ("POST", "[1]", models),
        ("POST", None, models),
        ("GET", None, models),
    ]) == [
        openai_error(404, "The model `gpt-4` does not exist.", "NotFoundError", "model"),
        openai_error(404, 'The request names no model: set "model" to one that GET /v1/models lists.',
                     "NotFoundError", "model"),
        openai_error(404, 'The request names no model: set "model" to one that GET /v1/models lists.',
                     "NotFoundError", "model"),
        openai_error(400, 'The request body is not JSON: send a JSON object with "model"', "BadRequestError", None),
        openai_error(400, 'The request body is not a JSON object: send one with "model"', "BadRequestError", None),
        openai_error(400, 'The request body is not JSON: send a JSON object with "model"', "BadRequestError", None),
        openai_error(405, "Method GET is not allowed here: send a POST with a JSON body", "MethodNotAllowed", None),
    ]


# --- the role's nginx site, for real ----------------------------------------------------

def render_site(variables: dict[str, Any]) -> dict[str, str]:
    """The role's nginx templates as Ansible renders them (trim_blocks)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["comment"] = lambda text: f"# {text}"
    env.filters["regex_escape"] = re.escape
    return {name: env.get_template(f"{name}.j2").render(ansible_managed="managed", **variables)
            for name in ("llf-gateway.conf", "llf-gateway-keys.conf")}


@dataclass
class Gateway:
    url: str
    ca: str
    prefix: Path
    web_ports: list[int] | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(prefix: Path, backends: list[dict[str, Any]], clients: list[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> tuple[subprocess.Popen[bytes], Gateway]:
    """A private nginx on loopback with the role's site; the caller stops it."""
    nginx_binary, root = nginx_tree()
    for sub in ("conf", "state", "tls", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)
    tls = prefix / "tls"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(tls / "gateway.key"),
                    "-out", str(tls / "gateway.crt")], capture_output=True, check=True, timeout=60)
    shutil.copy(ROLE / "files" / "llf_gateway_route.js", prefix / "llf_gateway_route.js")
    config = {"backends": backends, "upstream_file": str(prefix / "state" / "upstream.conf"),
              "models_file": str(prefix / "state" / "models.json"), "drain_dir": str(prefix / "drain"), "timeout": 2}
    (prefix / "backends.json").write_text(json.dumps(config))
    gateway_health.check_once(gateway_health.read_config(prefix / "backends.json"))
    port = free_port()
    site = render_site({
        "llf_gateway_state_dir": str(prefix / "state"), "llf_gateway_config_dir": str(prefix),
        "llf_gateway_listen": "127.0.0.1", "llf_gateway_port": port, "llf_gateway_status_port": free_port(),
        "llf_gateway_read_timeout": 60, "llf_gateway_requests_per_minute": 600, "llf_gateway_concurrency": 16,
        "llf_gateway_allowed_paths": ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings"],
        "__llf_gateway_clients_effective": clients, "__llf_gateway_server_key": SERVERS_KEY,
        "llf_gateway_web_apps": [], "llf_gateway_web_max_body": "1m", **(extra or {}),
    })
    for name, text in site.items():
        text = text.replace("/var/log/nginx/", f"{prefix}/logs/")
        (prefix / "conf" / name).write_text(text)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"{kind}_temp_path {prefix}/tmp/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "conf" / "nginx.conf").write_text(
        f"load_module {root / JS_MODULE};\n{user}worker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/logs/error.log info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n include {root / MIME_TYPES};\n access_log off;\n{temp}"
        f" include {prefix}/conf/llf-gateway-keys.conf;\n include {prefix}/conf/llf-gateway.conf;\n}}\n"
    )
    command = [nginx_binary, "-p", str(prefix), "-c", str(prefix / "conf" / "nginx.conf"), "-g", "daemon off;"]
    check = subprocess.run([*command[:-2], "-t", "-q"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen(command, stderr=subprocess.PIPE)
    gateway = Gateway(f"https://127.0.0.1:{port}", str(tls / "gateway.crt"), prefix)
    gateway.web_ports = [app["port"] for app in (extra or {}).get("llf_gateway_web_apps", [])]
    deadline = time.monotonic() + 10
    while True:
        try:
            requests.get(f"{gateway.url}/health", verify=gateway.ca, timeout=2)
            return nginx, gateway
        except requests.ConnectionError:
            if nginx.poll() is not None or time.monotonic() > deadline:
                nginx.kill()
                raise AssertionError(f"nginx did not start: {nginx.communicate()[1].decode()}") from None
            time.sleep(0.05)


def reply_json(handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
    """A fake server's 200 with a JSON body."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class FakeServer(http.server.BaseHTTPRequestHandler):
    """A vLLM stand-in: /health, and every POST echoed back (streamed when asked)."""

    protocol_version = "HTTP/1.1"
    name = ""
    release = threading.Event()  # a stream's last events wait for it

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        echo = {"server": self.name, "path": self.path, "authorization": self.headers["Authorization"],
                "body": body.decode("utf-8")}
        if json.loads(body).get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index in range(3):
                chunk = f"data: {json.dumps({**echo, 'index': index})}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
                if index == 0:
                    FakeServer.release.wait(20)
            self.wfile.write(b"0\r\n\r\n")
            return
        reply_json(self, json.dumps(echo).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_servers() -> Iterator[dict[str, int]]:
    """Two fake servers, a and b: their ports."""
    started = {}
    for name in ("a", "b"):
        handler = type(f"Fake{name}", (FakeServer,), {"name": name})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started[name] = httpd
    yield {name: httpd.server_address[1] for name, httpd in started.items()}
    for httpd in started.values():
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake_servers: dict[str, int]) -> Iterator[Gateway]:
    """Host a serves chat (main) and minilm (embeddings); host b serves chat only."""
    backends = [
        {"name": "host-a", "address": "127.0.0.1", "models": [
            {"name": "smollm2-135m-instruct", "served_name": "chat", "kind": "chat", "port": fake_servers["a"],
             "max_model_len": 8192},
            {"name": "all-minilm-l6-v2", "served_name": "minilm", "kind": "embedding", "port": fake_servers["b"],
             "max_model_len": 512}]},
    ]
    clients = [{"name": "tester", "key": CLIENT_KEY}, {"name": "tiny", "key": TINY_KEY, "requests_per_minute": 1}]
    nginx, gw = start_gateway(tmp_path_factory.mktemp("gw"), backends, clients)
    yield gw
    nginx.terminate()
    nginx.wait(timeout=10)


def post(gw: Gateway, path: str, payload: dict[str, Any], key: str = CLIENT_KEY, **kwargs: Any) -> requests.Response:
    return requests.post(f"{gw.url}{path}", headers={"Authorization": f"Bearer {key}"}, json=payload,
                         verify=gw.ca, timeout=10, **kwargs)


def test_gateway_routes_each_request_to_its_models_server(gateway: Gateway) -> None:
    chat = {"model": "chat", "messages": [{"role": "user", "content": "Grüße, 世界"}]}
    answer = post(gateway, "/v1/chat/completions", chat)
    assert answer.status_code == 200, answer.text
    echo = answer.json()
    assert echo["server"] == "a" and echo["path"] == "/v1/chat/completions"
    assert json.loads(echo["body"]) == chat  # the body reached the server intact
    assert echo["authorization"] == f"Bearer {SERVERS_KEY}"  # the servers' key, not the client's
    embedded = post(gateway, "/v1/embeddings", {"model": "minilm", "input": "hi"}).json()
    assert (embedded["server"], embedded["path"]) == ("b", "/v1/embeddings")
    assert post(gateway, "/v1/completions", {"model": "chat", "prompt": "x"}).json()["server"] == "a"
    # a long prompt (about 2 MB, well past nginx's default body buffer) arrives whole
    long = {"model": "minilm", "input": ["ä" * 1000 + str(n) for n in range(1000)]}
    assert json.loads(post(gateway, "/v1/embeddings", long).json()["body"]) == long


def test_gateway_streams_unbuffered(gateway: Gateway) -> None:
    FakeServer.release.clear()
    # the server holds its last events until the client has the first: a buffering
    # gateway would hold that one too, and the read would time out
    with post(gateway, "/v1/chat/completions", {"model": "chat", "stream": True}, stream=True) as answer:
        assert answer.headers["X-Accel-Buffering"] == "no"
        lines = answer.iter_lines()
        first = next(line for line in lines if line)
        FakeServer.release.set()
        rest = [line for line in lines if line]
    assert json.loads(first.removeprefix(b"data: "))["index"] == 0
    assert [json.loads(line.removeprefix(b"data: "))["index"] for line in rest] == [1, 2]


def test_gateway_answers_for_models_it_does_not_serve(gateway: Gateway) -> None:
    unknown = post(gateway, "/v1/chat/completions", {"model": "gpt-4", "messages": []})
    assert unknown.status_code == 404
    assert unknown.json() == {"error": {"message": "The model `gpt-4` does not exist.", "type": "NotFoundError",
                                        "param": "model", "code": 404}}
    assert post(gateway, "/v1/embeddings", {"input": "no model"}).status_code == 404


def test_gateway_lists_the_fleets_models_itself(gateway: Gateway) -> None:
    url = f"{gateway.url}/v1/models"
    listed = requests.get(url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, verify=gateway.ca, timeout=30)
    assert listed.status_code == 200
    assert listed.headers["Content-Type"] == "application/json"
    assert [(m["id"], m["object"], m["owned_by"], m["max_model_len"]) for m in listed.json()["data"]] == [
        ("chat", "model", "vllm", 8192), ("minilm", "model", "vllm", 512)]


def test_gateway_checks_the_key_before_routing(gateway: Gateway) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        refused = post(gateway, path, {"model": "chat"}, key="not-the-key-at-all")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {SERVERS_KEY}"},
                        verify=gateway.ca, timeout=30).status_code == 401
    assert post(gateway, "/tokenize", {"model": "chat"}).status_code == 404


def test_gateway_limits_a_client_before_routing(gateway: Gateway) -> None:
    assert post(gateway, "/v1/embeddings", {"model": "minilm", "input": "x"}, key=TINY_KEY).status_code == 200
    limited = post(gateway, "/v1/embeddings", {"model": "unknown-too", "input": "x"}, key=TINY_KEY)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "60"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


# --- the backends the preflight works out (filter_plugins/llf_gateway_backends.py) ------

backends_filter = load_script(ROLE / "filter_plugins" / "llf_gateway_backends.py")


def server_models(port: int) -> list[dict[str, Any]]:
    """A server's llf_server_models as llf_server's preflight sets it (keys the gateway ignores too)."""
    return [
        {"name": "smollm2-135m-instruct", "served_name": "smollm2", "kind": "chat", "port": port,
         "max_model_len": None, "service": "llf-vllm", "url": f"http://h:{port}/v1", "model": {"memory_gb": 1}},
        {"name": "all-minilm-l6-v2", "served_name": "minilm", "kind": "embedding", "port": port + 6,
         "max_model_len": 512, "service": "llf-vllm-all-minilm-l6-v2"},
    ]


def test_backends_come_from_each_servers_models() -> None:
    servers = [{"name": "s1", "address": "10.0.0.1", "port": 8000, "models": server_models(8000),
                "main_served_name": "ignored"}]
    assert backends_filter.llf_gateway_backends(servers, "") == [{"name": "s1", "address": "10.0.0.1", "models": [
        {"name": "smollm2-135m-instruct", "served_name": "smollm2", "kind": "chat", "port": 8000,
         "max_model_len": None},
        {"name": "all-minilm-l6-v2", "served_name": "minilm", "kind": "embedding", "port": 8006, "max_model_len": 512},
    ]}]


def test_servers_this_run_did_not_check_keep_what_the_gateway_has() -> None:
    """A deploy --limit-ed to the gateway: s1 keeps its models from backends.json, s2 (new
    to the gateway) gets its main model at llf_server_port."""
    checked = [{"name": "s1", "address": "10.0.0.1", "port": 8000, "models": server_models(8000),
                "main_served_name": "smollm2"}]
    stored = json.dumps({"backends": backends_filter.llf_gateway_backends(checked, ""), "upstream_file": "/u",
                         "drain_dir": "/d"})
    unchecked = [{"name": "s1", "address": "10.0.0.1", "port": 8000, "models": None, "main_served_name": "smollm2"},
                 {"name": "s2", "address": "10.0.0.2", "port": 9000, "models": None, "main_served_name": "qwen"}]
    backends = backends_filter.llf_gateway_backends(unchecked, stored)
    assert backends[0] == backends_filter.llf_gateway_backends(checked, "")[0]
    assert backends[1] == {"name": "s2", "address": "10.0.0.2", "models": [
        {"name": "qwen", "served_name": "qwen", "kind": "chat", "port": 9000, "max_model_len": None}]}
    # the gateway's file before routing by model (no models per backend): the same fallback
    old = json.dumps({"upstream": "llf_vllm", "backends": [{"name": "s1", "address": "10.0.0.1", "port": 8000}],
                      "upstream_file": "/u", "drain_dir": "/d"})
    assert backends_filter.llf_gateway_backends(unchecked[:1], old)[0]["models"] == [
        {"name": "smollm2", "served_name": "smollm2", "kind": "chat", "port": 8000, "max_model_len": None}]
    assert backends_filter.FilterModule().filters()["llf_gateway_backends"] is backends_filter.llf_gateway_backends


# --- web applications (Open WebUI) over the gateway's TLS -------------------------------

class FakeWebApp(http.server.BaseHTTPRequestHandler):
    """An Open WebUI stand-in: answers every GET with the headers that reached it."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        data = json.dumps({"path": self.path, "upgrade": self.headers["Upgrade"],
                           "connection": self.headers["Connection"], "host": self.headers["Host"],
                           "proto": self.headers["X-Forwarded-Proto"],
                           "authorization": self.headers["Authorization"]}).encode()
        reply_json(self, data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_web_app_is_served_over_tls_on_its_own_port_with_websocket_upgrades(
        tmp_path: Path, fake_servers: dict[str, int]) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeWebApp)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    web_port = free_port()
    backends = [{"name": "host-a", "address": "127.0.0.1", "models": [
        {"name": "smollm2-135m-instruct", "served_name": "chat", "kind": "chat", "port": fake_servers["a"],
         "max_model_len": 8192}]}]
    apps = [{"name": "webui", "port": web_port, "backend": f"127.0.0.1:{httpd.server_address[1]}"}]
    nginx, gw = start_gateway(tmp_path, backends, [{"name": "tester", "key": CLIENT_KEY}],
                              {"llf_gateway_web_apps": apps})
    try:
        web = f"https://127.0.0.1:{web_port}"
        # no client key: the application signs its users in itself
        page = requests.get(f"{web}/c/123?x=1", verify=gw.ca, timeout=10)
        assert page.status_code == 200
        assert page.json() == {"path": "/c/123?x=1", "upgrade": None, "connection": "close",
                               "host": f"127.0.0.1:{web_port}", "proto": "https", "authorization": None}
        # a websocket handshake goes through with its Upgrade (Socket.IO's /ws/socket.io/)
        upgrade = requests.get(f"{web}/ws/socket.io/?EIO=4&transport=websocket", verify=gw.ca, timeout=10,
                               headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        assert upgrade.json()["upgrade"] == "websocket" and upgrade.json()["connection"] == "upgrade"
        # the API port is unchanged: the application's paths are not served there
        assert requests.get(f"{gw.url}/c/123", verify=gw.ca, timeout=10).status_code == 404
        # uploads up to llf_gateway_web_max_body (1m here), then nginx's 413
        assert requests.post(f"{web}/api/v1/files/", data=b"x" * (2 << 20), verify=gw.ca,
                             timeout=10).status_code == 413
    finally:
        nginx.terminate()
        nginx.wait(10)
        httpd.shutdown()
        httpd.server_close()
