"""llf_client.config: endpoint resolution, endpoints files, Ansible inventories."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llf_client.config import (
    DEFAULT_BASE_URL,
    Endpoint,
    default_endpoints_path,
    history_path,
    load_endpoints_file,
    load_inventory,
    normalize_url,
    resolve_endpoints,
)
from llf_client.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


ENDPOINTS = """\
endpoints:            # in priority order: the local server first
  - name: local
    base_url: http://127.0.0.1:8000/v1
    api_key: "s3cret"
    model: smollm2-135m-instruct
  - name: lab
    base_url: http://10.0.0.5:8000/v1/
    queue_threshold: 4
"""


# --- paths ----------------------------------------------------------------------------


def test_default_path_follows_xdg_config_home() -> None:
    env = {"XDG_CONFIG_HOME": "/x/cfg"}
    assert default_endpoints_path(env) == Path("/x/cfg/llf/endpoints.yml")
    assert history_path(env) == Path("/x/cfg/llf/chat_history")


def test_default_path_falls_back_to_home_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/u")
    assert default_endpoints_path({}) == Path("/home/u/.config/llf/endpoints.yml")


def test_llf_config_wins_over_xdg() -> None:
    env = {"LLF_CONFIG": "/etc/llf/e.yml", "XDG_CONFIG_HOME": "/x"}
    assert default_endpoints_path(env) == Path("/etc/llf/e.yml")


# --- URLs -----------------------------------------------------------------------------


def test_normalize_url_strips_slash_and_adds_v1_to_a_bare_root() -> None:
    assert normalize_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_url(" http://h:8000 ") == "http://h:8000/v1"
    assert normalize_url("https://h/openai/v1") == "https://h/openai/v1"


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h/v1", "http:///v1", ""])
def test_normalize_url_rejects_non_http(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_url(url)
    assert info.value.exit_code == 2
    assert "not an http(s) URL" in info.value.one_line()


# --- endpoints file -------------------------------------------------------------------


def test_endpoints_file_is_read_in_order(tmp_path: Path) -> None:
    endpoints = load_endpoints_file(write(tmp_path / "e.yml", ENDPOINTS))
    assert endpoints == [
        Endpoint("local", "http://127.0.0.1:8000/v1", "s3cret", "smollm2-135m-instruct"),
        Endpoint("lab", "http://10.0.0.5:8000/v1", queue_threshold=4.0),
    ]
    assert endpoints[0].root_url == "http://127.0.0.1:8000"
    assert endpoints[0].label == "local (http://127.0.0.1:8000/v1)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("endpoints: [\n", "not valid YAML at line 2"),
        ("other: 1\n", "no 'endpoints' list"),
        ("endpoints: []\n", "the 'endpoints' list is empty"),
        ("endpoints: [3]\n", "entry 1: an entry must be a mapping"),
        ("endpoints: [{name: a}]\n", "entry 1: name and base_url are required"),
        ("endpoints: [{name: [a], base_url: http://h/v1}]\n", "name must be a string"),
        (
            "endpoints: [{name: a, base_url: http://h/v1}, {name: a, base_url: http://g/v1}]\n",
            "entry 2: duplicate endpoint name 'a'",
        ),
        (
            "endpoints: [{name: a, base_url: http://h/v1, queue_threshold: many}]\n",
            "queue_threshold must be a number >= 0",
        ),
        ("endpoints: [{name: a, base_url: 'h:1'}]\n", "not an http(s) URL"),
    ],
)
def test_bad_endpoints_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "e.yml", text)
    with pytest.raises(ConfigError) as info:
        load_endpoints_file(path)
    assert message in info.value.one_line()
    assert str(path) in info.value.one_line()


def test_unreadable_endpoints_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_endpoints_file(tmp_path)  # a directory


# --- resolution order -----------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose default endpoints file exists."""
    write(tmp_path / "cfg" / "llf" / "endpoints.yml", ENDPOINTS)
    return {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}


def test_no_flags_use_the_deploys_file(home: dict[str, str]) -> None:
    endpoints = resolve_endpoints(env=home)
    assert [e.name for e in endpoints] == ["local", "lab"]
    assert endpoints[0].api_key == "s3cret"


def test_nothing_configured_falls_back_to_local_8000(tmp_path: Path) -> None:
    endpoints = resolve_endpoints(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert endpoints == [Endpoint("local", DEFAULT_BASE_URL)]


def test_url_flag_wins_over_everything(home: dict[str, str]) -> None:
    env = {**home, "LLF_BASE_URL": "http://env:1/v1", "LLF_API_KEY": "k"}
    endpoints = resolve_endpoints(url="http://flag:2/v1", model="m", env=env)
    assert endpoints == [Endpoint("url", "http://flag:2/v1", "k", "m")]


def test_env_url_wins_over_the_default_file(home: dict[str, str]) -> None:
    env = {**home, "OPENAI_BASE_URL": "http://openai:1/v1", "OPENAI_API_KEY": "ok"}
    assert resolve_endpoints(env=env) == [Endpoint("url", "http://openai:1/v1", "ok")]
    env["LLF_BASE_URL"] = "http://llf:1"
    assert resolve_endpoints(env=env)[0].base_url == "http://llf:1/v1"


def test_endpoint_flag_picks_an_entry_of_the_default_file(home: dict[str, str]) -> None:
    env = {**home, "LLF_BASE_URL": "http://ignored/v1", "LLF_API_KEY": "envkey"}
    (lab,) = resolve_endpoints(endpoint_name="lab", env=env)
    assert lab.base_url == "http://10.0.0.5:8000/v1"
    assert lab.api_key == "envkey"  # the entry has none


def test_endpoints_flag_reads_another_file(tmp_path: Path) -> None:
    path = write(tmp_path / "other.yml", "endpoints: [{name: x, base_url: 'http://x:1/v1'}]\n")
    (x,) = resolve_endpoints(endpoints_file=str(path), api_key="flag", queue_threshold=3, env={})
    assert (x.name, x.api_key, x.queue_threshold) == ("x", "flag", 3.0)


def test_entry_threshold_beats_the_global_one(home: dict[str, str]) -> None:
    local, lab = resolve_endpoints(queue_threshold=10, env=home)
    assert (local.queue_threshold, lab.queue_threshold) == (10.0, 4.0)


def test_model_flag_and_env_override_entries(home: dict[str, str]) -> None:
    assert {e.model for e in resolve_endpoints(env={**home, "LLF_MODEL": "big"})} == {"big"}
    assert {e.model for e in resolve_endpoints(model="m", env=home)} == {"m"}


def test_unknown_endpoint_name_lists_the_known_ones(home: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_endpoints(endpoint_name="nope", env=home)
    assert "no endpoint named 'nope'" in info.value.one_line()
    assert "choose one of: local, lab" in info.value.one_line()


def test_missing_endpoints_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        resolve_endpoints(endpoints_file=str(tmp_path / "none.yml"), env={})


def test_url_and_endpoints_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot be combined"):
        resolve_endpoints(url="http://a/v1", endpoint_name="b", env={})


# --- inventory ------------------------------------------------------------------------


HOSTS = """\
all:
  vars:
    llf_server_port: 8100
  children:
    controllers:
      hosts:
        ctl: {}
    llf_servers:
      vars:
        llf_smoke_expected_model: smol
      hosts:
        gpu1:
          ansible_host: 10.1.0.1
        gpu2:
      children:
        llf_tls:
          vars:
            llf_server_scheme: https
          hosts:
            edge.example:
              llf_server_port: 8443
"""


def test_inventory_hosts_urls_keys_and_expected_model(tmp_path: Path) -> None:
    write(tmp_path / "hosts.yml", HOSTS)
    write(tmp_path / "group_vars" / "all" / "main.yml", "llf_server_api_key: plainkey\n")
    write(tmp_path / "host_vars" / "gpu2.yml", "llf_server_port: 9000\n")
    inventory = load_inventory(tmp_path)
    assert inventory.notes == []
    by_name = {e.name: e for e in inventory.endpoints}
    assert set(by_name) == {"gpu1", "gpu2", "edge.example"}  # not ctl
    assert by_name["gpu1"].base_url == "http://10.1.0.1:8100/v1"
    assert by_name["gpu2"].base_url == "http://gpu2:9000/v1"
    assert by_name["edge.example"].base_url == "https://edge.example:8443/v1"
    assert {e.api_key for e in inventory.endpoints} == {"plainkey"}
    assert {e.model for e in inventory.endpoints} == {"smol"}


def test_inventory_defaults_port_8000_and_reads_templates(tmp_path: Path) -> None:
    write(tmp_path / "hosts.yaml", "llf_servers:\n  hosts:\n    srv: {ansible_host: '::1'}\n")
    write(
        tmp_path / "group_vars" / "all.yml",
        "llf_vllm_key: abc\nllf_server_api_key: '{{ llf_vllm_key }}'\n",
    )
    write(tmp_path / "group_vars" / "llf_servers" / "tls.yml", "llf_server_tls: true\n")
    (srv,) = load_inventory(tmp_path).endpoints
    assert srv.base_url == "https://[::1]:8000/v1"
    assert srv.api_key == "abc"
    assert srv.model is None


VAULTED = """\
llf_server_api_key: !vault |
  $ANSIBLE_VAULT;1.1;AES256
  6231336134383436
"""


def test_vault_encrypted_key_is_skipped_with_a_message(tmp_path: Path) -> None:
    write(tmp_path / "hosts.yml", "all:\n  children:\n    llf_servers:\n      hosts: {s1: }\n")
    write(tmp_path / "group_vars" / "all" / "vault.yml", VAULTED)
    inventory = load_inventory(tmp_path)
    assert inventory.endpoints[0].api_key is None
    assert inventory.notes == [
        "s1: llf_server_api_key is vault-encrypted, skipped; pass it with --api-key or LLF_API_KEY"
    ]
    inventory = load_inventory(tmp_path, api_key="given")
    assert inventory.endpoints[0].api_key == "given"
    assert "using --api-key/LLF_API_KEY instead" in inventory.notes[0]


def test_unresolvable_template_key_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "hosts.yml", "llf_servers:\n  hosts: {s1: {llf_server_api_key: 7}}\n")
    write(tmp_path / "group_vars" / "all" / "empty.yml", "")
    inventory = load_inventory(tmp_path)
    assert inventory.endpoints[0].api_key == "7"

    write(tmp_path / "host_vars" / "s1" / "k.yml", "llf_server_api_key: '{{ lookup(x) }}'\n")
    inventory = load_inventory(tmp_path)
    assert inventory.endpoints[0].api_key is None
    assert "llf_server_api_key is a template, skipped" in inventory.notes[-1]


def test_a_whole_vault_file_needs_the_vault_password(tmp_path: Path) -> None:
    write(tmp_path / "hosts.yml", "llf_servers:\n  hosts: {s1: }\n")
    write(tmp_path / "group_vars" / "all" / "secret.yml", "$ANSIBLE_VAULT;1.1;AES256\n3131\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(tmp_path)
    message = info.value.one_line()
    assert message == (
        f"inventory {tmp_path}: ansible-inventory could not read it: Attempting to decrypt but no "
        "vault secrets found. (hint: give Ansible the vault password (ANSIBLE_VAULT_PASSWORD_FILE=...))"
    )


def test_group_precedence_is_ansibles(tmp_path: Path) -> None:
    """A child group's vars beat its parent's, group_vars files beat hosts.yml's group vars."""
    write(
        tmp_path / "hosts.yml",
        "all:\n  vars: {llf_server_port: 1}\n  children:\n    llf_servers:\n      vars: {llf_server_port: 2}\n"
        "      children:\n        gpu:\n          vars: {llf_server_port: 3}\n          hosts: {g1: }\n"
        "      hosts: {s1: }\n",
    )
    write(tmp_path / "group_vars" / "llf_servers.yml", "llf_server_api_key: k\n")
    by_name = {e.name: e for e in load_inventory(tmp_path).endpoints}
    assert by_name["s1"].base_url == "http://s1:2/v1"
    assert by_name["g1"].base_url == "http://g1:3/v1"
    assert by_name["g1"].api_key == "k"


def test_ansible_inventory_comes_from_the_venv_else_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llf_client import config

    assert config.ansible_inventory_command() == str(Path(sys.executable).parent / "ansible-inventory")
    monkeypatch.setattr(config.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="ansible-inventory not found"):
        config.ansible_inventory_command()
    tool = tmp_path / "ansible-inventory"
    tool.write_text("#!/bin/sh\necho '{not json'\n")
    tool.chmod(0o755)
    assert config.ansible_inventory_command() == str(tool)
    with pytest.raises(ConfigError, match="ansible-inventory printed no JSON"):
        load_inventory(tmp_path)


def test_ca_cert_is_read_and_trusted_by_the_client(tmp_path: Path) -> None:
    from llf_client.client import EndpointClient

    pem = tmp_path / "gateway.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=gw",
         "-keyout", str(tmp_path / "gateway.key"), "-out", str(pem)],
        check=True, capture_output=True,
    )
    text = f"endpoints:\n  - {{name: gw, base_url: 'https://10.0.0.9:8443/v1', ca_cert: '{pem}'}}\n"
    endpoint = load_endpoints_file(write(tmp_path / "e.yml", text))[0]
    assert endpoint.ca_cert == str(pem)
    client = EndpointClient(endpoint)
    assert client.http.verify == str(pem)
    plain = EndpointClient(Endpoint("local", "http://127.0.0.1:8000/v1"))
    assert plain.http.verify is True


def test_missing_ca_cert_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    pem = tmp_path / "gone" / "gateway.pem"
    text = f"endpoints:\n  - {{name: gw, base_url: 'https://10.0.0.9:8443/v1', ca_cert: '{pem}'}}\n"
    with pytest.raises(ConfigError) as err:
        load_endpoints_file(write(tmp_path / "e.yml", text))
    message = err.value.one_line()
    assert f"ca_cert {pem} is not a file" in message
    assert "run the deploy again" in message
    assert "\n" not in message
