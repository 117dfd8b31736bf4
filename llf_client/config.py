"""Where the client sends requests: endpoints from options, environment, files.

Order of precedence, first match wins:

1. `--url` (one endpoint named "url");
2. `--endpoints FILE` and/or `--endpoint NAME` (entries of that file, or of the
   default file when only `--endpoint` is given);
3. `LLF_BASE_URL`, then `OPENAI_BASE_URL` (one endpoint named "url");
4. the endpoints file the deploy writes: `$LLF_CONFIG`, else
   `${XDG_CONFIG_HOME:-~/.config}/llf/endpoints.yml`, all its entries in order;
5. `http://127.0.0.1:8000/v1` (one endpoint named "local").

API key: `--api-key` wins for every endpoint; otherwise an entry's own `api_key`;
otherwise `LLF_API_KEY`, then `OPENAI_API_KEY`. Model: `--model` (or `LLF_MODEL`),
otherwise the entry's `model`, otherwise the first model the server lists.

Each entry has a `kind`, `chat` (the default) or `embedding`. A command that sends
requests uses only the entries of its kind (ask and chat: chat; embed: embedding),
and only those serving its model: `--model`, else the first such entry's model; so a
request bursts only to endpoints that serve the same model.

One reader of the endpoints file (`read_endpoint_entries`, used by the client, the load
tests and the deploy's `llf_endpoints` module) and one writer (`write_endpoints_file`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_SERVER_PORT = 8000
INVENTORY_GROUP = "llf_servers"
KINDS = ("chat", "embedding")


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible server."""

    name: str
    base_url: str  # ends in /v1 (no trailing slash)
    api_key: str | None = None
    model: str | None = None  # the model to ask (smoke: the expected served name)
    queue_threshold: float | None = None  # burst away when more requests wait
    ca_cert: str | None = None  # a PEM file to trust for https (e.g. the gateway's certificate)
    kind: str = "chat"  # "chat" or "embedding": which commands use it

    @property
    def root_url(self) -> str:
        """The server root, where /health, /version, /metrics and /tokenize live."""
        return self.base_url.removesuffix("/v1")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.base_url})"


# --- paths --------------------------------------------------------------------------


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "llf"


def default_endpoints_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("LLF_CONFIG"):
        return Path(env["LLF_CONFIG"]).expanduser()
    return config_dir(env) / "endpoints.yml"


def history_path(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "chat_history"


# --- endpoints ----------------------------------------------------------------------


def normalize_url(url: str, *, where: str = "--url") -> str:
    """Check an OpenAI base URL; a bare server root gets /v1 appended."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"not an http(s) URL: {url!r}",
            where=where,
            hint="give the OpenAI base URL, like http://127.0.0.1:8000/v1",
        )
    if not parts.path:
        url += "/v1"
    return url


def _optional_str(value: Any, field: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(f"{field} must be a string", where=where)
    return str(value)


def _optional_number(value: Any, field: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{field} must be a number >= 0", where=where)
    return float(value)


def _read_yaml(path: Path, where: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror or err}", where=where) from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{at}", where=where, hint="fix the file") from err


ENTRIES_HINT = "expected 'endpoints:' with a list of entries with name and base_url"


def read_endpoint_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of an endpoints file as written (mappings, in order; may be empty).

    Checks the shape only; `load_endpoints_file` checks the fields.
    """
    where = f"endpoints file {path}"
    data = _read_yaml(path, where)
    if not isinstance(data, dict) or not isinstance(data.get("endpoints"), list):
        raise ConfigError("no 'endpoints' list", where=where, hint=ENTRIES_HINT)
    entries: list[dict[str, Any]] = []
    for index, entry in enumerate(data["endpoints"], start=1):
        if not isinstance(entry, dict):
            raise ConfigError("an entry must be a mapping", where=f"{where}, entry {index}", hint=ENTRIES_HINT)
        entries.append(entry)
    return entries


ENDPOINTS_HEADER = """\
# The endpoints llf-client and the load tests use, in priority order. The LLF deploy
# keeps the entries it wrote (deployed_by: the inventory) up to date and leaves the
# others alone: add other OpenAI-compatible endpoints to burst to them.
"""


def write_endpoints_file(path: Path, entries: Sequence[Mapping[str, Any]], header: str = ENDPOINTS_HEADER) -> None:
    """Write an endpoints file atomically, mode 0600 (it holds API keys).

    A missing directory is created private (0700); an existing one keeps its mode.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = header + yaml.safe_dump(
        {"endpoints": [dict(e) for e in entries]}, sort_keys=False, default_flow_style=False
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_endpoints_file(path: Path) -> list[Endpoint]:
    """Read an endpoints file (the format the deploy writes)."""
    where = f"endpoints file {path}"
    entries = read_endpoint_entries(path)
    if not entries:
        raise ConfigError("the 'endpoints' list is empty", where=where, hint=ENTRIES_HINT)
    endpoints: list[Endpoint] = []
    for index, entry in enumerate(entries, start=1):
        at = f"{where}, entry {index}"
        name = _optional_str(entry.get("name"), "name", at)
        base_url = _optional_str(entry.get("base_url"), "base_url", at)
        if not name or not base_url:
            raise ConfigError("name and base_url are required", where=at, hint=ENTRIES_HINT)
        if any(e.name == name for e in endpoints):
            raise ConfigError(f"duplicate endpoint name {name!r}", where=at)
        ca_cert = _optional_str(entry.get("ca_cert"), "ca_cert", at)
        if ca_cert is not None and not Path(ca_cert).is_file():
            raise ConfigError(
                f"ca_cert {ca_cert} is not a file",
                where=at,
                hint="run the deploy again (it copies the gateway's certificate there) or correct the path",
            )
        kind = _optional_str(entry.get("kind"), "kind", at) or "chat"
        if kind not in KINDS:
            raise ConfigError(
                f"kind must be chat or embedding, not {kind!r}", where=at, hint="correct the entry's kind"
            )
        endpoints.append(
            Endpoint(
                name=name,
                base_url=normalize_url(base_url, where=at),
                api_key=_optional_str(entry.get("api_key"), "api_key", at),
                model=_optional_str(entry.get("model"), "model", at),
                queue_threshold=_optional_number(
                    entry.get("queue_threshold"), "queue_threshold", at
                ),
                ca_cert=ca_cert,
                kind=kind,
            )
        )
    return endpoints


def resolve_endpoints(
    *,
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    endpoints_file: str | None = None,
    endpoint_name: str | None = None,
    queue_threshold: float | None = None,
    kind: str | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Endpoint]:
    """The endpoints to use, in priority order (see the module docstring).

    The arguments are the command-line options; the environment is read here. `kind`
    (chat or embedding) keeps the file's entries of that kind serving one model; None
    keeps every entry (models, health, smoke, top), those serving `model` when given.
    """
    env = os.environ if env is None else env
    if url and (endpoints_file or endpoint_name):
        raise ConfigError(
            "--url cannot be combined with --endpoints/--endpoint",
            hint="give either one URL or endpoints from a file",
        )
    env_key = env.get("LLF_API_KEY") or env.get("OPENAI_API_KEY") or None
    model = model or env.get("LLF_MODEL") or None

    path: Path | None = None
    if url:
        endpoints = [Endpoint("url", normalize_url(url), kind=kind or "chat")]
    elif endpoints_file or endpoint_name:
        path = Path(endpoints_file).expanduser() if endpoints_file else default_endpoints_path(env)
        if not path.is_file():
            raise ConfigError(
                "no such file",
                where=f"endpoints file {path}",
                hint="run the deploy (it writes this file), or pass --endpoints FILE or --url",
            )
        endpoints = load_endpoints_file(path)
        if endpoint_name:
            chosen = [e for e in endpoints if e.name == endpoint_name]
            if not chosen:
                names = ", ".join(e.name for e in endpoints)
                raise ConfigError(
                    f"no endpoint named {endpoint_name!r}",
                    where=f"endpoints file {path}",
                    hint=f"choose one of: {names}",
                )
            endpoints = chosen
    elif env.get("LLF_BASE_URL") or env.get("OPENAI_BASE_URL"):
        var = "LLF_BASE_URL" if env.get("LLF_BASE_URL") else "OPENAI_BASE_URL"
        endpoints = [Endpoint("url", normalize_url(env[var], where=var), kind=kind or "chat")]
    elif default_endpoints_path(env).is_file():
        path = default_endpoints_path(env)
        endpoints = load_endpoints_file(path)
    else:
        endpoints = [Endpoint("local", DEFAULT_BASE_URL, kind=kind or "chat")]

    if path is not None:
        endpoints, model = _select(endpoints, kind, model, f"endpoints file {path}")
    return [
        replace(
            e,
            api_key=api_key or e.api_key or env_key,
            model=model or e.model,
            queue_threshold=e.queue_threshold if e.queue_threshold is not None else queue_threshold,
        )
        for e in endpoints
    ]


def _select(
    endpoints: list[Endpoint], kind: str | None, model: str | None, where: str
) -> tuple[list[Endpoint], str | None]:
    """The entries of `kind` serving `model` (else the first entry's model), and that model."""
    if kind is not None:
        wrong = {e.kind for e in endpoints} - {kind}
        endpoints = [e for e in endpoints if e.kind == kind]
        if not endpoints:
            command = "llf-client embed" if "embedding" in wrong else "llf-client ask or chat"
            raise ConfigError(
                f"no {kind} endpoint",
                where=where,
                hint=f"deploy a {kind} model (llf_models), pass --url, or use {command} for these",
            )
        model = model or endpoints[0].model
    if model:
        serving = [e for e in endpoints if e.model in (model, None)]
        if not serving:
            served = ", ".join(dict.fromkeys(e.model for e in endpoints if e.model))
            raise ConfigError(
                f"no {kind or ''}{' ' if kind else ''}endpoint serves model {model!r}",
                where=where,
                hint=f"choose one of: {served}",
            )
        endpoints = serving
    return endpoints, model


# --- Ansible inventory --------------------------------------------------------------


@dataclass
class Inventory:
    endpoints: list[Endpoint]
    notes: list[str]  # things skipped, for the user to read


def ansible_inventory_command() -> str:
    """`ansible-inventory` of the running Python's venv, else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ansible-inventory")
    if found is None:
        raise ConfigError(
            "ansible-inventory not found (next to this Python, nor on PATH)",
            hint="run llf-client from llf_venv (make venv installs Ansible), or put Ansible on PATH",
        )
    return found


def inventory_hostvars(source: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`ansible-inventory -i SOURCE --list`: (groups, hostvars) as Ansible resolves them."""
    command = [ansible_inventory_command(), "-i", str(source), "--list"]
    where = f"inventory {source}"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"ansible-inventory failed: {err}", where=where) from err
    # Ansible warns (not fails) on a source it cannot parse, then lists nothing.
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    problems = [line for line in lines if line.startswith("[ERROR]") or "Unable to parse" in line]
    if done.returncode != 0 or problems:
        detail = " ".join(
            line.removeprefix("[ERROR]: ").removeprefix("[WARNING]: ") for line in (problems or lines)[:2]
        )
        hint = "pass the inventory folder, like inventories/local"
        if "vault" in detail.lower():
            hint = "give Ansible the vault password (ANSIBLE_VAULT_PASSWORD_FILE=...)"
        raise ConfigError(f"ansible-inventory could not read it: {detail[:300]}", where=where, hint=hint)
    try:
        data = json.loads(done.stdout)
    except ValueError as err:
        raise ConfigError("ansible-inventory printed no JSON", where=where) from err
    hostvars = (data.get("_meta") or {}).get("hostvars") or {}
    return data, hostvars


def _group_members(groups: Mapping[str, Any], name: str) -> list[str]:
    """The hosts of a group of `ansible-inventory --list`, its children's included, in order."""
    group = groups.get(name) or {}
    hosts = [str(h) for h in group.get("hosts") or []]
    for child in group.get("children") or []:
        hosts += [h for h in _group_members(groups, child) if h not in hosts]
    return hosts


def _is_vault(value: Any) -> bool:
    return isinstance(value, dict) and "__ansible_vault" in value


def _resolve_template(value: Any, variables: Mapping[str, Any]) -> Any:
    """Resolve the simple case `{{ other_var }}`; anything else stays as it is."""
    for _ in range(10):
        if not (isinstance(value, str) and "{{" in value):
            return value
        inner = value.strip()
        if not (inner.startswith("{{") and inner.endswith("}}")):
            return value
        name = inner[2:-2].strip()
        if not name.isidentifier() or name not in variables:
            return value
        value = variables[name]
    return value


def load_inventory(source: str | Path, *, api_key: str | None = None) -> Inventory:
    """The servers of group `llf_servers` of an Ansible inventory, read by `ansible-inventory`.

    `api_key` (from --api-key or LLF_API_KEY) stands in for a key the inventory keeps
    encrypted.
    """
    where = f"inventory {source}"
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(
            "no such file or folder", where=where, hint="pass the inventory folder, like inventories/local"
        )
    groups, hostvars = inventory_hostvars(path)
    if INVENTORY_GROUP not in groups:
        raise ConfigError(
            f"no group {INVENTORY_GROUP}",
            where=where,
            hint=f"put the servers under all.children.{INVENTORY_GROUP}.hosts",
        )
    hosts = _group_members(groups, INVENTORY_GROUP)
    if not hosts:
        raise ConfigError(f"group {INVENTORY_GROUP} has no hosts", where=where)
    notes: list[str] = []
    endpoints = [
        _inventory_endpoint(host, hostvars.get(host) or {}, api_key, notes, where) for host in hosts
    ]
    return Inventory(endpoints=endpoints, notes=notes)


def _inventory_endpoint(
    host: str, variables: Mapping[str, Any], api_key: str | None, notes: list[str], where: str
) -> Endpoint:
    def get(name: str, default: Any = None) -> Any:
        return _resolve_template(variables.get(name, default), variables)

    address = get("ansible_host") or host
    port = get("llf_server_port", DEFAULT_SERVER_PORT)
    for field, value in (("ansible_host", address), ("llf_server_port", port)):
        if isinstance(value, str) and "{{" in value:
            raise ConfigError(
                f"{field} of {host} is a template the client cannot evaluate: {value}",
                where=where,
                hint="set a plain value in the inventory",
            )
    try:
        port_number = 0 if isinstance(port, bool | float) else int(port)
    except (TypeError, ValueError):
        port_number = 0
    if not 0 < port_number < 65536:
        raise ConfigError(f"llf_server_port of {host} is not a port: {port!r}", where=where)
    tls = get("llf_server_scheme") == "https" or get("llf_server_tls") is True
    host_part = f"[{address}]" if ":" in str(address) else str(address)
    base_url = f"{'https' if tls else 'http'}://{host_part}:{port_number}/v1"

    key = get("llf_server_api_key")
    if _is_vault(key) or (isinstance(key, str) and "{{" in key):
        what = "vault-encrypted" if _is_vault(key) else "a template"
        instead = (
            "using --api-key/LLF_API_KEY instead"
            if api_key
            else ("pass it with --api-key or LLF_API_KEY")
        )
        notes.append(f"{host}: llf_server_api_key is {what}, skipped; {instead}")
        key = api_key
    elif key is not None and not isinstance(key, str):
        key = str(key)
    expected = get("llf_smoke_expected_model")
    return Endpoint(
        name=host,
        base_url=base_url,
        api_key=key or None,
        model=str(expected) if expected else None,
    )
