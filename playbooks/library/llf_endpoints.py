#!/usr/bin/python
"""Ansible module: merge one inventory's entries into the controller's endpoints file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: llf_endpoints
short_description: Merge one inventory's entries into the LLF endpoints file
description:
  - Writes the entries of one deploy into the endpoints file that llf-client and the
    load tests read, tagged C(deployed_by) with the inventory they came from.
  - Replaces only the entries with that tag (and an untagged entry of the same name,
    left by an older deploy), keeps every other entry in its place, writes the file
    atomically with mode 0600, and reports changed only when the file changes.
  - With I(state=absent), removes that inventory's entries and deletes the file when
    none are left.
  - Runs on the controller with the Python of the venv that has llf_client installed
    (it uses llf_client's reader and writer of the file).
options:
  path:
    description: The endpoints file.
    type: path
    required: true
  inventory:
    description: The inventory sources of this run (ansible_inventory_sources), the tag.
    type: list
    elements: str
    required: true
  entries:
    description: This inventory's entries (name, host, base_url, model, kind, api_key, ca_cert).
    type: list
    elements: dict
    default: []
  hosts:
    description:
      - Only the entries of these inventory hosts are replaced or removed (a --limit run).
      - Omitted, all the entries of the inventory are.
    type: list
    elements: str
  state:
    description: present writes the entries, absent removes them.
    type: str
    choices: [present, absent]
    default: present
author: LLF
"""

EXAMPLES = r"""
- name: Write the endpoints file
  llf_endpoints:
    path: ~/.config/llf/endpoints.yml
    inventory: "{{ ansible_inventory_sources }}"
    entries: [{name: local, host: local, base_url: "http://127.0.0.1:8000/v1", model: smol, kind: chat}]
  no_log: true
"""

RETURN = r"""
entries:
  description: How many entries of this inventory the file holds now.
  type: int
  returned: always
kept:
  description: How many other entries the file keeps.
  type: int
  returned: always
"""

import os  # noqa: E402
import stat  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

TAG = "deployed_by"


def tag_of(inventory: Sequence[str]) -> str | list[str]:
    """The deployed_by value: one absolute path, or the list of several."""
    paths = [os.path.abspath(os.path.expanduser(p)) for p in inventory]
    return paths[0] if len(paths) == 1 else paths


def _same_tag(value: Any, tag: str | list[str]) -> bool:
    def as_set(v: Any) -> set[str]:
        return {v} if isinstance(v, str) else {str(x) for x in v or []}

    return value is not None and as_set(value) == as_set(tag)


def merge(
    existing: Sequence[Mapping[str, Any]],
    entries: Sequence[Mapping[str, Any]],
    tag: str | list[str],
    hosts: Sequence[str] | None = None,
    state: str = "present",
) -> list[dict[str, Any]]:
    """The file's entries after this inventory's run.

    Ours (tagged, of `hosts` when given) and any entry named like a new one go (names
    stay unique: another checkout's deploy of this machine also writes "local"); the new
    entries, tagged, take the place of the first that went (else the end).
    """
    new = [{**e, TAG: tag} for e in entries] if state == "present" else []
    names = {e.get("name") for e in new}

    def replaced(entry: Mapping[str, Any]) -> bool:
        if _same_tag(entry.get(TAG), tag):
            return hosts is None or entry.get("host") in hosts or entry.get("name") in names
        return entry.get("name") in names

    result: list[dict[str, Any]] = []
    at: int | None = None
    for entry in existing:
        if replaced(entry):
            at = len(result) if at is None else at
        else:
            result.append(dict(entry))
    at = len(result) if at is None else at
    return result[:at] + new + result[at:]


def run(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    from llf_client.config import read_endpoint_entries, write_endpoints_file

    path = Path(params["path"]).expanduser()
    existing = read_endpoint_entries(path) if path.is_file() else []
    tag = tag_of(params["inventory"])
    merged = merge(existing, params["entries"] or [], tag, params.get("hosts"), params["state"])
    ours = sum(1 for e in merged if _same_tag(e.get(TAG), tag))
    result: dict[str, Any] = {"changed": False, "path": str(path), "entries": ours, "kept": len(merged) - ours}
    if not merged:
        if path.exists():
            result["changed"] = True
            if not check_mode:
                path.unlink()
        return result
    private = path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    if merged != existing or not private:
        result["changed"] = True
        if not check_mode:
            write_endpoints_file(path, merged)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "inventory": {"type": "list", "elements": "str", "required": True},
            "entries": {"type": "list", "elements": "dict", "default": []},
            "hosts": {"type": "list", "elements": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    try:
        result = run(module.params, module.check_mode)
    except ImportError as err:
        module.fail_json(msg=f"llf_client is not importable ({err}): run with the Python of llf_venv")
    except Exception as err:  # noqa: BLE001 - llf_client's ConfigError and OSError, one line
        one_line = getattr(err, "one_line", None)
        module.fail_json(msg=one_line() if callable(one_line) else f"{type(err).__name__}: {err}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
