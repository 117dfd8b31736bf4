#!/usr/bin/env python3
"""Active health checks for the LLF gateway (nginx open source has only passive ones).

The configuration (backends.json) lists the servers, each with the models it serves
(its main model on llf_server_port, the others on their own ports). Every few seconds
GET /health on each (server, port); nginx's upstream file gets one upstream per served
model (least connections), named by `upstream_name`, with every server that serves it.
A model's instance that fails is written as `down` in its model's upstream; a server
that a rolling update has drained (a file named after it in the drain directory) is
`down` in the upstreams of all its models. nginx is reloaded when that file changes
(with `reload_command` in the configuration; else a systemd path unit that watches
the file does it, so this checker needs no privilege). A reload is graceful: requests
in flight finish on the old workers.

It also writes the fleet's models in OpenAI's list format (`models_file`), which the
gateway answers GET /v1/models with and its router (llf_gateway_route.js) reads to
tell a model it serves from one it does not.

With `metrics_file` in the configuration, each check also writes what it saw in
Prometheus' text format, for node exporter's textfile collector:
`llf_gateway_backend_up{server}` (1 while every model of the server answers 200 on
/health), `llf_gateway_model_up{server,model}` (one model's service),
`llf_gateway_backend_drained{server}` (1 while a rolling update drains it) and
`llf_gateway_health_check_timestamp_seconds` (monitoring/prometheus/llf-rules.yml
alerts on them).

    llf_gateway_health.py --config /etc/llf/gateway/backends.json [--once]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """backends.json does not say what the checker needs."""


def upstream_name(served_name: str) -> str:
    """nginx's upstream for a served model: its name's UTF-8 bytes in hex (any name is
    then a valid, distinct nginx identifier). llf_gateway_route.js computes the same."""
    return "llf_model_" + served_name.encode("utf-8").hex()


def parse_config(data: Any) -> dict[str, Any]:
    """The checker's configuration (backends.json, already JSON-decoded), checked.

    Each backend: {"name", "address", "models": [{"served_name", "port", "name"?,
    "kind"?, "max_model_len"?}]}. Raises ConfigError naming what is wrong.
    """
    if not isinstance(data, dict) or not isinstance(data.get("backends"), list):
        raise ConfigError("the configuration must be an object with a list of backends")
    for key in ("upstream_file", "drain_dir"):
        if not isinstance(data.get(key), str):
            raise ConfigError(f"the configuration needs {key}")
    for backend in data["backends"]:
        if not isinstance(backend, dict) or not all(isinstance(backend.get(k), str) for k in ("name", "address")):
            raise ConfigError(f"backend {backend!r} needs a name and an address")
        models = backend.get("models")
        if not isinstance(models, list) or not models:
            raise ConfigError(f"backend {backend['name']} needs a list of models (served_name, port)")
        for model in models:
            if (not isinstance(model, dict) or not isinstance(model.get("served_name"), str)
                    or not model["served_name"] or not isinstance(model.get("port"), int)):
                raise ConfigError(f"backend {backend['name']}: model {model!r} needs a served_name and a port")
    return data


def read_config(path: Path) -> dict[str, Any]:
    """backends.json from disk: the one reader of its format."""
    config = parse_config(json.loads(path.read_text(encoding="utf-8")))
    config.setdefault("created", int(path.stat().st_mtime))
    return config


def healthy(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our backends
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def instances(config: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(server, address, port, served name) for every model of every server."""
    return [(b["name"], b["address"], m["port"], m["served_name"]) for b in config["backends"] for m in b["models"]]


def served_models(config: dict[str, Any]) -> dict[str, list[tuple[str, str, int]]]:
    """served name -> its (server, address, port), in the order the backends list them."""
    models: dict[str, list[tuple[str, str, int]]] = {}
    for server, address, port, served in instances(config):
        models.setdefault(served, []).append((server, address, port))
    return models


def render(config: dict[str, Any], up: dict[tuple[str, int], bool], drained: set[str]) -> str:
    """nginx's upstream file: one upstream per served model. `up` is keyed by (server, port)."""
    lines = ["# Written by llf-gateway-health: do not edit."]
    flags = f" max_fails={config.get('max_fails', 1)} fail_timeout={config.get('fail_timeout', '10s')}"
    for served, members in served_models(config).items():
        lines += [f"# model {json.dumps(served)}", f"upstream {upstream_name(served)} {{", "    least_conn;"]
        live = [m for m in members if up.get((m[0], m[2])) and m[0] not in drained]
        for server, address, port in members:
            # an unhealthy one stays in while none of the model's servers is healthy: nginx tries them
            down = server in drained or (not up.get((server, port)) and bool(live))
            mark = " down" if down else ""
            note = " drained" if server in drained else ""
            lines.append(f"    server {address}:{port}{flags}{mark};  # {server}{note}")
        lines += [f"    keepalive {config.get('keepalive', 16)};", "}"]
    lines.append("")
    return "\n".join(lines)


def render_models(config: dict[str, Any]) -> str:
    """The fleet's models in OpenAI's list format (GET /v1/models)."""
    entries: dict[str, dict[str, Any]] = {}
    for backend in config["backends"]:
        for model in backend["models"]:
            entry = entries.setdefault(model["served_name"], {
                "id": model["served_name"], "object": "model", "created": int(config.get("created", 0)),
                "owned_by": "vllm",
            })
            length = model.get("max_model_len")
            if isinstance(length, int) and length > 0:  # the smallest the model's servers take
                entry["max_model_len"] = min(length, entry.get("max_model_len", length))
    return json.dumps({"object": "list", "data": list(entries.values())}, indent=1) + "\n"


def label(value: str) -> str:
    """A label value quoted as Prometheus' text format wants it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_metrics(config: dict[str, Any], up: dict[tuple[str, int], bool], drained: set[str], now: float) -> str:
    servers = [b["name"] for b in config["backends"]]
    server_up = {s: int(all(up.get((n, p), False) for n, _, p, _ in instances(config) if n == s)) for s in servers}
    families: list[tuple[str, str, list[tuple[str, int]]]] = [
        ("llf_gateway_backend_up", "1 while every model of the server answers 200 on /health, else 0.",
         [(f"server={label(s)}", v) for s, v in sorted(server_up.items())]),
        ("llf_gateway_model_up", "1 while the server's service of the model answers 200 on /health, else 0.",
         sorted((f"server={label(s)},model={label(m)}", int(up.get((s, p), False)))
                for s, _, p, m in instances(config))),
        ("llf_gateway_backend_drained", "1 while a rolling update drains the server, else 0.",
         [(f"server={label(s)}", int(s in drained)) for s in sorted(servers)]),
    ]
    lines = []
    for metric, help_text, samples in families:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f"{metric}{{{labels}}} {value}" for labels, value in samples]
    lines += [
        "# HELP llf_gateway_health_check_timestamp_seconds When the health checker last probed the servers.",
        "# TYPE llf_gateway_health_check_timestamp_seconds gauge",
        f"llf_gateway_health_check_timestamp_seconds {now:.3f}",
        "",
    ]
    return "\n".join(lines)


def write_atomically(target: Path, text: str) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def write_if_changed(target: Path, text: str) -> bool:
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return False
    write_atomically(target, text)
    return True


def describe(config: dict[str, Any], up: dict[tuple[str, int], bool], drained: set[str]) -> str:
    """'a=up, b=drained': each server (down when one of its models is), then each model's
    port of the servers that serve several ('b:8001=down')."""
    states = []
    for backend in sorted(config["backends"], key=lambda b: b["name"]):
        server, ports = backend["name"], [m["port"] for m in backend["models"]]
        ok = all(up.get((server, port), False) for port in ports)
        states.append(f"{server}={'drained' if server in drained else ('up' if ok else 'down')}")
        if len(ports) > 1:
            states += [f"{server}:{port}={'up' if up.get((server, port)) else 'down'}" for port in ports]
    return ", ".join(states)


def check_once(config: dict[str, Any]) -> bool:
    """Probe every (server, port), rewrite the upstream file; True when it changed."""
    timeout = float(config.get("timeout", 3))
    up = {(server, port): healthy(f"http://{address}:{port}/health", timeout)
          for server, address, port, _ in instances(config)}
    drain_dir = Path(config["drain_dir"])
    drained = {p.name for p in drain_dir.iterdir()} if drain_dir.is_dir() else set()
    if config.get("metrics_file"):
        write_atomically(Path(config["metrics_file"]), render_metrics(config, up, drained, time.time()))
    if config.get("models_file"):
        write_if_changed(Path(config["models_file"]), render_models(config))
    if not write_if_changed(Path(config["upstream_file"]), render(config, up, drained)):
        return False
    print(f"upstream changed: {describe(config, up, drained)}", flush=True)
    if not config.get("reload_command"):
        return True
    result = subprocess.run(config["reload_command"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"nginx reload failed: {(result.stderr or result.stdout).strip()}", file=sys.stderr, flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Active health checks for the LLF gateway.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--once", action="store_true", help="check once and exit")
    args = parser.parse_args(argv)
    try:
        config = read_config(Path(args.config))
    except (OSError, ValueError) as error:  # ConfigError and json's errors are ValueErrors
        print(f"{args.config}: {error}", file=sys.stderr)
        return 2
    if args.once:
        changed = check_once(config)
        print(json.dumps({"changed": changed}))
        return 0
    while True:  # pragma: no cover - the service loop; check_once is tested
        check_once(config)
        time.sleep(float(config.get("interval", 5)))


if __name__ == "__main__":
    sys.exit(main())
