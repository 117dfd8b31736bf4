"""Jinja filters: the vLLM services of one host, one per model it serves."""

from __future__ import annotations

import math
import re
from typing import Any

_CPU_LIST = re.compile(r"^[0-9]+([-,|][0-9]+)*$")


def split_cores(cores: int, count: int) -> list[str]:
    """Contiguous core ranges, one per model: equal shares, the remainder to the first."""
    share, rest = divmod(cores, count)
    ranges, start = [], 0
    for index in range(count):
        size = share + (rest if index == 0 else 0)
        ranges.append(f"{start}-{start + size - 1}" if size > 1 else str(start))
        start += size
    return ranges


def memory_max(setting: str, model: dict[str, Any], kv_cache_gb: float, engine: str) -> str:
    """systemd's MemoryMax= for one model's service ('' for none)."""
    setting = str(setting)
    if setting == "infinity":
        return ""
    if setting != "auto":
        return setting
    extra_kv = max(0.0, float(kv_cache_gb) - 2) if engine == "vllm-cpu" else 0.0
    return f"{math.ceil((float(model.get('memory_gb', 0)) + extra_kv) * 1.25 * 10) / 10:g}G"


def llf_server_instances(models: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The services of a host: {'instances': [...], 'error': ''}.

    `models` are the catalog entries the host serves (llf_model's llf_model_selected_all),
    the main model first. The main model keeps the single-model names (service
    llf_server_service_name, port llf_server_port, vllm.yaml); every other model gets
    `<service>-<model>`, its own files and the port llf_server_model_ports names, else
    llf_server_port + 1 + its position in the catalog (stable when the list changes).
    With llf_server_cpu_threads_bind 'all' the host's cores are split between the
    models, unless llf_server_model_cpus names a model's cores.
    """
    service = settings["service_name"]
    catalog = list(settings["catalog_names"])
    cores = int(settings["cores"])
    bind = str(settings["cpu_threads_bind"])
    model_cpus = settings.get("model_cpus") or {}
    model_ports = settings.get("model_ports") or {}
    errors: list[str] = []
    if bind == "all" and len(models) > cores and not all(m["name"] in model_cpus for m in models):
        errors.append(f"{len(models)} models need at least {len(models)} cores to bind each to its own, and this "
                      f"host has {cores}: serve fewer models here or set llf_server_model_cpus")
    shares = split_cores(cores, len(models)) if bind == "all" and len(models) <= cores else []
    # GPU hosts: the fraction of GPU memory vLLM may use is shared in proportion to the
    # models' catalog gpu_memory_gb (all of it with one model)
    gpu_total = sum(float(m.get("gpu_memory_gb", 1)) for m in models) or 1.0
    utilization = float(settings.get("gpu_memory_utilization", 0.9))
    instances = []
    for index, model in enumerate(models):
        name = model["name"]
        main = index == 0
        suffix = "" if main else f"-{name}"
        default_port = int(settings["port"]) + 1 + catalog.index(name)
        port = int(settings["port"]) if main else int(model_ports.get(name, default_port))
        if name in model_cpus:
            cpus = str(model_cpus[name])
        elif bind == "all":
            cpus = shares[index] if shares else f"0-{cores - 1}"
        elif bind == "auto" or not main:
            cpus = ""
        else:
            cpus = bind
        if cpus and not _CPU_LIST.match(cpus):
            errors.append(f"llf_server_model_cpus for {name} is {cpus!r}: use a core list such as 0-3 or 1,3")
        # the main model: llf_server_kv_cache_gb; the others: their catalog's kv_cache_gb, else the same
        kv_cache = float(settings["kv_cache_gb"] if main else model.get("kv_cache_gb", settings["kv_cache_gb"]))
        host = settings["local_host"]
        args = model.get("engine_args") or {}
        instances.append({
            "name": name,
            "served_name": model["served_name"],
            "kind": model.get("kind", "chat"),
            "main": main,
            "service": service + suffix,
            "port": port,
            "config": f"{settings['config_dir']}/vllm{suffix}.yaml",
            "env": f"{settings['config_dir']}/vllm{suffix}.env",
            "script": f"{settings['bin_dir']}/{service}{suffix}",
            "cpus": cpus,
            "kv_cache_gb": int(kv_cache) if kv_cache == int(kv_cache) else kv_cache,
            "memory_max": memory_max(settings["memory_max"], model, kv_cache, settings["engine"]),
            "gpu_memory_utilization": round(utilization * float(model.get("gpu_memory_gb", 1)) / gpu_total, 3)
            if len(models) > 1 else utilization,
            "local_url": f"http://{host}:{port}",
            "url": settings["main_url"] if main else f"http://{settings['public_host']}:{port}/v1",
            "max_model_len": args.get("max-model-len", args.get("max_model_len")),
            "model": model,
            "path": settings["model_paths"][name],
        })
    ports = [item["port"] for item in instances]
    for port in sorted({p for p in ports if ports.count(p) > 1}):
        errors.append(f"two models would listen on port {port}: set llf_server_model_ports")
    for port in ports:
        if not 1024 <= port <= 65535:
            errors.append(f"port {port} is outside 1024-65535: set llf_server_port or llf_server_model_ports")
    return {"instances": instances, "error": "; ".join(errors)}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"llf_server_instances": llf_server_instances}
