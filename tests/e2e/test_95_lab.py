"""Many hosts: two vLLM servers and a TLS gateway on real systemd hosts with no
internet (systemd-nspawn, `make testhosts-up`), a rolling update under load that
loses no request, the allowlist, the firewall, idempotence and uninstall. Before the
deploy, cheap preflight refusals: the example lab's published vault outside the test
hosts, and servers behind one gateway that would serve different models.
Also: a killed engine core the gateway routes around, named client keys with limits.
Before the uninstall, each role's Molecule scenario (converge, idempotence, verify) runs
on the deployed lab, the way a developer runs them (`make molecule ROLE=...`): the
scenarios' checks without a second set of hosts, engine installs and server starts.

Runs after the local deployment was uninstalled, so one machine never runs more
than the two lab servers.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, record_figure
from tests.e2e import webui
from tests.e2e.conftest import (
    EMBED_MODEL,
    MODEL,
    VLLM_PROCESSES,
    VLLM_WORKER,
    AlertReceiver,
    Harness,
    dashboard_queries,
    has_numbers,
    recap,
    served_total,
    server_answers,
)

pytestmark = pytest.mark.e2e

INVENTORY = REPO / "tests" / "testhosts" / "inventory"
UNINSTALLED_PATHS = (
    "/etc/llf",
    "/opt/llf",
    "/var/lib/llf",
    "/var/cache/llf",
    "/etc/nginx/conf.d/llf-gateway.conf",
    "/etc/nginx/conf.d/llf-gateway-keys.conf",
    "/var/log/nginx/llf-gateway.access.log",
    "/etc/systemd/system/llf-vllm.service",
    "/etc/systemd/system/llf-gateway-health.service",
    "/etc/systemd/system/llf-webui.service",
    "/etc/systemd/system/prometheus.service.d/llf.conf",
    "/etc/systemd/system/prometheus-node-exporter.service.d/llf.conf",
)
WEBHOOK_PORT = 9799  # the controller's alert receiver, on the test hosts' bridge


@dataclass
class Lab:
    servers: dict[str, str]  # name -> address
    gateway: str
    gateway_ip: str
    key: str  # the servers' own key, which no client holds
    client_key: str  # the lab-user client's key at the gateway
    ssh: list[str]
    controller_ip: str  # this machine on the hosts' bridge

    def run(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        address = self.gateway_ip if host == self.gateway else self.servers.get(host, host)
        return subprocess.run(
            [*self.ssh, f"root@{address}", command], capture_output=True, text=True, timeout=120, check=False
        )

    @property
    def gateway_url(self) -> str:
        return f"https://{self.gateway_ip}:8443"

    def ca(self, harness: Harness) -> str:
        return str(Path(harness.env["LLF_CONFIG"]).parent / f"gateway-{self.gateway}.pem")

    def controller_key(self, harness: Harness) -> str:
        """The controller's client key, which the deploy wrote to the endpoints file."""
        endpoints = yaml.safe_load(Path(harness.env["LLF_CONFIG"]).read_text())["endpoints"]
        return next(e["api_key"] for e in endpoints if e["name"] == f"{self.gateway}-gateway")

    def vllm_pids(self) -> dict[str, str]:
        """Each server's llf-vllm main PID and start time: a restart changes them."""
        show = "systemctl show -P MainPID llf-vllm; systemctl show -P ActiveEnterTimestampMonotonic llf-vllm"
        return {name: self.run(name, show).stdout.strip() for name in self.servers}


@pytest.fixture(scope="module")
def lab(harness: Harness) -> Lab:
    up = harness.make("testhosts-up", "N=3", timeout=1800)
    assert up.returncode == 0, up.output[-4000:]
    record_figure(f"testhosts-up N=3: {up.seconds:.1f} s")
    hosts = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]
    servers = {name: spec["ansible_host"] for name, spec in hosts["llf_servers"]["hosts"].items()}
    [(gateway, gw)] = hosts["llf_gateway"]["hosts"].items()
    # the generated inventory carries the lab's settings (tests/testhosts/lab-vars.yml) and a key
    generated = yaml.safe_load((INVENTORY / "group_vars" / "all" / "secrets.yml").read_text())
    key_file = gw["ansible_ssh_private_key_file"]
    # the hosts' keys as `make testhosts-up` recorded them from their disks: checked, never learnt
    known_hosts = re.search(r"UserKnownHostsFile=(\S+)", gw["ansible_ssh_common_args"])
    assert known_hosts and "StrictHostKeyChecking=yes" in gw["ansible_ssh_common_args"], gw
    assert Path(known_hosts.group(1)).read_text().count(f"{gw['ansible_host']},{gateway} ") >= 1
    ssh = [
        "ssh",
        "-i",
        key_file,
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts.group(1)}",
        "-o",
        "LogLevel=ERROR",
    ]
    try:
        yield Lab(servers, gateway, gw["ansible_host"], generated["llf_testhosts_api_key"],
                  generated["llf_testhosts_client_key"], ssh,
                  yaml.safe_load((INVENTORY / "group_vars" / "all" / "testhosts.yml").read_text())[
                      "llf_testhosts_controller_ip"])
    finally:
        down = harness.make("testhosts-down", timeout=600)
        assert down.returncode == 0, down.output[-3000:]


@pytest.fixture(scope="module")
def alerts(lab: Lab):
    receiver = AlertReceiver((lab.controller_ip, WEBHOOK_PORT))
    yield receiver
    receiver.close()


def monitoring_vars(harness: Harness) -> Path:
    """The lab's monitoring settings: Prometheus every 5 s, alerts after 10 s sent to the
    controller, and rules generated from the SLO file with a TTFT target no server meets."""
    where = harness.workdir / "monitoring"
    if not where.is_dir():
        where.mkdir()
        slo = (REPO / "loadtests" / "slo.yaml").read_text()
        tight = slo.replace("ttft_content p95 <= 500 ms", "ttft_content p95 <= 1 ms")
        assert tight != slo
        (where / "slo.yaml").write_text(tight)
        subprocess.run([str(REPO / "llf_venv/bin/python"), "-m", "loadtests.alerts", "--slo", str(where / "slo.yaml"),
                        "--rules", str(where / "rules.yml"), "--dashboard", "", "--for", "10s"],
                       cwd=REPO, check=True, timeout=60)
        settings = {
            "llf_monitoring_rules_file": str(where / "rules.yml"),
            "llf_monitoring_scrape_interval": "5s",
            "llf_monitoring_evaluation_interval": "5s",
            "llf_monitoring_alert_group_wait": "5s",
            "llf_monitoring_alert_group_interval": "10s",
            "llf_monitoring_alert_webhook_url": f"http://{{{{ llf_testhosts_controller_ip }}}}:{WEBHOOK_PORT}/alerts",
        }
        (where / "vars.json").write_text(json.dumps(settings))
    return where / "vars.json"


def deploy(harness: Harness, *args: str):
    return harness.playbook("deploy.yml", INVENTORY, "-e", f"@{monitoring_vars(harness)}", *args)


def prometheus(lab: Lab, path: str, **params: str) -> dict:
    """Prometheus' API on the gateway host, where it listens on loopback only."""
    data = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in params.items())
    out = lab.run(lab.gateway, f"curl -sS -G {data} http://127.0.0.1:9090/api/v1/{path}")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["data"]


def test_published_lab_vault_is_refused_outside_the_test_hosts(harness: Harness, tmp_path: Path) -> None:
    password = tmp_path / "vault-password"
    password.write_text("llf-lab-example\n")
    password.chmod(0o600)
    # even with the test lab's marker, hosts off the test hosts' network are refused
    result = harness.playbook(
        "deploy.yml", REPO / "inventories" / "lab", "--vault-password-file", str(password),
        "-e", "llf_testhosts_lab=true", "-e", "llf_testhosts_controller_ip=10.231.0.1", timeout=600)
    assert result.returncode != 0, result.output[-3000:]
    assert "would get the example lab's published secrets, which anyone can read" in result.output
    assert "group_vars/all/vault.yml opens with the published password llf-lab-example" in result.output
    assert "llf_server_api_key holds the published example value" in result.output
    assert "create your own vault" in result.output
    assert "PLAY [Check the LLF servers" not in result.output  # stopped before any host was contacted
    record_figure(f"published vault refused: {result.seconds:.1f} s")


def test_published_key_is_allowed_on_the_test_hosts(harness: Harness, lab: Lab) -> None:
    result = deploy(harness, "-e", "llf_server_api_key=change-me-to-a-long-random-key", "--tags", "llf_fleet_trust")
    assert result.returncode == 0, result.output[-3000:]
    for host in [*lab.servers, lab.gateway]:
        assert f"ok: [{host}]" in result.output.split("published vault outside the test hosts]", 1)[1]


def test_servers_that_would_serve_different_models_are_refused(harness: Harness, lab: Lab, tmp_path: Path) -> None:
    (first, _), (second, _) = sorted(lab.servers.items())
    other = "qwen2.5-coder-1.5b-instruct"
    override = tmp_path / "override.yml"  # a second inventory source: one host's own model
    override.write_text(yaml.safe_dump(
        {"all": {"children": {"llf_servers": {"hosts": {second: {"llf_model_list": [other, EMBED_MODEL]}}}}}}))
    result = deploy(harness, "-i", str(override))
    assert result.returncode != 0, result.output[-3000:]
    assert f"does not fit {second}:" not in result.output, result.output[-3000:]  # it fits: the refusal is the mix
    assert (
        f"The servers behind one gateway must serve one main model, but they would serve: {first}: {MODEL} "
        f"(asked for {MODEL}), {second}: {other} (asked for {other}). Set llf_model_name"
    ) in result.output
    assert "PLAY [Deploy" not in result.output
    for host in [*lab.servers, lab.gateway]:
        assert recap(result.output, host)["changed"] == 0
        untouched = lab.run(host, "test ! -e /etc/llf && test ! -e /opt/llf && test ! -e /var/lib/llf")
        assert untouched.returncode == 0, f"{host} was changed"
    record_figure(f"different models behind one gateway refused in preflight: {result.seconds:.1f} s")


def test_lab_deploys_two_servers_behind_the_gateway(harness: Harness, lab: Lab, alerts: AlertReceiver) -> None:
    # the endpoints file's directory exists (the user's, say /tmp): the deploy keeps its mode
    config_dir = Path(harness.env["LLF_CONFIG"]).parent
    config_dir.mkdir(exist_ok=True)
    config_dir.chmod(0o751)
    result = deploy(harness)
    assert result.returncode == 0, result.output[-8000:]
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o751
    for host in [*lab.servers, lab.gateway]:
        assert recap(result.output, host)["failed"] == 0
    record_figure(f"lab deploy (wheelhouse and model from the controller, 2 servers + gateway): {result.seconds:.1f} s")
    # no internet on the hosts: the route out goes nowhere
    probe = lab.run(next(iter(lab.servers.values())), "curl -sS -m 5 https://pypi.org/ >/dev/null")
    assert probe.returncode != 0


def test_smoke_through_the_gateway_and_each_server(harness: Harness, lab: Lab) -> None:
    proc = subprocess.run(
        [str(REPO / "llf_venv/bin/llf-client"), "smoke", "--json"],
        env=harness.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    text = json.dumps(report)
    assert f"{lab.gateway}-gateway" in text
    for name in lab.servers:
        assert name in text


def test_gateway_routes_each_request_by_its_model(harness: Harness, lab: Lab) -> None:
    """One gateway URL, the official openai SDK: chat to the chat model's servers,
    embeddings to the embedding model's (counted on the servers' own metrics), an
    unknown model refused by the gateway itself."""
    client = openai.OpenAI(base_url=f"{lab.gateway_url}/v1", api_key=lab.client_key,
                           http_client=openai.DefaultHttpxClient(verify=lab.ca(harness)), max_retries=0)
    listed = {model.id for model in client.models.list().data}
    assert listed == {MODEL, EMBED_MODEL}, listed
    ports = {"chat": 8000, "embed": 8005}
    before = {(name, kind): served_total(ip, port) for name, ip in lab.servers.items() for kind, port in ports.items()}
    for _ in range(4):
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, messages=question)
        assert answer.choices[0].message.content
    vectors = client.embeddings.create(model=EMBED_MODEL, input=["a cat sat on the mat"] * 3)
    assert [len(item.embedding) for item in vectors.data] == [384] * 3
    for _ in range(2):
        client.embeddings.create(model=EMBED_MODEL, input="a kitten sat on the rug")
    after = {key: served_total(lab.servers[key[0]], ports[key[1]]) for key in before}
    grown = {kind: sum(after[key] - before[key] for key in before if key[1] == kind) for kind in ports}
    # vLLM counts every input of an embeddings request: 3 + 1 + 1
    assert grown == {"chat": 4, "embed": 5}, grown
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(refused.value)
    record_figure(f"gateway routing by model: {grown['chat']:.0f} chat requests reached the chat servers, "
                  f"{grown['embed']:.0f} embedding inputs the embedding servers, none the other kind")
    # what the gateway (TLS, key check, routing by model) adds: streamed TTFT at c=1, through it and direct
    direct = openai.OpenAI(base_url=f"http://{sorted(lab.servers.values())[0]}:8000/v1", api_key=lab.key,
                           max_retries=0)
    ttft = {"gateway": [], "direct": []}
    for _ in range(8):
        for name, via in (("gateway", client), ("direct", direct)):
            started = time.monotonic()
            stream = via.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, stream=True,
                                                 messages=[{"role": "user", "content": "Say hello."}])
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    ttft[name].append(time.monotonic() - started)
                    break
            stream.close()
    medians = {name: sorted(values)[len(values) // 2] * 1000 for name, values in ttft.items()}
    assert all(len(values) == 8 for values in ttft.values()), ttft
    added = medians["gateway"] - medians["direct"]
    record_figure(f"TTFT at c=1, median of 8: through the gateway {medians['gateway']:.0f} ms, "
                  f"direct {medians['direct']:.0f} ms (the gateway adds {added:.0f} ms)")


def test_make_loadtest_embeddings_passes_through_the_gateway(harness: Harness, lab: Lab) -> None:
    """As a user types it: the endpoints file's embedding entry at the gateway (its CA, its
    key), the default SLO file, no extra environment variables."""
    result = harness.make("loadtest", "SCENARIO=embeddings", "USERS=2", "DURATION=15s", timeout=600)
    assert result.returncode == 0, result.output[-4000:]
    assert EMBED_MODEL in result.output and lab.gateway_url in result.output, result.output[-4000:]
    rate = re.search(r"([0-9.]+) req/s", result.output)
    record_figure(f"make loadtest SCENARIO=embeddings through the gateway, 2 users: "
                  f"{rate.group(1) if rate else '?'} req/s, {result.seconds:.0f} s in all")


def test_open_webui_through_the_gateway(harness: Harness, lab: Lab, tmp_path: Path) -> None:
    """Open WebUI on the gateway host, offline, installed from the controller's wheelhouse:
    over the gateway's TLS on its own port, websockets passed through, the fleet's models
    through the gateway with a client key of its own, documents embedded by the fleet's
    embedding servers (tests/e2e/webui.py drives it in Debian's chromium)."""
    url = f"https://{lab.gateway_ip}:8444"
    assert requests.get(f"{url}/health", verify=lab.ca(harness), timeout=30).status_code == 200
    # on loopback behind the gateway: not reachable from elsewhere
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{lab.gateway_ip}:8080/health", timeout=5)
    password = lab.run(lab.gateway, "cat /etc/llf/webui/admin-password").stdout.strip()
    assert password, "no generated admin password on the gateway host"
    assert webui.sign_up_offered(url) == 0
    ports = {"chat": 8000, "embed": 8005}
    with webui.signed_in(url, "admin@localhost", password, "lab") as page:
        assert sorted(webui.models_offered(page)) == sorted([MODEL, EMBED_MODEL])
        before = {kind: sum(served_total(ip, port) for ip in lab.servers.values()) for kind, port in ports.items()}
        answer = webui.ask(page, "What is the capital of France?")
        page.screenshot(path=str(webui.ARTIFACTS / "lab-03-capital.png"))
        assert "Paris" in answer, answer
        webui.new_chat(page, url)
        started = time.monotonic()
        webui.upload(page, tmp_path)
        while sum(served_total(ip, ports["embed"]) for ip in lab.servers.values()) <= before["embed"]:
            assert time.monotonic() - started < 60, "the document did not reach the fleet's embedding servers in 60 s"
            time.sleep(0.5)
        answer = webui.ask(page, webui.FACT_QUESTION)
        page.screenshot(path=str(webui.ARTIFACTS / "lab-04-document.png"))
        assert webui.FACT_ANSWER in answer, answer
    # the chat went to the fleet's chat servers through the gateway
    assert sum(served_total(ip, ports["chat"]) for ip in lab.servers.values()) >= before["chat"] + 2
    # the page's websocket went through the gateway (101 Switching Protocols)
    log = lab.run(lab.gateway, "cat /var/log/nginx/llf-gateway-webui.access.log").stdout
    assert re.search(r'"GET /ws/socket\.io/\S*transport=websocket\S* HTTP/1\.1" 101 ', log), log[-2000:]
    rss = lab.run(lab.gateway, "ps -o rss= -u llf-webui").stdout.split()
    assert rss, "no process of the user llf-webui on the gateway host"
    record_figure(f"Open WebUI through the gateway: signed in, answered, document answered from; "
                  f"its memory on the gateway host (RSS) {sum(map(int, rss)) / 1024:.0f} MiB")


def test_gateway_allows_only_the_inference_paths_with_the_key(harness: Harness, lab: Lab) -> None:
    ca = lab.ca(harness)
    auth = {"Authorization": f"Bearer {lab.client_key}"}
    models = f"{lab.gateway_url}/v1/models"
    assert requests.get(models, headers=auth, verify=ca, timeout=30).status_code == 200
    # the scheme word may be any case (HTTP says so); the key may not
    lower = {"Authorization": f"bearer {lab.client_key}"}
    assert requests.get(models, headers=lower, verify=ca, timeout=30).status_code == 200
    assert requests.get(models, headers={"Authorization": f"Bearer {lab.controller_key(harness)}"}, verify=ca,
                        timeout=30).status_code == 200
    refused = {
        "no key": {},
        "a wrong key": {"Authorization": "Bearer not-the-key"},
        "an upper-cased key": {"Authorization": f"Bearer {lab.client_key.upper()}"},
        "the servers' own key": {"Authorization": f"Bearer {lab.key}"},
        "a key with a suffix": {"Authorization": f"Bearer {lab.client_key}x"},
    }
    for what, headers in refused.items():
        response = requests.get(models, headers=headers, verify=ca, timeout=30)
        assert response.status_code == 401, what
        assert response.json()["error"]["code"] == "invalid_api_key", what
    for path in ["/tokenize", "/metrics", "/pause", "/invocations", "/v1/load_lora_adapter"]:
        response = requests.post(f"{lab.gateway_url}{path}", headers=auth, json={}, verify=ca, timeout=30)
        assert response.status_code == 404, path
    # no version in nginx's headers; TLS 1.1 is refused
    assert requests.get(f"{lab.gateway_url}/health", verify=ca, timeout=30).headers["Server"] == "nginx"
    tls11 = subprocess.run(["openssl", "s_client", "-connect", f"{lab.gateway_ip}:8443", "-tls1_1"],
                           input="", capture_output=True, text=True, timeout=30, check=False)
    assert tls11.returncode != 0 and "Cipher is (NONE)" in tls11.stdout, tls11.stdout[-2000:]
    # behind it, vLLM's --api-key alone leaves such a route open: why the gateway refuses it
    server_ip = next(iter(lab.servers.values()))
    tokenize = requests.post(f"http://{server_ip}:8000/tokenize", json={"model": MODEL, "prompt": "hi"}, timeout=30)
    assert tokenize.status_code == 200


def test_firewall_opens_the_api_port_only_to_the_gateway_and_controller(lab: Lab) -> None:
    (first, first_ip), (second, _) = sorted(lab.servers.items())
    # on by default: the servers bind 0.0.0.0 and the lab leaves llf_server_firewall at auto
    for name in lab.servers:
        assert lab.run(name, "nft list table inet llf_firewall").returncode == 0, name
    url = f"http://{first_ip}:8000/health"
    assert lab.run(lab.gateway, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {url}").stdout == "200"
    assert requests.get(url, timeout=10).status_code == 200  # the controller
    assert lab.run(second, f"curl -sS -m 5 {url}").returncode != 0  # another server: dropped
    # the embedding model's port: the same
    embed = f"http://{first_ip}:8005/health"
    assert lab.run(lab.gateway, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {embed}").stdout == "200"
    assert lab.run(second, f"curl -sS -m 5 {embed}").returncode != 0
    # the node exporter: open to the monitoring host (the gateway's), dropped from another server
    node = f"http://{first_ip}:9100/metrics"
    assert lab.run(lab.gateway, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {node}").stdout == "200"
    assert lab.run(second, f"curl -sS -m 5 {node}").returncode != 0
    # vLLM answers its non-inference routes without the key: only the firewall keeps other hosts off them
    assert requests.get(f"http://{first_ip}:8000/version", timeout=10).status_code == 200  # the controller
    for path in ["/version", "/metrics", "/tokenize"]:
        probe = lab.run(second, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{first_ip}:8000{path}")
        assert probe.returncode != 0 and probe.stdout in ("", "000"), f"{path} answered {probe.stdout} from {second}"


# the processes of one vLLM server, as the kernel names them (vLLM sets the titles)
def lab_server_answers(address: str, key: str) -> bool:
    """A real one-token completion, straight from the controller (the firewall lets it in)."""
    return server_answers(f"http://{address}:8000/v1", key)


CHAT_PROCESS = (
    "main=$(systemctl show -P MainPID llf-vllm); todo=$main; all=; "
    'while [ -n "$todo" ]; do next=; for p in $todo; do all="$all $p"; next="$next $(pgrep -P $p)"; done; '
    "todo=$(echo $next); done; "
    "for p in $all; do tr '\\0' ' ' </proc/$p/cmdline 2>/dev/null | grep -qE 'PATTERN' && echo $p; done | head -1"
)


def test_systemd_brings_back_each_killed_vllm_process(lab: Lab) -> None:
    name, address = sorted(lab.servers.items())[0]
    assert lab_server_answers(address, lab.key)
    for process, pattern in VLLM_PROCESSES.items():
        # the chat model's process: llf-vllm's main process or one below it (the embedding
        # model's server runs the same ones)
        pid = lab.run(name, CHAT_PROCESS.replace("PATTERN", pattern)).stdout.strip()
        assert pid, f"no {process} on {name}"
        assert lab.run(name, f"kill -9 {pid}").returncode == 0
        killed = time.monotonic()
        while lab_server_answers(address, lab.key) and time.monotonic() - killed < 60:
            time.sleep(0.2)
        while not lab_server_answers(address, lab.key):
            assert time.monotonic() - killed < 300, f"{name} did not answer within 300 s after kill -9 of {process}"
            time.sleep(0.5)
        record_figure(f"systemd (lab): kill -9 of {process} until answering again: {time.monotonic() - killed:.0f} s")
    restarts = lab.run(name, "systemctl show -p NRestarts --value llf-vllm").stdout.strip()
    assert int(restarts) >= len(VLLM_PROCESSES), restarts
    # one API server per model, and no worker process beside the engine cores (llf_server_inprocess_worker)
    assert lab.run(name, "pgrep -c -u llf -f vllm.entrypoints.openai.api_server").stdout.strip() == "2"
    assert lab.run(name, f"pgrep -c -u llf -f '{VLLM_WORKER}'").stdout.strip() == "0"


@pytest.mark.parametrize("unit", ["llf-vllm", "llf-webui"])
def test_systemd_unit_exposure_is_low(lab: Lab, unit: str) -> None:
    host = sorted(lab.servers)[0] if unit == "llf-vllm" else lab.gateway
    report = lab.run(host, f"systemd-analyze security --no-pager {unit}.service")
    found = re.search(rf"Overall exposure level for {unit}.service: ([0-9.]+)", report.stdout)
    assert found, report.stdout + report.stderr
    exposure = float(found.group(1))
    record_figure(f"systemd-analyze security {unit} (lab): {exposure}")
    assert exposure <= 3.0, report.stdout


def test_systemd_start_that_cannot_succeed_fails_the_deploy_within_a_minute(harness: Harness, lab: Lab) -> None:
    name, address = sorted(lab.servers.items())[0]
    bad = deploy(harness, "--limit", name, "-e", '{"llf_server_extra_args": {"no-such-engine-option": 1}}')
    assert bad.returncode != 0
    assert re.search(r"Cause: .*no.such.engine.option", bad.output), bad.output[-4000:]
    timings = [float(t) for t in re.findall(r"(?:started again|stopped trying) after (\d+) s", bad.output)]
    assert timings and timings[0] < 60, bad.output[-4000:]
    record_figure(f"systemd (lab): deploy with a bad engine argument failed {timings[0]:.0f} s into the start")
    good = deploy(harness, "--limit", name)
    assert good.returncode == 0, good.output[-4000:]
    assert lab_server_answers(address, lab.key)


def test_gateway_health_checker_runs_unprivileged_in_a_sandbox(lab: Lab) -> None:
    user = lab.run(lab.gateway, "systemctl show -P User llf-gateway-health; systemctl is-active llf-gateway-health")
    assert user.stdout.split() == ["llf-gateway", "active"], user.stdout + user.stderr
    security = lab.run(lab.gateway, "systemd-analyze security --no-pager llf-gateway-health")
    level = re.search(r"Overall exposure level for llf-gateway-health.service: ([0-9.]+)", security.stdout)
    assert level, security.stdout + security.stderr
    record_figure(f"systemd-analyze security llf-gateway-health (gateway's health checker): {level.group(1)}")
    assert float(level.group(1)) <= 3.0, security.stdout
    # what it saw, as Prometheus text for node exporter's textfile collector: both servers up
    seen = lab.run(lab.gateway, "cat /var/lib/llf/gateway/metrics/llf_gateway.prom").stdout
    up = {sample.labels["server"]: sample.value for family in text_string_to_metric_families(seen)
          if family.name == "llf_gateway_backend_up" for sample in family.samples}
    assert up == dict.fromkeys(lab.servers, 1.0), seen


# --- Molecule: each role's scenario on the deployed lab ----------------------------------

# the order the roles stand on each other, as `make molecule` runs them
SCENARIOS = re.search(r"^MOLECULE_SCENARIOS := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)[1].split()
ANSI = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;;[^\x1b]*\x1b\\")  # colours; hyperlinks (ESC ] 8 ;; url ESC \)


def test_every_molecule_scenario_runs() -> None:
    """A scenario added under molecule/ but missing from the Makefile would never run."""
    found = {path.parent.name for path in (REPO / "molecule").glob("*/molecule.yml")}
    assert sorted(SCENARIOS) == sorted(found)


def molecule_actions(text: str, scenario: str) -> dict[str, str]:
    """Molecule's outcome lines (colours removed): action -> outcome, for one scenario."""
    # "INFO     llf_host ➜ verify: Executed: Successful" as each action ends (without the
    # level in `molecule test`'s closing details), with ">" for the arrow when not on a terminal
    found = re.findall(rf"^(?:INFO\s+)?{scenario} (?:➜|>) (\w+): Executed: (\w+)", text, flags=re.MULTILINE)
    return dict(found)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario_on_the_lab(harness: Harness, lab: Lab, scenario: str) -> None:
    """Each role's scenario's verify on the lab as the deploy playbook left it (before the
    rolling update and the gateway's client changes alter its settings). Its converge is
    not run here: the deploy playbook's second run (test_second_run_changes_nothing) is
    the idempotence check of every role on these hosts, and CI time is scarce."""
    # the scenarios' create step boots as many hosts as the lab has (a no-op: they are up)
    harness.env["LLF_MOLECULE_HOSTS"] = str(len(lab.servers) + 1)
    try:
        verify = harness.make("molecule", f"ROLE={scenario}", "KEEP=1", "STEPS=verify", timeout=3600)
    finally:
        del harness.env["LLF_MOLECULE_HOSTS"]
    text = ANSI.sub("", verify.output)
    assert verify.returncode == 0, text[-10000:]
    assert molecule_actions(text, scenario).get("verify") == "Successful", text[-3000:]
    # it ran on the hosts: a play with no hosts would have "succeeded" too
    recaps = re.findall(r"^\W*(llf-th\d+)\s+: ok=(\d+)\s+changed=(\d+)", text, re.MULTILINE)
    assert recaps and all(int(ok) > 0 for _, ok, _ in recaps), recaps
    record_figure(f"molecule {scenario} verify on the deployed lab: {verify.seconds:.1f} s")


def gateway_changes(lab: Lab, since: float) -> list[tuple[float, str]]:
    """The health checker's upstream changes since a time: (unix time, 'a=down, b=up')."""
    journal = lab.run(
        lab.gateway, f"journalctl -u llf-gateway-health -o short-unix --no-pager --since @{int(since) - 1}"
    )
    changes = []
    for line in journal.stdout.splitlines():
        stamp, _, rest = line.partition(" ")
        if "upstream changed: " in rest and float(stamp) >= since:
            changes.append((float(stamp), rest.split("upstream changed: ", 1)[1]))
    return changes


def wait_for_change(lab: Lab, since: float, state: str, timeout: float) -> float:
    """When the health checker first wrote `state` (e.g. 'llf-tg1=down') after `since`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for stamp, states in gateway_changes(lab, since):
            if state in states.split(", "):
                return stamp
        time.sleep(2)
    raise AssertionError(f"the gateway's health checker did not write {state} within {timeout:.0f} s")


def test_rolling_update_and_a_killed_engine_under_load(harness: Harness, lab: Lab, tmp_path: Path) -> None:
    """One load run through the gateway, chat and embedding requests: first kill -9 one
    server's engine cores (the gateway routes around it until the server restarts by
    itself), then a rolling update of both servers, every model on each. No request of
    either kind that started after the health checker noticed fails."""
    slo = tmp_path / "slo.yaml"
    slo.write_text(
        yaml.safe_dump(
            {
                "min_samples": 10,
                # requests the killed server took before the health checker noticed may fail
                # (fast, so possibly many): the test counts them from the raw samples below
                "targets": ["error_rate <= 100 %"],
                # the rag load's embedding requests, counted the same way
                "embeddings": {"targets": ["error_rate <= 100 %"]},
                "validity": {
                    "client_cpu_percent": 100,
                    "schedule_lag_ms": 100000,
                    "server_gap_ms": 100000,
                    "server_gap_action": "warn",
                },
            }
        )
    )
    env = dict(harness.env, LLF_API_KEY=lab.controller_key(harness), REQUESTS_CA_BUNDLE=lab.ca(harness))
    out = tmp_path / "results"
    load = subprocess.Popen(
        [
            str(REPO / "llf_venv/bin/python"),
            "-m",
            "loadtests",
            "run",
            "--host",
            lab.gateway_url,
            "--model",
            MODEL,
            "--users",
            "2",
            "--duration",
            "330s",
            "--warmup",
            "5s",
            # chat turns and embeddings through one gateway URL, routed by model
            "--scenario",
            "rag",
            "--embed-model",
            EMBED_MODEL,
            "--slo",
            str(slo),
            "--out",
            str(out),
            "--request-timeout",
            "120",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    victim = sorted(lab.servers)[0]
    try:
        time.sleep(20)
        assert load.poll() is None, load.communicate()[0][-3000:]
        # 1. the engine core, which holds the model and its KV cache, dies (the OOM killer's
        # pick); the server restarts by itself
        killed_at = time.time()
        kill = lab.run(victim, "pkill -9 -f '^VLLM::EngineCore'")
        assert kill.returncode == 0, f"no VLLM::EngineCore process on {victim}: {kill.stderr}"
        noticed_at = wait_for_change(lab, killed_at, f"{victim}=down", 60)
        back_at = wait_for_change(lab, noticed_at, f"{victim}=up", 600)
        record_figure(
            f"gateway, kill -9 of {victim}'s VLLM::EngineCore under load: out of the gateway "
            f"{noticed_at - killed_at:.1f} s after the kill, for {back_at - noticed_at:.1f} s"
        )
        # 2. a rolling update of both servers
        rollout = deploy(harness, "-e", '{"llf_server_extra_env": {"LLF_ROLLOUT": "2"}}')
        assert rollout.returncode == 0, rollout.output[-8000:]
        for name in lab.servers:
            assert "RUNNING HANDLER [llf_server : Drain the server from the gateway]" in rollout.output
            assert recap(rollout.output, name)["changed"] > 0
        record_figure(f"rolling update of 2 servers under load: {rollout.seconds:.1f} s")
        output, _ = load.communicate(timeout=600)
    finally:
        if load.poll() is None:
            load.kill()
    assert load.returncode == 0, output[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["completed"] >= 10, result
    samples = [
        record
        for path in (out / "raw").glob("*.jsonl")
        for record in map(json.loads, path.read_text().splitlines())
        if record.get("ev") == "sample"
    ]
    failed = [s for s in samples if not s["success"]]
    late = [s for s in failed if s["start"] >= noticed_at]
    record_figure(
        f"requests through the gateway during the kill and the rollout: {len(samples) - len(failed)} completed, "
        f"{len(failed)} failed ({len(failed) - len(late)} in flight or sent before the health checker noticed "
        f"the kill, {len(late)} after)"
    )
    assert not late, late[:3]  # this covers the rollout too, which started after the server came back
    kinds = {s["kind"] for s in samples}
    by_kind = {kind: sum(1 for s in samples if s["kind"] == kind and s["success"]) for kind in kinds}
    record_figure(f"of them completed, by kind: {by_kind}")
    assert len(by_kind) == 2 and all(by_kind.values()), by_kind  # chat turns and embeddings both went through


def test_prometheus_sees_the_fleet_and_its_alerts_reach_the_webhook(lab: Lab, alerts: AlertReceiver) -> None:
    targets = prometheus(lab, "targets", state="active")["activeTargets"]
    up = sorted((t["labels"]["job"], t["labels"]["server"]) for t in targets if t["health"] == "up")
    assert up == sorted([*(("vllm", name) for name in lab.servers for _model in (MODEL, EMBED_MODEL)),
                         *(("node", name) for name in lab.servers),
                         ("node", lab.gateway), ("nginx", lab.gateway)]), targets
    # every panel of the dashboard has numbers (the load of the rolling update is in the last 5
    # minutes), but the model disk's: the test hosts' root is an overlay, which node exporter skips
    empty = [f"{title}: {expr}" for title, expr in dashboard_queries("5m")
             if not has_numbers(prometheus(lab, "query", query=expr)["result"])]
    overlay = lab.run(lab.gateway, "findmnt -n -o FSTYPE /").stdout.strip() == "overlay"
    assert [entry.split(":")[0] for entry in empty] == (["Model disk free"] if overlay else []), "\n".join(empty)
    # the rolling update and the killed worker took servers down: the alert fired, then resolved;
    # the TTFT target of the tight SLO file is missed: its alert fired
    names = ("LLFServerDown", "LLFServerOutOfGateway", "LLFTtftContentP95AboveSlo")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (
        alerts.statuses(names[0]) == {"firing", "resolved"} and "firing" in alerts.statuses(names[2])
    ):
        time.sleep(2)
    seen = {name: alerts.statuses(name) for name in names}
    record_figure(f"alerts received by the webhook during the lab's restarts: {seen}")
    assert seen["LLFServerDown"] == {"firing", "resolved"}, alerts.received[-5:]
    assert "firing" in seen["LLFTtftContentP95AboveSlo"], alerts.received[-5:]
    # Prometheus and Alertmanager listen on loopback only
    for port in (9090, 9093):
        with pytest.raises(OSError), socket.create_connection((lab.gateway_ip, port), timeout=5):
            pass


def test_second_run_changes_nothing(harness: Harness, lab: Lab) -> None:
    result = deploy(harness, "-e", '{"llf_server_extra_env": {"LLF_ROLLOUT": "2"}}')
    assert result.returncode == 0, result.output[-6000:]
    for host in [*lab.servers, lab.gateway]:
        assert recap(result.output, host)["changed"] == 0, result.output[-6000:]
    record_figure(f"lab idempotent re-run: {result.seconds:.1f} s")


def test_gateway_revokes_a_client_and_limits_another_without_restarting_servers(
    harness: Harness, lab: Lab, tmp_path: Path
) -> None:
    """After the idempotence check: the gateway alone is redeployed with lab-user removed
    and a client allowed one request a minute; the servers keep running."""
    before = lab.vllm_pids()
    tiny_key = secrets.token_urlsafe(24)
    lab_secrets = yaml.safe_load((INVENTORY / "group_vars" / "all" / "secrets.yml").read_text())
    webui_key = lab_secrets["llf_testhosts_webui_key"]
    clients = tmp_path / "clients.yml"
    clients.write_text(
        yaml.safe_dump({"llf_gateway_clients": [
            {"name": "tiny", "key": tiny_key, "requests_per_minute": 1},
            # Open WebUI's client stays (the deploy refuses to leave Open WebUI without one)
            {"name": "webui", "key": webui_key, "requests_per_minute": 600},
        ]})
    )
    result = deploy(harness, "--limit", lab.gateway, "-e", f"@{clients}")
    assert result.returncode == 0, result.output[-6000:]
    assert recap(result.output, lab.gateway)["changed"] > 0
    record_figure(f"gateway-only redeploy (a client revoked, one added): {result.seconds:.1f} s")
    ca, models = lab.ca(harness), f"{lab.gateway_url}/v1/models"

    revoked = requests.get(models, headers={"Authorization": f"Bearer {lab.client_key}"}, verify=ca, timeout=30)
    assert revoked.status_code == 401
    assert requests.get(models, headers={"Authorization": f"Bearer {lab.controller_key(harness)}"}, verify=ca,
                        timeout=30).status_code == 200
    tiny = {"Authorization": f"Bearer {tiny_key}"}
    assert requests.get(models, headers=tiny, verify=ca, timeout=30).status_code == 200
    limited = requests.get(models, headers=tiny, verify=ca, timeout=30)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "60"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"

    assert lab.vllm_pids() == before, "a gateway-only deploy restarted a server"
    log = lab.run(lab.gateway, "cat /var/log/nginx/llf-gateway.access.log").stdout
    for name in ("client=tiny", "client=lab-user", "client=controller"):
        assert name in log
    for key in (tiny_key, lab.client_key, lab.key, lab.controller_key(harness)):
        assert key not in log


def test_uninstall_leaves_the_hosts_clean(harness: Harness, lab: Lab) -> None:
    result = harness.playbook("uninstall.yml", INVENTORY, "-e", "llf_model_purge=true")
    assert result.returncode == 0, result.output[-6000:]
    # each check prints what it found, so a failure names what was left behind
    checks = [
        *(f"if test -e {path}; then ls -ld {path}; false; fi" for path in UNINSTALLED_PATHS),
        "! getent passwd llf",
        "! nft list table inet llf_firewall 2>/dev/null",
        "! pgrep -af '[v]llm.entrypoints'",
        "! getent passwd llf-gateway",
        # the deploy enabled nginx on the gateway (installed but off in the test hosts' base)
        "! systemctl is-enabled nginx",
        "! systemctl is-active nginx",
        "! ss -Hltn 'sport = :80' | grep .",
        # Prometheus' parts are in the test hosts' base but off: off again
        "! systemctl is-enabled prometheus prometheus-alertmanager prometheus-node-exporter",
        "! systemctl is-active prometheus prometheus-alertmanager prometheus-node-exporter",
        # the samples LLF's Prometheus took are gone, the package's directory stays
        "test -z \"$(ls -A /var/lib/prometheus/metrics2)\" || { ls -A /var/lib/prometheus/metrics2; false; }",
    ]
    check = "rc=0; " + "".join(f"{{ {c}; }} || rc=1; " for c in checks) + "exit $rc"
    for host in [*lab.servers, lab.gateway]:
        outcome = lab.run(host, check)
        assert outcome.returncode == 0, f"{host} is not clean: {outcome.stdout}{outcome.stderr}"
    assert not list(Path(harness.env["LLF_CONFIG"]).parent.glob("gateway-*.pem")), "the controller kept the certificate"
    again = harness.playbook("uninstall.yml", INVENTORY, "-e", "llf_model_purge=true")
    assert again.returncode == 0
    for host in [*lab.servers, lab.gateway]:
        assert recap(again.output, host)["changed"] == 0, again.output[-4000:]
