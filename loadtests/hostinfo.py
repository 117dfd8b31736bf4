"""What a bench ran on: the host profile, the server's processes, memory and start.

Read from /proc (and ``nvidia-smi`` when there is one) on this machine, and from the
server's own routes (``/version``, ``/v1/models``, ``/metrics``) wherever it runs. The
hardware is this machine's only when the server listens here; a remote server's is
``unknown`` and its URL takes part in the profile's key instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from llf_client.metrics import Metrics, MetricsParseError
from loadtests.config import verify

PROC = Path("/proc")
UNKNOWN = "unknown"
# the profile's parts that name the machine and the model; versions are recorded, not keyed
KEY_PARTS = ("cpu_model", "cpu_flags_sha", "cores", "memory_gib", "gpu", "model", "server")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_profile(proc: Path = PROC) -> dict[str, Any]:
    """CPU model, flags, logical cores and memory from /proc/cpuinfo and /proc/meminfo."""
    model, flags = UNKNOWN, ""
    for line in _read(proc / "cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == UNKNOWN:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = value.strip()
    mem = re.search(r"^MemTotal:\s+(\d+)\s+kB", _read(proc / "meminfo"), re.M)
    flag_list = sorted(flags.split())
    return {
        "cpu_model": model,
        "cpu_flags": " ".join(flag_list),
        "cpu_flags_sha": hashlib.sha256(" ".join(flag_list).encode()).hexdigest()[:12] if flag_list else UNKNOWN,
        "cores": os.cpu_count() or 0,
        # rounded to whole GiB: the kernel's own share moves MemTotal by a few MiB
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024) if mem else UNKNOWN,
    }


def gpu_profile(run: Callable[..., Any] = subprocess.run) -> str:
    """``nvidia-smi``'s GPU names and memory, ``none`` without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        out = run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    lines = [line.strip() for line in (out.stdout or "").splitlines() if line.strip()]
    return "; ".join(lines) if out.returncode == 0 and lines else UNKNOWN


def is_local(root: str) -> bool:
    """The server's address is one of this machine's."""
    host = urlsplit(root).hostname or ""
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
        return True
    try:
        mine = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
        theirs = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(mine & theirs)


def server_info(root: str, api_key: str | None, ca_cert: str | None = None) -> dict[str, Any]:
    """The engine version (``/version``) and the served models (``/v1/models``)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    info: dict[str, Any] = {"engine_version": UNKNOWN, "models": []}
    try:
        r = requests.get(f"{root}/version", headers=headers, timeout=10, verify=verify(ca_cert))
        if r.status_code == 200:
            info["engine_version"] = str(r.json().get("version", UNKNOWN))
    except (requests.RequestException, ValueError, AttributeError):
        pass
    try:
        r = requests.get(f"{root}/v1/models", headers=headers, timeout=10, verify=verify(ca_cert))
        if r.status_code == 200:
            info["models"] = [
                {"id": m.get("id"), "root": m.get("root"), "max_model_len": m.get("max_model_len")}
                for m in r.json().get("data", [])
            ]
    except (requests.RequestException, ValueError, AttributeError):
        pass
    return info


def host_profile(
    root: str, api_key: str | None, model: str, ca_cert: str | None = None, proc: Path = PROC
) -> dict[str, Any]:
    """The profile a bench is stored and matched under, with its short key."""
    local = is_local(root)
    profile: dict[str, Any] = {"local": local}
    if local:
        profile.update(cpu_profile(proc))
        profile["gpu"] = gpu_profile()
        profile["server"] = "this machine"
    else:
        profile.update(
            {k: UNKNOWN for k in ("cpu_model", "cpu_flags", "cpu_flags_sha", "cores", "memory_gib", "gpu")}
        )
        profile["server"] = root
    info = server_info(root, api_key, ca_cert)
    profile["engine_version"] = info["engine_version"]
    profile["model"] = model
    profile["model_root"] = next((m["root"] for m in info["models"] if m["id"] == model), None)
    profile["key"] = profile_key(profile)
    return profile


def profile_key(profile: dict[str, Any]) -> str:
    """A short hash of the profile's stable parts (``KEY_PARTS``)."""
    stable = {k: profile.get(k) for k in KEY_PARTS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:10]


# -- the server's processes -------------------------------------------------------------


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes = set()
    for name in ("tcp", "tcp6"):
        for line in _read(proc / "net" / name).splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _pids(proc: Path) -> list[int]:
    return [int(p.name) for p in proc.iterdir() if p.name.isdigit()]


def _ppid(pid: int, proc: Path) -> int | None:
    stat = _read(proc / str(pid) / "stat")
    if not stat:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def listener_pid(port: int, proc: Path = PROC) -> int | None:
    """The topmost process holding the socket that listens on ``port`` (None if unseen)."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port, proc)}
    if not inodes:
        return None
    holders = set()
    for pid in _pids(proc):
        try:
            fds = list((proc / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    holders.add(pid)
                    break
            except OSError:
                continue
    for pid in sorted(holders):
        if _ppid(pid, proc) not in holders:
            return pid
    return None


def process_tree(pid: int, proc: Path = PROC) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for p in _pids(proc):
        parent = _ppid(p, proc)
        if parent is not None:
            children.setdefault(parent, []).append(p)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return sorted(tree)


def memory(pids: list[int], proc: Path = PROC) -> dict[str, Any]:
    """Summed RSS (pages shared between the processes count once per process) and PSS."""
    rss = pss = 0
    for pid in pids:
        status = re.search(r"^VmRSS:\s+(\d+)", _read(proc / str(pid) / "status"), re.M)
        rss += int(status.group(1)) if status else 0
        rollup = re.search(r"^Pss:\s+(\d+)", _read(proc / str(pid) / "smaps_rollup"), re.M)
        pss += int(rollup.group(1)) if rollup else 0
    return {"processes": len(pids), "rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1) if pss else None}


def process_started(pid: int, proc: Path = PROC) -> float | None:
    """Wall-clock start of a process (its /proc stat start time after the boot time)."""
    stat = _read(proc / str(pid) / "stat")
    boot = re.search(r"^btime\s+(\d+)", _read(proc / "stat"), re.M)
    if not stat or not boot:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return int(boot.group(1)) + ticks / os.sysconf("SC_CLK_TCK")


def metrics_started(root: str) -> float | None:
    """``process_start_time_seconds`` of the server's /metrics (its API server process)."""
    try:
        text = requests.get(f"{root}/metrics", timeout=10).text
        return Metrics.parse(text).value("process_start_time_seconds")
    except (requests.RequestException, MetricsParseError, AttributeError, KeyError, TypeError, ValueError):
        return None


def server_resources(root: str, pid: int | None = None, startup_seconds: float | None = None) -> dict[str, Any]:
    """Memory and start of the server at ``root``: its process tree when it runs here."""
    out: dict[str, Any] = {"memory": UNKNOWN, "started_at": None, "uptime_seconds": None}
    port = urlsplit(root).port or (443 if root.startswith("https") else 80)
    if pid is None and is_local(root):
        pid = listener_pid(port)
    if pid is not None:
        out["pid"] = pid
        out["memory"] = memory(process_tree(pid))
        out["started_at"] = process_started(pid)
    if out["started_at"] is None:
        out["started_at"] = metrics_started(root)
    if out["started_at"] is not None:
        out["uptime_seconds"] = round(time.time() - out["started_at"], 1)
    out["startup_seconds"] = startup_seconds  # measured only for a server the bench starts
    return out
