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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_SERVER_PORT = 8000
INVENTORY_GROUP = "llf_servers"


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible server."""

    name: str
    base_url: str  # ends in /v1 (no trailing slash)
    api_key: str | None = None
    model: str | None = None  # the model to ask (smoke: the expected served name)
    queue_threshold: float | None = None  # burst away when more requests wait
    ca_cert: str | None = None  # a PEM file to trust for https (e.g. the gateway's certificate)

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
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
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
        return yaml.load(text, Loader=_AnsibleLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{at}", where=where, hint="fix the file") from err


def load_endpoints_file(path: Path) -> list[Endpoint]:
    """Read an endpoints file (the format the deploy writes)."""
    where = f"endpoints file {path}"
    data = _read_yaml(path, where)
    hint = "expected 'endpoints:' with a list of entries with name and base_url"
    if not isinstance(data, dict) or not isinstance(data.get("endpoints"), list):
        raise ConfigError("no 'endpoints' list", where=where, hint=hint)
    if not data["endpoints"]:
        raise ConfigError("the 'endpoints' list is empty", where=where, hint=hint)
    endpoints: list[Endpoint] = []
    for index, entry in enumerate(data["endpoints"], start=1):
        at = f"{where}, entry {index}"
        if not isinstance(entry, dict):
            raise ConfigError("an entry must be a mapping", where=at, hint=hint)
        name = _optional_str(entry.get("name"), "name", at)
        base_url = _optional_str(entry.get("base_url"), "base_url", at)
        if not name or not base_url:
            raise ConfigError("name and base_url are required", where=at, hint=hint)
        if any(e.name == name for e in endpoints):
            raise ConfigError(f"duplicate endpoint name {name!r}", where=at)
        ca_cert = _optional_str(entry.get("ca_cert"), "ca_cert", at)
        if ca_cert is not None and not Path(ca_cert).is_file():
            raise ConfigError(
                f"ca_cert {ca_cert} is not a file",
                where=at,
                hint="run the deploy again (it copies the gateway's certificate there) or correct the path",
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
    env: Mapping[str, str] | None = None,
) -> list[Endpoint]:
    """The endpoints to use, in priority order (see the module docstring).

    The arguments are the command-line options; the environment is read here.
    """
    env = os.environ if env is None else env
    if url and (endpoints_file or endpoint_name):
        raise ConfigError(
            "--url cannot be combined with --endpoints/--endpoint",
            hint="give either one URL or endpoints from a file",
        )
    env_key = env.get("LLF_API_KEY") or env.get("OPENAI_API_KEY") or None
    model = model or env.get("LLF_MODEL") or None

    if url:
        endpoints = [Endpoint("url", normalize_url(url))]
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
        endpoints = [Endpoint("url", normalize_url(env[var], where=var))]
    elif default_endpoints_path(env).is_file():
        endpoints = load_endpoints_file(default_endpoints_path(env))
    else:
        endpoints = [Endpoint("local", DEFAULT_BASE_URL)]

    return [
        replace(
            e,
            api_key=api_key or e.api_key or env_key,
            model=model or e.model,
            queue_threshold=e.queue_threshold if e.queue_threshold is not None else queue_threshold,
        )
        for e in endpoints
    ]


# --- Ansible inventory --------------------------------------------------------------


class VaultValue(str):
    """A `!vault` value: encrypted, so unknown to the client."""


class _AnsibleLoader(yaml.SafeLoader):
    """SafeLoader that reads Ansible's `!vault` and `!unsafe` tags."""


def _vault(loader: yaml.SafeLoader, node: yaml.Node) -> VaultValue:
    return VaultValue(loader.construct_scalar(node))


def _unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))


_AnsibleLoader.add_constructor("!vault", _vault)
_AnsibleLoader.add_constructor("!unsafe", _unsafe)


@dataclass
class Inventory:
    endpoints: list[Endpoint]
    notes: list[str]  # things skipped, for the user to read


def _vars_files(directory: Path, name: str) -> list[Path]:
    """Ansible's group_vars/NAME.yml and group_vars/NAME/*.yml (same for host_vars)."""
    files = [directory / f"{name}{ext}" for ext in (".yml", ".yaml", "")]
    found = [f for f in files if f.is_file()]
    folder = directory / name
    if folder.is_dir():
        found += sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml"))
    return found


def _read_vars(paths: list[Path], notes: list[str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        if path.read_text(encoding="utf-8", errors="replace").startswith("$ANSIBLE_VAULT"):
            notes.append(f"{path} is vault-encrypted: its variables were not read")
            continue
        data = _read_yaml(path, f"inventory file {path}")
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError("variables must be a mapping", where=f"inventory file {path}")
        merged.update(data)
    return merged


def _find_group(groups: Mapping[str, Any], name: str) -> tuple[list[dict[str, Any]], Any] | None:
    """The group named `name` anywhere in the tree, with the vars of its ancestors."""
    for group_name, group in groups.items():
        group = group or {}
        if not isinstance(group, dict):
            continue
        if group_name == name:
            return [], group
        children = group.get("children") or {}
        if isinstance(children, dict):
            found = _find_group(children, name)
            if found is not None:
                ancestors, target = found
                return [group.get("vars") or {}, *ancestors], target
    return None


def _group_hosts(
    group: dict[str, Any], inherited: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """host name -> the layers of inventory vars for it, lowest precedence first."""
    layers = [*inherited, group.get("vars") or {}]
    hosts: dict[str, list[dict[str, Any]]] = {}
    for child in (group.get("children") or {}).values():
        for host, host_layers in _group_hosts(child or {}, layers).items():
            hosts.setdefault(host, host_layers)
    for host, host_vars in (group.get("hosts") or {}).items():
        hosts[str(host)] = [*layers, host_vars or {}]
    return hosts


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


def load_inventory(directory: str | Path, *, api_key: str | None = None) -> Inventory:
    """The servers of group `llf_servers` in an Ansible inventory folder.

    `api_key` (from --api-key or LLF_API_KEY) stands in for a key the inventory keeps
    encrypted.
    """
    folder = Path(directory).expanduser()
    hosts_file = next(
        (folder / n for n in ("hosts.yml", "hosts.yaml") if (folder / n).is_file()), None
    )
    if hosts_file is None:
        raise ConfigError(
            "no hosts.yml",
            where=f"inventory {folder}",
            hint="pass the inventory folder, like inventories/local",
        )
    notes: list[str] = []
    tree = _read_yaml(hosts_file, f"inventory file {hosts_file}")
    if not isinstance(tree, dict):
        raise ConfigError("not an inventory (expected a mapping)", where=str(hosts_file))
    found = _find_group(tree, INVENTORY_GROUP)
    if found is None:
        raise ConfigError(
            f"no group {INVENTORY_GROUP}",
            where=str(hosts_file),
            hint=f"put the servers under all.children.{INVENTORY_GROUP}.hosts",
        )
    ancestors, group = found
    hosts = _group_hosts(group, ancestors)
    if not hosts:
        raise ConfigError(f"group {INVENTORY_GROUP} has no hosts", where=str(hosts_file))

    all_group = tree.get("all") if isinstance(tree.get("all"), dict) else {}
    base = {
        **((all_group or {}).get("vars") or {}),
        **_read_vars(_vars_files(folder / "group_vars", "all"), notes),
    }
    group_files = _read_vars(_vars_files(folder / "group_vars", INVENTORY_GROUP), notes)

    endpoints: list[Endpoint] = []
    for host, layers in hosts.items():
        variables: dict[str, Any] = dict(base)
        for layer in layers[:-1]:
            variables.update(layer)
        variables.update(group_files)
        variables.update(layers[-1])
        variables.update(_read_vars(_vars_files(folder / "host_vars", host), notes))
        endpoints.append(_inventory_endpoint(host, variables, api_key, notes, str(hosts_file)))
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
    if isinstance(key, VaultValue) or (isinstance(key, str) and "{{" in key):
        kind = "vault-encrypted" if isinstance(key, VaultValue) else "a template"
        instead = (
            "using --api-key/LLF_API_KEY instead"
            if api_key
            else ("pass it with --api-key or LLF_API_KEY")
        )
        notes.append(f"{host}: llf_server_api_key is {kind}, skipped; {instead}")
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
