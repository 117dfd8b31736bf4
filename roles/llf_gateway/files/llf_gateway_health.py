#!/usr/bin/env python3
"""Active health checks for the LLF gateway (nginx open source has only passive ones).

Every few seconds GET /health on each backend; a backend that fails, or that a
rolling update has drained (a file named after it in the drain directory), is
written as `down` in nginx's upstream file, and nginx is reloaded when that file
changes (with `reload_command` in the configuration; else a systemd path unit
that watches the file does it, so this checker needs no privilege). A reload is
graceful: requests in flight finish on the old workers.

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


def check_once(config: dict) -> bool:
    """Probe every backend, rewrite the upstream file; True when it changed."""
    timeout = float(config.get("timeout", 3))
    up = {
        b["name"]: healthy(f"http://{b['address']}:{b['port']}/health", timeout) for b in config["backends"]
    }
    drain_dir = Path(config["drain_dir"])
    drained = {p.name for p in drain_dir.iterdir()} if drain_dir.is_dir() else set()
    text = render(config, up, drained)
    target = Path(config["upstream_file"])
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return False
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
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
