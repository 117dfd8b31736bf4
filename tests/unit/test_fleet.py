"""One model per fleet, the server's firewall by default beyond loopback, and the
example lab's published vault refused: the filters, and the preflight checks run by
ansible-playbook on this machine (they change nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, load_script

catalog_filters = load_script(REPO / "roles" / "llf_model" / "filter_plugins" / "llf_catalog.py")
trust = load_script(REPO / "playbooks" / "filter_plugins" / "llf_trust.py")
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
LAB_VAULT = REPO / "inventories" / "lab" / "group_vars" / "all" / "vault.yml"


# --- one model per fleet ----------------------------------------------------------

def test_fleet_pick_is_the_largest_model_every_server_can_serve() -> None:
    mine = ["qwen2.5-coder-7b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]
    smaller = ["qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]
    assert catalog_filters.llf_model_fleet_pick(mine, [], "smollm2-135m-instruct") == "qwen2.5-coder-7b-instruct"
    assert catalog_filters.llf_model_fleet_pick(mine, [smaller, mine], "d") == "qwen2.5-coder-1.5b-instruct"
    # nothing in common (or nothing usable): the catalog's default, whose fit is checked next
    assert catalog_filters.llf_model_fleet_pick(mine, [["other"]], "smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert catalog_filters.llf_model_fleet_pick([], [smaller], "smollm2-135m-instruct") == "smollm2-135m-instruct"


def served(name: str, requested: str | None = None) -> dict:
    hostvars: dict = {"llf_model_selected": {"name": name, "served_name": name}}
    if requested:
        hostvars["llf_model_name"] = requested
    return hostvars


def test_fleet_conflicts_name_every_host_and_its_model() -> None:
    hostvars = {"s1": served("a", "a"), "s2": served("b"), "s3": served("a"), "left-out": {}}
    assert catalog_filters.llf_model_fleet_conflicts(["s1", "s2", "s3", "left-out", "not-in-run"], hostvars) == (
        "s1: a (asked for a), s2: b (asked for auto), s3: a (asked for auto)")
    assert catalog_filters.llf_model_fleet_conflicts(["s1", "s3"], hostvars) == ""
    assert catalog_filters.llf_model_fleet_conflicts([], hostvars) == ""


# --- the example lab's published vault --------------------------------------------

def test_published_secret_hashes_match_the_shipped_example_vault() -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(trust.PUBLISHED_VAULT_PASSWORD.encode()))])
    secrets = yaml.safe_load(vault.decrypt(LAB_VAULT.read_bytes()))
    assert trust.llf_published_secrets({"key": secrets["vault_llf_server_api_key"]}) == ["key"]
    assert "llf-lab-example" in (REPO / "inventories" / "lab" / "README.md").read_text()


def test_published_secrets_in_strings_lists_and_clients() -> None:
    published = "change-me-to-a-long-random-key"
    assert trust.llf_published_secrets({
        "llf_server_api_key": published,
        "llf_model_hf_token": "",
        "llf_gateway_api_keys": ["mine", published],
        "llf_gateway_clients": [{"name": "ci", "key": published}],
        "other": [{"name": "x", "key": "mine"}, None, 3],
    }) == ["llf_server_api_key", "llf_gateway_api_keys", "llf_gateway_clients"]


def test_vault_files_that_open_with_the_published_password(tmp_path: Path) -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    def encrypt(text: str, password: str) -> str:
        return VaultLib([("default", VaultSecret(password.encode()))]).encrypt(text).decode()

    published, mine = trust.PUBLISHED_VAULT_PASSWORD, "a password of my own"
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    (tmp_path / "group_vars" / "all" / "vault.yml").write_text(encrypt("a: 1\n", published))
    (tmp_path / "group_vars" / "all" / "own.yml").write_text(encrypt("a: 1\n", mine))
    inline = "\n".join("  " + line for line in encrypt("secret", published).splitlines())
    (tmp_path / "host_vars" / "s1.yml").write_text(f"plain: 1\nkey: !vault |\n{inline}\nafter: 2\n")
    (tmp_path / "host_vars" / "s2.yml").write_text("plain: 1\n")
    (tmp_path / "host_vars" / ".hidden.yml").write_text(encrypt("a: 1\n", published))
    (tmp_path / "host_vars" / "binary").write_bytes(b"\xff\xfe\x00")
    found = trust.llf_published_vault_files([str(tmp_path / "hosts.yml"), str(tmp_path / "missing")])
    assert found == [str(tmp_path / "group_vars" / "all" / "vault.yml"), str(tmp_path / "host_vars" / "s1.yml")]
    assert trust.llf_published_vault_files([str(REPO / "inventories" / "local")]) == []
    assert set(trust.FilterModule().filters()) == {"llf_published_vault_files", "llf_published_secrets"}


# --- the server's firewall and its keyless routes (llf_server preflight) ------------

EXPOSURE_CASES = {
    # host: (vars, refused with, selected firewall)
    "loopback": ({}, None, False),
    "anywhere-systemd": ({"llf_server_host": "0.0.0.0"}, None, True),
    "ipv6-any-systemd": ({"llf_server_host": "::"}, None, True),
    "firewall-off": ({"llf_server_host": "0.0.0.0", "llf_server_firewall": False},
                     "would bind 0.0.0.0:18613 with no firewall (llf_server_firewall is false)", None),
    "firewall-off-opted-out": ({"llf_server_host": "0.0.0.0", "llf_server_firewall": False,
                                "llf_server_expose_unprotected_routes": True}, None, False),
    "supervisor-anywhere": ({"llf_server_host": "0.0.0.0", "llf_server_manager": "supervisor"},
                            "with no firewall (supervisor hosts cannot run it)", None),
    "supervisor-opted-out": ({"llf_server_host": "0.0.0.0", "llf_server_manager": "supervisor",
                              "llf_server_expose_unprotected_routes": True}, None, False),
    "supervisor-firewall-on": ({"llf_server_firewall": True, "llf_server_manager": "supervisor"},
                               "the firewall is a systemd unit and the server runs under supervisor there", None),
    "bad-value": ({"llf_server_firewall": "sometimes"},
                  "llf_server_firewall is sometimes on bad-value: set it to auto, true or false", None),
}


@pytest.fixture(scope="module")
def exposure_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One preflight run of llf_server on this machine, one inventory host per case."""
    tmp = tmp_path_factory.mktemp("exposure")
    hosts = {}
    for name, (settings, _, _) in EXPOSURE_CASES.items():
        hosts[name] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                       "llf_server_port": 18613, "llf_server_manager": "systemd", **settings}
    (tmp / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"llf_servers": {"hosts": hosts}}}}))
    (tmp / "play.yml").write_text(yaml.safe_dump([{
        "name": "Check the server settings",
        "hosts": "llf_servers",
        "gather_facts": False,
        "vars": {
            "llf_host": {"systemd_pid1": True, "cpu_cores": 2},
            "llf_engine_selected": "vllm-cpu",
            "llf_model_selected": {"name": "m", "served_name": "m", "memory_gb": 1},
            "llf_model_catalog": {"models": {"m": {}}},
            "llf_server_config_dir": str(tmp / "etc"),
        },
        "tasks": [
            {"name": "Check", "ansible.builtin.include_role": {"name": "llf_server", "tasks_from": "preflight"}},
            {"name": "Show", "ansible.builtin.debug": {
                "msg": "FIREWALL {{ inventory_hostname }} {{ llf_server_selected_firewall | to_json }}"}},
        ],
    }]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "hosts.yml"), str(tmp / "play.yml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert "PLAY RECAP" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp / "etc").exists(), "the preflight created the configuration directory"
    return proc.stdout


@pytest.mark.parametrize("host", EXPOSURE_CASES)
def test_keyless_routes_beyond_loopback_need_the_firewall_or_an_opt_out(exposure_run: str, host: str) -> None:
    _, refused_with, firewall = EXPOSURE_CASES[host]
    recap = next(line for line in exposure_run.splitlines() if line.startswith(f"{host} ") and "ok=" in line)
    if refused_with:
        assert "failed=1" in recap
        [message] = [line for line in exposure_run.splitlines() if line.startswith("[ERROR]") and f"{host}" in line
                     and refused_with in line] or [exposure_run[-3000:]]
        assert refused_with in message
        if "no firewall" in refused_with:
            assert "llf_server_expose_unprotected_routes: true" in message
    else:
        assert "failed=0" in recap, exposure_run[-3000:]
        assert f"FIREWALL {host} {json.dumps(firewall)}" in exposure_run, exposure_run[-3000:]
