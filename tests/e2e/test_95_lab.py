"""Many hosts: two vLLM servers and a TLS gateway on real systemd hosts with no
internet (systemd-nspawn, `make testhosts-up`), a rolling update under load that
loses no request, the allowlist, the firewall, idempotence and uninstall. Before the
deploy, cheap preflight refusals: the example lab's published vault outside the test
hosts, and servers behind one gateway that would serve different models.

Runs after the local deployment was uninstalled, so one machine never runs more
than the two lab servers.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import REPO, record_figure
from tests.e2e.conftest import MODEL, Harness, recap

pytestmark = pytest.mark.e2e

INVENTORY = REPO / "tests" / "testhosts" / "inventory"
UNINSTALLED_PATHS = (
    "/etc/llf",
    "/opt/llf",
    "/var/lib/llf",
    "/var/cache/llf",
    "/etc/nginx/conf.d/llf-gateway.conf",
    "/etc/systemd/system/llf-vllm.service",
)


@dataclass
class Lab:
    servers: dict[str, str]  # name -> address
    gateway: str
    gateway_ip: str
    key: str
    ssh: list[str]

    def run(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        address = self.gateway_ip if host == self.gateway else self.servers.get(host, host)
        return subprocess.run(
            [*self.ssh, f"root@{address}", command], capture_output=True, text=True, timeout=120, check=False
        )

    @property
    def gateway_url(self) -> str:
        return f"https://{self.gateway_ip}:8443"


@pytest.fixture(scope="module")
def lab(harness: Harness) -> Lab:
    up = harness.make("testhosts-up", "N=3", timeout=1800)
    assert up.returncode == 0, up.output[-4000:]
    record_figure(f"testhosts-up N=3: {up.seconds:.1f} s")
    hosts = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]
    servers = {name: spec["ansible_host"] for name, spec in hosts["llf_servers"]["hosts"].items()}
    [(gateway, gw)] = hosts["llf_gateway"]["hosts"].items()
    # the generated inventory carries the lab's settings (tests/testhosts/lab-vars.yml) and a key
    key = yaml.safe_load((INVENTORY / "group_vars" / "all" / "secrets.yml").read_text())["llf_testhosts_api_key"]
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
        yield Lab(servers, gateway, gw["ansible_host"], key, ssh)
    finally:
        down = harness.make("testhosts-down", timeout=600)
        assert down.returncode == 0, down.output[-3000:]


def deploy(harness: Harness, *args: str):
    return harness.playbook("deploy.yml", INVENTORY, *args)


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
        {"all": {"children": {"llf_servers": {"hosts": {second: {"llf_model_name": other}}}}}}))
    result = deploy(harness, "-i", str(override))
    assert result.returncode != 0, result.output[-3000:]
    assert f"does not fit {second}:" not in result.output, result.output[-3000:]  # it fits: the refusal is the mix
    assert (
        f"The servers behind one gateway must serve one model, but they would serve: {first}: {MODEL} "
        f"(llf_model_name={MODEL}), {second}: {other} (llf_model_name={other}). Set llf_model_name"
    ) in result.output
    assert "PLAY [Deploy" not in result.output
    for host in [*lab.servers, lab.gateway]:
        assert recap(result.output, host)["changed"] == 0
        untouched = lab.run(host, "test ! -e /etc/llf && test ! -e /opt/llf && test ! -e /var/lib/llf")
        assert untouched.returncode == 0, f"{host} was changed"
    record_figure(f"different models behind one gateway refused in preflight: {result.seconds:.1f} s")


def test_lab_deploys_two_servers_behind_the_gateway(harness: Harness, lab: Lab) -> None:
    result = deploy(harness)
    assert result.returncode == 0, result.output[-8000:]
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


def test_gateway_allows_only_the_inference_paths_with_the_key(harness: Harness, lab: Lab) -> None:
    ca = str(Path(harness.env["LLF_CONFIG"]).parent / f"gateway-{lab.gateway}.pem")
    auth = {"Authorization": f"Bearer {lab.key}"}
    assert requests.get(f"{lab.gateway_url}/v1/models", headers=auth, verify=ca, timeout=30).status_code == 200
    assert requests.get(f"{lab.gateway_url}/v1/models", verify=ca, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert requests.get(f"{lab.gateway_url}/v1/models", headers=wrong, verify=ca, timeout=30).status_code == 401
    for path in ["/tokenize", "/metrics", "/pause", "/invocations", "/v1/load_lora_adapter"]:
        response = requests.post(f"{lab.gateway_url}{path}", headers=auth, json={}, verify=ca, timeout=30)
        assert response.status_code == 404, path
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
    # vLLM answers its non-inference routes without the key: only the firewall keeps other hosts off them
    assert requests.get(f"http://{first_ip}:8000/version", timeout=10).status_code == 200  # the controller
    for path in ["/version", "/metrics", "/tokenize"]:
        probe = lab.run(second, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{first_ip}:8000{path}")
        assert probe.returncode != 0 and probe.stdout in ("", "000"), f"{path} answered {probe.stdout} from {second}"


# the processes of one vLLM server, as the kernel names them (vLLM sets the titles)
VLLM_PROCESSES = {
    "API server": "vllm.entrypoints.openai.api_server",
    "VLLM::EngineCore": "^VLLM::EngineCore",
    "VLLM::Worker": "^VLLM::Worker",
}


def server_answers(address: str, key: str) -> bool:
    """A real one-token completion, straight from the controller (the firewall lets it in)."""
    try:
        response = requests.post(
            f"http://{address}:8000/v1/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
            timeout=10,
        )
    except requests.RequestException:
        return False
    return response.status_code == 200


def test_systemd_brings_back_each_killed_vllm_process(lab: Lab) -> None:
    name, address = sorted(lab.servers.items())[0]
    assert server_answers(address, lab.key)
    for process, pattern in VLLM_PROCESSES.items():
        pid = lab.run(name, f"pgrep -o -u llf -f '{pattern}'").stdout.strip()
        assert pid, f"no {process} on {name}"
        assert lab.run(name, f"kill -9 {pid}").returncode == 0
        killed = time.monotonic()
        while server_answers(address, lab.key) and time.monotonic() - killed < 60:
            time.sleep(0.2)
        while not server_answers(address, lab.key):
            assert time.monotonic() - killed < 300, f"{name} did not answer within 300 s after kill -9 of {process}"
            time.sleep(0.5)
        record_figure(f"systemd (lab): kill -9 of {process} until answering again: {time.monotonic() - killed:.0f} s")
    restarts = lab.run(name, "systemctl show -p NRestarts --value llf-vllm").stdout.strip()
    assert int(restarts) >= len(VLLM_PROCESSES), restarts
    assert lab.run(name, "pgrep -c -u llf -f vllm.entrypoints.openai.api_server").stdout.strip() == "1"


def test_systemd_unit_exposure_is_low(lab: Lab) -> None:
    name = sorted(lab.servers)[0]
    report = lab.run(name, "systemd-analyze security --no-pager llf-vllm.service")
    exposure = float(re.search(r"Overall exposure level for llf-vllm.service: ([0-9.]+)", report.stdout).group(1))
    record_figure(f"systemd-analyze security llf-vllm (lab): {exposure}")
    assert exposure <= 3.0, report.stdout


def test_systemd_start_that_cannot_succeed_fails_the_deploy_within_a_minute(harness: Harness, lab: Lab) -> None:
    name, address = sorted(lab.servers.items())[0]
    bad = deploy(harness, "--limit", name, "-e", '{"llf_server_extra_args": {"no-such-engine-option": 1}}')
    assert bad.returncode != 0
    assert re.search(r"Cause: .*no.such.engine.option", bad.output), bad.output[-4000:]
    timings = [float(t) for t in re.findall(r"started again after (\d+) s", bad.output)]
    assert timings and timings[0] < 60, bad.output[-4000:]
    record_figure(f"systemd (lab): deploy with a bad engine argument failed {timings[0]:.0f} s into the start")
    good = deploy(harness, "--limit", name)
    assert good.returncode == 0, good.output[-4000:]
    assert server_answers(address, lab.key)


def test_rolling_update_under_load_loses_no_request(harness: Harness, lab: Lab, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(
        yaml.safe_dump(
            {
                "min_samples": 10,
                "targets": ["error_rate <= 0 %"],
                "validity": {
                    "client_cpu_percent": 100,
                    "schedule_lag_ms": 100000,
                    "server_gap_ms": 100000,
                    "server_gap_action": "warn",
                },
            }
        )
    )
    env = dict(
        harness.env,
        LLF_API_KEY=lab.key,
        REQUESTS_CA_BUNDLE=str(Path(harness.env["LLF_CONFIG"]).parent / f"gateway-{lab.gateway}.pem"),
    )
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
            "240s",
            "--warmup",
            "5s",
            "--scenario",
            "short",
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
    try:
        time.sleep(20)
        assert load.poll() is None, load.communicate()[0][-3000:]
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
    assert result["failed"] == 0 and result["completed"] >= 10, result
    record_figure(
        f"requests through the gateway during the rollout: {result['completed']} completed, "
        f"{result['failed']} failed"
    )


def test_second_run_changes_nothing(harness: Harness, lab: Lab) -> None:
    result = deploy(harness, "-e", '{"llf_server_extra_env": {"LLF_ROLLOUT": "2"}}')
    assert result.returncode == 0, result.output[-6000:]
    for host in [*lab.servers, lab.gateway]:
        assert recap(result.output, host)["changed"] == 0, result.output[-6000:]
    record_figure(f"lab idempotent re-run: {result.seconds:.1f} s")


def test_uninstall_leaves_the_hosts_clean(harness: Harness, lab: Lab) -> None:
    result = harness.playbook("uninstall.yml", INVENTORY, "-e", "llf_model_purge=true")
    assert result.returncode == 0, result.output[-6000:]
    # each check prints what it found, so a failure names what was left behind
    checks = [
        *(f"if test -e {path}; then ls -ld {path}; false; fi" for path in UNINSTALLED_PATHS),
        "! getent passwd llf",
        "! nft list table inet llf_firewall 2>/dev/null",
        "! pgrep -af '[v]llm.entrypoints'",
    ]
    check = "rc=0; " + "".join(f"{{ {c}; }} || rc=1; " for c in checks) + "exit $rc"
    for host in [*lab.servers, lab.gateway]:
        outcome = lab.run(host, check)
        assert outcome.returncode == 0, f"{host} is not clean: {outcome.stdout}{outcome.stderr}"
    again = harness.playbook("uninstall.yml", INVENTORY, "-e", "llf_model_purge=true")
    assert again.returncode == 0
    for host in [*lab.servers, lab.gateway]:
        assert recap(again.output, host)["changed"] == 0, again.output[-4000:]
