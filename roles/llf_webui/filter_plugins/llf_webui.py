"""Filters of the llf_webui role: its lock read, and pip's refusals explained, by the
engine's own filters (one reader of the lock format), under this role's names; and the
environment Open WebUI is started with."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ENGINE_FILTERS = Path(__file__).resolve().parents[2] / "llf_engine" / "filter_plugins" / "llf_engine.py"


def _engine() -> ModuleType:
    loaded = sys.modules.get("llf_engine_filters")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("llf_engine_filters", ENGINE_FILTERS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["llf_engine_filters"] = module
    spec.loader.exec_module(module)
    return module


def llf_webui_env_line(name: str, value: object) -> str:
    """One NAME=value line of a systemd EnvironmentFile that a POSIX shell sources the same
    way: the value single-quoted (booleans as true/false, dicts and lists as JSON)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    else:
        text = str(value)
    if "\n" in text or "'" in text:
        raise ValueError(f"{name}: a value with a newline or a single quote cannot go into an environment file")
    return f"{name}='{text}'"


class FilterModule:
    def filters(self) -> dict:
        engine = _engine()
        return {
            "llf_webui_lock_pins": engine.llf_engine_lock_pins,
            "llf_webui_missing_pins": engine.llf_engine_missing_pins,
            "llf_webui_pip_refusal": engine.llf_engine_pip_refusal,
            "llf_webui_env_line": llf_webui_env_line,
        }
