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


GIB = 1024**3
MIB = 1024**2
# the catalog's memory_gb counts a KV cache of this size unless the entry names its kv_cache_gb
CATALOG_KV_GB = 2
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "auto": 2}


def core_count(cpus: str, cores: int) -> int:
    """How many cores a core list such as 0-3 or 1,3 names (all of the host's when empty)."""
    if not cpus:
        return cores
    count = 0
    for part in re.split(r"[,|]", cpus):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def kv_bytes_per_token(model: dict[str, Any]) -> int:
    """Bytes of KV cache one token of context takes: a key and a value per KV head and
    layer (the catalog's attention: layers, kv_heads, head_dim) in the KV cache's dtype
    (engine_args kv-cache-dtype, else dtype). 0 when the catalog does not say."""
    attention = model.get("attention") or {}
    if not all(attention.get(key) for key in ("layers", "kv_heads", "head_dim")):
        return 0
    args = model.get("engine_args") or {}
    kv_dtype = str(args.get("kv-cache-dtype", args.get("kv_cache_dtype", "auto")))
    width = 1 if kv_dtype.startswith("fp8") else DTYPE_BYTES.get(str(args.get("dtype", "auto")), 2)
    return 2 * int(attention["layers"]) * int(attention["kv_heads"]) * int(attention["head_dim"]) * width


def size_kv_caches(models: list[dict[str, Any]], settings: dict[str, Any],
                   streams: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each model's KV cache on the CPU engine, in bytes, and the sequences it holds at once.

    llf_server_kv_cache_gb auto: the model's bytes per token x its context (max-model-len)
    x the streams it is sized for, all bounded by the host's memory: its total less
    llf_model_memory_reserve_gb and what the host's models need besides their KV caches
    (the catalog's memory_gb less its KV cache); when the caches do not fit they shrink
    alike, and so do the sequences held at once, down to one whole context each.
    A model the catalog gives no attention shape keeps its catalog kv_cache_gb (else 2 GiB);
    a number of GiB sizes the main model's cache by hand.
    """
    setting = str(settings.get("kv_cache_gb", "auto"))
    plans, errors = [], []
    for index, model in enumerate(models):
        per_token = kv_bytes_per_token(model)
        args = model.get("engine_args") or {}
        context = int(args.get("max-model-len", args.get("max_model_len", 0)) or 0)
        chat = model.get("kind", "chat") == "chat"
        fixed = setting if index == 0 and setting != "auto" else None
        if fixed is None and (not per_token or not context or not chat):
            fixed = model.get("kv_cache_gb", CATALOG_KV_GB)
        want = int(float(fixed) * GIB) if fixed is not None else per_token * context * streams[index]
        # a pooling model's batch stays vLLM's: one embeddings request of many inputs is many sequences
        seqs = streams[index] if chat else 0
        plans.append({"bytes": want, "seqs": seqs, "per_token": per_token, "context": context,
                      "fixed": fixed is not None})
    total = float(settings.get("mem_total_gb", 0))  # 0: no memory figure for the host, nothing to bound by
    besides = sum(float(m.get("memory_gb", 0)) - float(m.get("kv_cache_gb", CATALOG_KV_GB)) for m in models)
    free = int((total - float(settings.get("memory_reserve_gb", 1)) - besides) * GIB)
    sized = sum(p["bytes"] for p in plans if not p["fixed"])
    room = free - sum(p["bytes"] for p in plans if p["fixed"])
    if sized and sized > room and total > 0:
        for model, plan in zip(models, plans, strict=True):
            if plan["fixed"]:
                continue
            plan["bytes"] = max(0, int(plan["bytes"] * room / sized))
            one = plan["per_token"] * plan["context"]
            plan["seqs"] = plan["bytes"] // one
            if plan["seqs"] < 1:
                errors.append(f"{model['name']} needs {one / GIB:.2f} GiB of KV cache for one {plan['context']}-token "
                              f"context and the host's memory leaves it {plan['bytes'] / GIB:.2f} GiB: lower its "
                              "max-model-len (the catalog's engine_args), serve fewer models here or use a bigger host")
    for plan in plans:
        plan["bytes"] = -(-plan["bytes"] // MIB) * MIB  # whole MiB
    return plans, errors


def memory_max(setting: str, model: dict[str, Any], kv_cache_bytes: int, engine: str) -> str:
    """systemd's MemoryMax= for one model's service ('' for none): auto is the catalog's
    memory_gb with the KV cache it counts replaced by the one the model gets, and a
    quarter more."""
    setting = str(setting)
    if setting == "infinity":
        return ""
    if setting != "auto":
        return setting
    need = float(model.get("memory_gb", 0))
    if engine == "vllm-cpu":
        need += kv_cache_bytes / GIB - float(model.get("kv_cache_gb", CATALOG_KV_GB))
    return f"{math.ceil(need * 1.25 * 10) / 10:g}G"


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
    cpu_lists = []
    for index, model in enumerate(models):
        name = model["name"]
        if name in model_cpus:
            cpus = str(model_cpus[name])
        elif bind == "all":
            cpus = shares[index] if shares else f"0-{cores - 1}"
        elif bind == "auto" or index > 0:
            cpus = ""
        else:
            cpus = bind
        if cpus and not _CPU_LIST.match(cpus):
            errors.append(f"llf_server_model_cpus for {name} is {cpus!r}: use a core list such as 0-3 or 1,3")
            cpus = ""
        cpu_lists.append(cpus)
    # CPU engine: the streams each server is sized for (vLLM's max-num-seqs, and its KV
    # cache holds as many whole contexts): llf_server_concurrency, auto is 4 per core it binds
    concurrency = str(settings.get("concurrency", "auto"))
    streams = [int(concurrency) if concurrency != "auto" else 4 * core_count(cpus, cores) for cpus in cpu_lists]
    engine = settings["engine"]
    kv_plans, kv_errors = size_kv_caches(models, settings, streams) if engine == "vllm-cpu" else ([], [])
    errors.extend(kv_errors)
    instances = []
    for index, model in enumerate(models):
        name = model["name"]
        main = index == 0
        suffix = "" if main else f"-{name}"
        default_port = int(settings["port"]) + 1 + catalog.index(name)
        port = int(settings["port"]) if main else int(model_ports.get(name, default_port))
        kv = kv_plans[index] if kv_plans else {"bytes": 0, "seqs": 0}
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
            "cpus": cpu_lists[index],
            # CPU engine: the KV cache in bytes and the sequences served at once (0: vLLM's own)
            "kv_cache_bytes": kv["bytes"],
            "max_num_seqs": kv["seqs"],
            "inprocess_worker": engine == "vllm-cpu" and str(settings.get("inprocess_worker", "auto")).lower()
            in ("auto", "true", "yes", "1"),
            "memory_max": memory_max(settings["memory_max"], model, kv["bytes"], engine),
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
