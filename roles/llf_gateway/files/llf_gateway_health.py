#!/usr/bin/env python3
"""Active health checks for the LLF gateway (nginx open source has only passive ones).

Every few seconds GET /health on each backend; a backend that fails, or that a
rolling update has drained (a file named after it in the drain directory), is
written as `down` in nginx's upstream file, and nginx is reloaded when that file
changes (with `reload_command` in the configuration; else a systemd path unit
that watches the file does it, so this checker needs no privilege). A reload is
graceful: requests in flight finish on the old workers.

With `metrics_file` in the configuration, each check also writes what it saw in
Prometheus' text format, for node exporter's textfile collector:
`llf_gateway_backend_up{server}` (1 while /health answers 200),
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


def healthy(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our backends
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def render(config: dict, up: dict[str, bool], drained: set[str]) -> str:
    lines = [
        "# Written by llf-gateway-health: do not edit.",
        f"upstream {config['upstream']} {{",
        "    least_conn;",
    ]
    live = [b for b in config["backends"] if up.get(b["name"]) and b["name"] not in drained]
    for backend in config["backends"]:
        name = backend["name"]
        down = name in drained or (not up.get(name) and bool(live))
        flags = f" max_fails={config.get('max_fails', 1)} fail_timeout={config.get('fail_timeout', '10s')}"
        lines.append(f"    server {backend['address']}:{backend['port']}{flags}{' down' if down else ''};  # {name}")
    lines += [f"    keepalive {config.get('keepalive', 16)};", "}", ""]
    return "\n".join(lines)


def label(value: str) -> str:
    """A label value quoted as Prometheus' text format wants it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_metrics(up: dict[str, bool], drained: set[str], now: float) -> str:
    families = [
        ("llf_gateway_backend_up", "1 while the server's /health answers 200, else 0.",
         {name: int(ok) for name, ok in up.items()}),
        ("llf_gateway_backend_drained", "1 while a rolling update drains the server, else 0.",
         {name: int(name in drained) for name in up}),
    ]
    lines = []
    for metric, help_text, values in families:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f"{metric}{{server={label(name)}}} {value}" for name, value in sorted(values.items())]
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


def check_once(config: dict) -> bool:
    """Probe every backend, rewrite the upstream file; True when it changed."""
    timeout = float(config.get("timeout", 3))
    up = {
        b["name"]: healthy(f"http://{b['address']}:{b['port']}/health", timeout) for b in config["backends"]
    }
    drain_dir = Path(config["drain_dir"])
    drained = {p.name for p in drain_dir.iterdir()} if drain_dir.is_dir() else set()
    if config.get("metrics_file"):
        write_atomically(Path(config["metrics_file"]), render_metrics(up, drained, time.time()))
    text = render(config, up, drained)
    target = Path(config["upstream_file"])
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return False
    write_atomically(target, text)
    states = ", ".join(
        f"{n}={'drained' if n in drained else ('up' if ok else 'down')}" for n, ok in sorted(up.items())
    )
    print(f"upstream changed: {states}", flush=True)
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
    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    if args.once:
        changed = check_once(config)
        print(json.dumps({"changed": changed}))
        return 0
    while True:  # pragma: no cover - the service loop; check_once is tested
        check_once(config)
        time.sleep(float(config.get("interval", 5)))


if __name__ == "__main__":
    sys.exit(main())
