#!/usr/bin/python
"""Ansible module: the hardware and platform facts LLF decides on."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys

DOCUMENTATION = r"""
module: llf_host_facts
short_description: Gather the hardware and platform facts LLF needs
description:
  - Reads the OS, Python, CPU flags (AVX-512, AMX), cores, memory, free disk at the
    given paths, NVIDIA GPUs (from nvidia-smi) and whether systemd is PID 1.
  - Returns them as the fact C(llf_host) and changes nothing.
options:
  disk_paths:
    description: Labels and the paths whose free space to report under those labels; a
      path that does not exist yet is measured at its nearest existing parent.
    type: dict
    default: {}
  nvidia_smi:
    description: The nvidia-smi command to query.
    type: str
    default: nvidia-smi
author: LLF
"""

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
GIB = 1024**3


def read_os_release(path: str = "/etc/os-release") -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    values[key] = value.strip().strip('"')
    except OSError:
        pass
    return values


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, float]:
    values: dict[str, float] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                match = re.match(r"(\w+):\s+(\d+)\s*kB", line)
                if match:
                    values[match.group(1)] = int(match.group(2)) * 1024 / GIB
    except OSError:
        pass
    return values


def free_gb(path: str) -> float:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return round(shutil.disk_usage(probe).free / GIB, 1)


def parse_nvidia_smi(text: str) -> list[dict[str, object]]:
    gpus = []
    for line in text.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4:
            continue
        name, memory_mib, capability, driver = parts[:4]
        try:
            memory_gb = round(float(memory_mib) / 1024, 1)
        except ValueError:
            memory_gb = 0.0
        gpus.append(
            {"name": name, "memory_gb": memory_gb, "compute_capability": capability, "driver": driver}
        )
    return gpus


def query_gpus(command: str) -> tuple[list[dict[str, object]], str]:
    executable = shutil.which(command)
    if not executable:
        return [], "nvidia-smi not found"
    try:
        result = subprocess.run(
            [
                executable,
                "--query-gpu=name,memory.total,compute_cap,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"nvidia-smi failed: {err}"
    if result.returncode != 0:
        return [], f"nvidia-smi failed: {(result.stderr or result.stdout).strip()[:200]}"
    return parse_nvidia_smi(result.stdout), ""


def pid1_is_systemd(comm_path: str = "/proc/1/comm") -> bool:
    try:
        with open(comm_path, encoding="utf-8") as handle:
            return handle.read().strip() == "systemd"
    except OSError:
        return False


def gather(disk_paths: dict[str, str], nvidia_smi: str = "nvidia-smi") -> dict[str, object]:
    os_release = read_os_release()
    cpu_model, flags = read_cpuinfo()
    meminfo = read_meminfo()
    gpus, gpu_note = query_gpus(nvidia_smi)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return {
        "system": platform.system(),
        "os_id": os_release.get("ID", ""),
        "os_like": os_release.get("ID_LIKE", ""),
        "os_version": os_release.get("VERSION_ID", ""),
        "os_name": os_release.get("PRETTY_NAME", ""),
        "arch": platform.machine(),
        "python_version": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_cores": cores,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "mem_total_gb": round(meminfo.get("MemTotal", 0.0), 1),
        "mem_available_gb": round(meminfo.get("MemAvailable", 0.0), 1),
        "disk_free_gb": {label: free_gb(path) for label, path in disk_paths.items()},
        "gpus": gpus,
        "gpu_note": gpu_note,
        "gpu_memory_gb": round(sum(float(gpu["memory_gb"]) for gpu in gpus), 1),
        "systemd_pid1": pid1_is_systemd(),
    }


def main() -> None:  # pragma: no cover - exercised through Ansible in the e2e tests
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "disk_paths": {"type": "dict", "default": {}},
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
        },
        supports_check_mode=True,
    )
    facts = gather(module.params["disk_paths"], module.params["nvidia_smi"])
    module.exit_json(changed=False, ansible_facts={"llf_host": facts}, python=sys.executable)


if __name__ == "__main__":
    main()
