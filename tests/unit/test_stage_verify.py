"""Quick and full verification of a staged model (llf_stage.py verify --verify quick|full).

Quick compares each file's size and mtime with the lock and hashes only the files
whose mtime differs; full hashes every file. The result says which mode ran and how
much was hashed, which is what these tests (and the role) read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, load_script

llf_stage = load_script(REPO / "roles" / "llf_model" / "files" / "llf_stage.py")
StageError = llf_stage.StageError
LOCK = "llf-lock.json"

FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": bytes(range(256)) * 64,
         "tokenizer/tokenizer.json": b'{"model": {}}'}
TOTAL = sum(len(data) for data in FILES.values())


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    for name, data in FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    dest = tmp_path / "dest"
    result = llf_stage.stage({"name": "m", "source": {"type": "local", "path": str(source)}},
                             dest, tmp_path / "cache")
    assert (result["verify"], result["hashed_files"], result["hashed_bytes"]) == ("full", 3, TOTAL)
    return dest


def lock_files(dest: Path) -> dict[str, Any]:
    return json.loads((dest / LOCK).read_text(encoding="utf-8"))["files"]


def counts(result: dict[str, Any]) -> tuple[str, int, int, bool]:
    return result["verify"], result["hashed_files"], result["hashed_bytes"], result["changed"]


def shift_mtime(path: Path, seconds: int) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + seconds * 1_000_000_000))


def test_the_lock_records_each_files_mtime(staged: Path) -> None:
    for rel, entry in lock_files(staged).items():
        assert entry["mtime_ns"] == (staged / rel).stat().st_mtime_ns
        assert entry["size"] == len(FILES[rel.removeprefix("model/")])


def test_quick_hashes_nothing_when_nothing_changed(staged: Path) -> None:
    before = (staged / LOCK).read_bytes()

    assert counts(llf_stage.verify(staged)) == ("quick", 0, 0, False)
    assert counts(llf_stage.stage({"name": "m"}, staged, staged / "cache")) == ("quick", 0, 0, False)
    assert (staged / LOCK).read_bytes() == before  # not rewritten


def test_full_hashes_every_file(staged: Path) -> None:
    before = (staged / LOCK).read_bytes()

    assert counts(llf_stage.verify(staged, "full")) == ("full", 3, TOTAL, False)
    assert (staged / LOCK).read_bytes() == before


def test_a_touched_file_is_hashed_passes_and_its_new_mtime_is_recorded(staged: Path) -> None:
    touched = staged / "model" / "model.safetensors"
    shift_mtime(touched, 60)
    before = lock_files(staged)

    assert counts(llf_stage.verify(staged)) == ("quick", 1, len(FILES["model.safetensors"]), True)

    after = lock_files(staged)
    rel = "model/model.safetensors"
    assert after[rel] == {**before[rel], "mtime_ns": touched.stat().st_mtime_ns}
    assert after[rel]["mtime_ns"] != before[rel]["mtime_ns"]
    assert {k: v for k, v in after.items() if k != rel} == {k: v for k, v in before.items() if k != rel}
    # the next run is quick again and changes nothing
    assert counts(llf_stage.verify(staged)) == ("quick", 0, 0, False)


def test_same_size_change_with_its_mtime_restored_passes_quick_but_not_full(staged: Path) -> None:
    """The trade-off of quick: a change that keeps the size and the mtime is not seen."""
    target = staged / "model" / "model.safetensors"
    info = target.stat()
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))

    assert counts(llf_stage.verify(staged)) == ("quick", 0, 0, False)
    with pytest.raises(StageError) as err:
        llf_stage.verify(staged, "full")
    assert err.value.code == 3
    assert str(err.value) == (f"model file {target} does not match its sha256 in {staged / LOCK}; "
                              f"restore it, or delete {staged} to stage the model again")


def test_a_same_size_change_that_moves_the_mtime_fails_quick(staged: Path) -> None:
    target = staged / "model" / "config.json"
    target.write_bytes(target.read_bytes().upper())
    shift_mtime(target, 60)
    before = (staged / LOCK).read_bytes()

    with pytest.raises(StageError) as err:
        llf_stage.verify(staged)
    assert str(err.value).startswith(f"model file {target} does not match its sha256")
    assert (staged / LOCK).read_bytes() == before  # a failed check records nothing


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_a_truncated_file_fails_even_with_its_mtime_restored(staged: Path, mode: str) -> None:
    target = staged / "model" / "model.safetensors"
    info = target.stat()
    with target.open("r+b") as handle:
        handle.truncate(info.st_size - 1)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))

    with pytest.raises(StageError) as err:
        llf_stage.verify(staged, mode)
    assert err.value.code == 3
    assert str(err.value).startswith(f"model file {target} does not match its sha256 in {staged / LOCK}")


def test_an_old_lock_without_mtimes_is_hashed_once_then_gets_them(staged: Path) -> None:
    lock = json.loads((staged / LOCK).read_text(encoding="utf-8"))
    for entry in lock["files"].values():
        del entry["mtime_ns"]
    (staged / LOCK).write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    assert counts(llf_stage.verify(staged)) == ("quick", 3, TOTAL, True)

    upgraded = json.loads((staged / LOCK).read_text(encoding="utf-8"))
    assert {k: v for k, v in upgraded.items() if k != "files"} == {k: v for k, v in lock.items() if k != "files"}
    for rel, entry in upgraded["files"].items():
        assert entry == {**lock["files"][rel], "mtime_ns": (staged / rel).stat().st_mtime_ns}
    assert counts(llf_stage.verify(staged)) == ("quick", 0, 0, False)


def test_a_lock_that_cannot_be_written_leaves_the_check_passing(
        staged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shift_mtime(staged / "model" / "config.json", 60)

    def refuse(dest: Path, lock: dict[str, Any]) -> None:
        raise PermissionError(13, "Permission denied", str(dest / LOCK))

    monkeypatch.setattr(llf_stage, "write_lock", refuse)
    assert counts(llf_stage.verify(staged)) == ("quick", 1, len(FILES["config.json"]), False)
    assert counts(llf_stage.verify(staged)) == ("quick", 1, len(FILES["config.json"]), False)


def test_main_takes_the_mode_on_verify_and_stage(
        staged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert llf_stage.main(["verify", "--dest", str(staged), "--verify", "full"]) == 0
    assert counts(json.loads(capsys.readouterr().out)) == ("full", 3, TOTAL, False)

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "m"}), encoding="utf-8")
    args = ["stage", "--spec", str(spec), "--dest", str(staged), "--cache", str(tmp_path / "c")]
    assert llf_stage.main([*args, "--verify", "full"]) == 0
    assert counts(json.loads(capsys.readouterr().out)) == ("full", 3, TOTAL, False)
    assert llf_stage.main(args) == 0
    assert counts(json.loads(capsys.readouterr().out)) == ("quick", 0, 0, False)

    with pytest.raises(SystemExit) as usage:
        llf_stage.main(["verify", "--dest", str(staged), "--verify", "fast"])
    assert usage.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_the_role_passes_llf_model_verify_to_the_staging_script() -> None:
    role = REPO / "roles" / "llf_model"
    tasks = yaml.safe_load((role / "tasks" / "stage_model.yml").read_text(encoding="utf-8"))
    [task] = [t for t in tasks if t["name"].startswith("Stage the model and verify it")]
    argv = task["ansible.builtin.command"]["argv"]
    assert argv[argv.index("--verify") + 1] == "{{ llf_model_verify }}"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text(encoding="utf-8"))
    assert defaults["llf_model_verify"] == "quick"
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    option = specs["argument_specs"]["main"]["options"]["llf_model_verify"]
    assert option["choices"] == list(llf_stage.VERIFY_MODES)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "$(if $(VERIFY),-e llf_model_verify=$(VERIFY))" in makefile
