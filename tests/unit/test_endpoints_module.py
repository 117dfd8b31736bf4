"""playbooks/library/llf_endpoints.py: the deploy merges its entries into the endpoints file."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llf_client.config import load_endpoints_file, read_endpoint_entries, write_endpoints_file
from tests.conftest import REPO, load_script

module = load_script(REPO / "playbooks" / "library" / "llf_endpoints.py")

LOCAL, LAB = "/repo/inventories/local", "/repo/inventories/lab"


def entry(name: str, host: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": host or name, "base_url": f"http://{name}:8000/v1", "model": "m", **extra}


def params(path: Path, inventory: str, entries: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "inventory": [inventory], "entries": entries, "hosts": None, "state": "present", **extra}


def names(path: Path) -> list[tuple[str, Any]]:
    return [(e["name"], e.get("deployed_by")) for e in read_endpoint_entries(path)]


def test_a_lab_deploy_keeps_the_local_entries_and_the_users(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "endpoints.yml"
    result = module.run(params(path, LOCAL, [entry("local"), entry("local-emb", "local", kind="embedding")]), False)
    assert result == {"changed": True, "path": str(path), "entries": 2, "kept": 0}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    entries = read_endpoint_entries(path)
    entries.append({"name": "mine", "base_url": "http://x:1/v1"})  # the user's own
    write_endpoints_file(path, entries)

    assert module.run(params(path, LAB, [entry("gw-gateway", "gw"), entry("s1")]), False)["changed"]
    assert names(path) == [
        ("local", LOCAL), ("local-emb", LOCAL), ("mine", None), ("gw-gateway", LAB), ("s1", LAB)
    ]
    # the same run again: nothing to change (idempotent)
    assert module.run(params(path, LAB, [entry("gw-gateway", "gw"), entry("s1")]), False)["changed"] is False
    # a new lab deploy replaces the lab's entries in their place, the others stay
    assert module.run(params(path, LAB, [entry("s2")]), False) == {
        "changed": True, "path": str(path), "entries": 1, "kept": 3
    }
    assert names(path) == [("local", LOCAL), ("local-emb", LOCAL), ("mine", None), ("s2", LAB)]
    assert [e.kind for e in load_endpoints_file(path)] == ["chat", "embedding", "chat", "chat"]  # llf-client reads it


def test_a_limited_run_replaces_only_its_hosts(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yml"
    module.run(params(path, LAB, [entry("gw-gateway", "gw"), entry("s1"), entry("s2")]), False)
    module.run(params(path, LAB, [entry("s2", model="new")], hosts=["s2"]), False)
    assert [(e["name"], e["model"]) for e in read_endpoint_entries(path)] == [
        ("gw-gateway", "m"), ("s1", "m"), ("s2", "new")
    ]


def test_an_older_deploys_untagged_entry_of_the_same_name_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yml"
    write_endpoints_file(path, [{"name": "local", "base_url": "http://old:1/v1"}, {"name": "other", "base_url": "http://o:1/v1"}])
    module.run(params(path, LOCAL, [entry("local")]), False)
    assert names(path) == [("local", LOCAL), ("other", None)]


def test_another_checkouts_entry_of_the_same_name_is_replaced_and_its_others_kept(tmp_path: Path) -> None:
    # two clones of LLF deploying this machine both write "local": the file stays readable
    path = tmp_path / "endpoints.yml"
    module.run(params(path, "/other/inventories/local", [entry("local"), entry("local-emb", "local")]), False)
    module.run(params(path, LOCAL, [entry("local")]), False)
    assert names(path) == [("local", LOCAL), ("local-emb", "/other/inventories/local")]
    assert [e.name for e in load_endpoints_file(path)] == ["local", "local-emb"]


def test_uninstall_removes_only_its_entries_then_the_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yml"
    module.run(params(path, LOCAL, [entry("local")]), False)
    module.run(params(path, LAB, [entry("s1"), entry("s2")]), False)
    assert module.run(params(path, LAB, [], state="absent", hosts=["s1"]), False)["changed"]
    assert names(path) == [("local", LOCAL), ("s2", LAB)]
    module.run(params(path, LAB, [], state="absent"), False)
    assert names(path) == [("local", LOCAL)]
    assert module.run(params(path, LAB, [], state="absent"), False)["changed"] is False
    assert module.run(params(path, LOCAL, [], state="absent"), False)["changed"]
    assert not path.exists()
    assert module.run(params(path, LOCAL, [], state="absent"), False)["changed"] is False


def test_check_mode_writes_nothing_and_a_loose_mode_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yml"
    assert module.run(params(path, LOCAL, [entry("local")]), True)["changed"] and not path.exists()
    module.run(params(path, LOCAL, [entry("local")]), False)
    path.chmod(0o644)
    assert module.run(params(path, LOCAL, [entry("local")]), False)["changed"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_several_inventory_sources_make_one_tag() -> None:
    assert module.tag_of(["a", "/b"]) == [str(Path("a").resolve()), "/b"]
    assert module.merge([{"name": "x", "deployed_by": ["/b", "/a"]}], [], ["/a", "/b"], state="absent") == []


def run_module(args: dict[str, Any]) -> dict[str, Any]:
    """The module as Ansible runs it: a process reading its arguments as JSON."""
    done = subprocess.run(
        [sys.executable, str(REPO / "playbooks" / "library" / "llf_endpoints.py")],
        input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True, check=False,
    )
    return json.loads(done.stdout)


def test_the_module_process(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yml"
    out = run_module({"path": str(path), "inventory": [LOCAL], "entries": [entry("local", api_key="sk")]})
    assert out["changed"] is True and out["entries"] == 1
    assert yaml.safe_load(path.read_text())["endpoints"][0]["deployed_by"] == LOCAL
    path.write_text("endpoints: [oops\n")
    out = run_module({"path": str(path), "inventory": [LOCAL]})
    assert out["failed"] is True
    assert out["msg"] == f"endpoints file {path}: not valid YAML at line 2 (hint: fix the file)"


@pytest.mark.parametrize("models", [None, "two"])
def test_the_template_writes_one_entry_per_model(tmp_path: Path, models: str | None) -> None:
    """templates/endpoints.yml.j2 rendered by Ansible's templar, with and without llf_server_models."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    server: dict[str, Any] = {
        "llf_server_url": "http://s1:8000/v1",
        "llf_server_api_key_in_use": "k",
        "llf_model_selected": {"name": "smol-cat", "served_name": "smol"},
    }
    if models:
        server["llf_server_models"] = [
            {"name": "smol-cat", "served_name": "smol", "kind": "chat", "url": "http://s1:8000/v1"},
            {"name": "mini-cat", "served_name": "mini", "kind": "embedding", "url": "http://s1:8001/v1"},
        ]
    variables = {
        "groups": {"llf_servers": ["s1", "s2"], "llf_gateway": ["gw"]},
        "hostvars": {
            "s1": server,
            "s2": {},  # not in this run (--limit): no entry
            "gw": {
                "llf_gateway_url": "https://gw:8443/v1", "llf_gateway_ca_path": "/c.pem", "llf_gateway_client_key": "g"
            },
        },
    }
    text = (REPO / "templates" / "endpoints.yml.j2").read_text()
    rendered = yaml.safe_load(Templar(loader=DataLoader(), variables=variables).template(trust_as_template(text)))
    got = [(e["name"], e["base_url"], e["model"], e["kind"], e.get("api_key"), e.get("ca_cert")) for e in rendered]
    expected = [("gw-gateway", "https://gw:8443/v1", "smol", "chat", "g", "/c.pem")]
    if models:
        expected.append(("gw-gateway-mini-cat", "https://gw:8443/v1", "mini", "embedding", "g", "/c.pem"))
    expected.append(("s1", "http://s1:8000/v1", "smol", "chat", "k", None))
    if models:
        expected.append(("s1-mini-cat", "http://s1:8001/v1", "mini", "embedding", "k", None))
    assert got == expected
