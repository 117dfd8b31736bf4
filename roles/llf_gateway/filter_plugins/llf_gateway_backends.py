"""Jinja filter: the gateway's backends, each server with the models it serves."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

_CHECKER = Path(__file__).resolve().parent.parent / "files" / "llf_gateway_health.py"


def _health_checker() -> Any:
    """The health checker's module: its parse_config is the one reader of backends.json."""
    spec = importlib.util.spec_from_file_location("llf_gateway_health", _CHECKER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(item: dict[str, Any]) -> dict[str, Any]:
    length = item.get("max_model_len")
    return {"name": item.get("name") or item["served_name"], "served_name": item["served_name"],
            "kind": item.get("kind") or "chat", "port": int(item["port"]),
            "max_model_len": int(length) if length not in (None, "") else None}


def llf_gateway_backends(servers: list[dict[str, Any]], previous: str = "") -> list[dict[str, Any]]:
    """backends.json's list: [{name, address, models: [{name, served_name, kind, port, max_model_len}]}].

    `servers`: per server host {name, address, models (its llf_server_models, or None
    when this run did not check it), port (llf_server_port), main_served_name (its main
    model's served name as far as the inventory and catalog tell)}. `previous`: the
    gateway's backends.json as it is on the host ('' when there is none). A server
    without llf_server_models keeps its models from `previous`, else it gets its main
    model at its port (a deploy --limit-ed to the gateway does not check the servers).
    """
    known: dict[str, list[dict[str, Any]]] = {}
    if previous.strip():
        try:
            config = _health_checker().parse_config(json.loads(previous))
            known = {b["name"]: b["models"] for b in config["backends"]}
        except ValueError:  # an older or damaged file: the fallback below
            known = {}
    backends = []
    for server in servers:
        if server.get("models"):
            models = [_model(m) for m in server["models"]]
        elif server["name"] in known:
            models = [_model(m) for m in known[server["name"]]]
        else:
            models = [_model({"served_name": server["main_served_name"], "port": server["port"]})]
        backends.append({"name": server["name"], "address": server["address"], "models": models})
    return backends


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"llf_gateway_backends": llf_gateway_backends}
