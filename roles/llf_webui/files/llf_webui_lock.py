#!/usr/bin/env python3
"""Regenerate Open WebUI's hash-locked requirements (`make lock-webui`).

One lock per Open WebUI version, Python and CPU architecture, written to
roles/llf_webui/files/locks/open-webui-<version>-py<XY>-<arch>.txt by the same
`uv pip compile --generate-hashes` as the engine's lock (llf_engine_lock.py, whose
checks it shares): every package pinned with the sha256 of its files, installed
exactly (`pip install --no-deps --require-hashes`).

Open WebUI requires torch (sentence-transformers) and PyPI's torch is the CUDA build
(3.2 GB of CUDA libraries); the lock pins torch's +cpu build instead, the one the CPU
engine uses (llf_webui_torch_version), from the PyTorch CPU index or, when that does
not answer, from --find-links. Open WebUI embeds through LLF's embedding model, so
torch is only imported, never used on a GPU; a lock holding a CUDA package is refused.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parent.parent
LOCKS = ROLE / "files" / "locks"
ENGINE_LOCK = ROLE.parent / "llf_engine" / "files" / "llf_engine_lock.py"


def _engine_lock():  # type: ignore[no-untyped-def]
    """The engine's lock script, whose uv command line and checks this one shares."""
    import importlib.util

    loaded = sys.modules.get(ENGINE_LOCK.stem)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(ENGINE_LOCK.stem, ENGINE_LOCK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[ENGINE_LOCK.stem] = module
    spec.loader.exec_module(module)
    return module


engine = _engine_lock()
LockError = engine.LockError
CUDA = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")


def lock_name(version: str, python: str, arch: str) -> str:
    """The lock's file name: open-webui-0.12.4-py311-x86_64.txt."""
    return f"open-webui-{version}-py{python.replace('.', '')}-{arch}.txt"


def read_defaults(role: Path = ROLE) -> dict:
    return yaml.safe_load((role / "defaults" / "main.yml").read_text(encoding="utf-8"))


def wanted(defaults: dict) -> list[str]:
    """Open WebUI, torch's CPU build and the extra packages, each name==version."""
    return [f"open-webui=={defaults['llf_webui_version']}", f"torch=={defaults['llf_webui_torch_version']}",
            *defaults["llf_webui_extra_packages"]]


def compile_command(uv: str, defaults: dict, python: str, arch: str, output: Path, find_links: list[str],
                    torch_index: bool = True) -> list[str]:
    """The `uv pip compile` command line; the requirements go to its standard input."""
    command = [uv, "pip", "compile", "-", "--generate-hashes", "--only-binary", ":all:",
               "--python-version", python, "--python-platform", f"{arch}-{engine.MANYLINUX}",
               "--custom-compile-command", "make lock-webui", "--no-annotate", "--quiet", "--output-file", str(output)]
    index = defaults.get("llf_webui_torch_index_url") or ""
    if index and torch_index:
        command += ["--extra-index-url", index, "--index-strategy", "unsafe-best-match"]
    for location in find_links:
        command += ["--find-links", location]
    return command


def check_lock(text: str, defaults: dict) -> dict[str, str]:
    """Every requirement pinned and hashed, Open WebUI and CPU torch in it, no CUDA package."""
    pins: dict[str, str] = engine.check_pins(text, wanted(defaults), owner="Open WebUI's CPU install")
    if cuda := sorted(name for name in pins if CUDA.match(name)):
        raise LockError(f"the lock holds CUDA packages ({', '.join(cuda)}): torch must be the +cpu build "
                        f"(llf_webui_torch_version, from llf_webui_torch_index_url or --find-links)")
    return pins


def make_lock(args: argparse.Namespace, defaults: dict) -> Path:
    output = args.locks / lock_name(defaults["llf_webui_version"], args.python, args.arch)
    output.parent.mkdir(parents=True, exist_ok=True)
    index = defaults.get("llf_webui_torch_index_url") or ""
    torch_index = not args.no_torch_index
    if index and torch_index and not engine.index_answers(index):
        print(f"==> {index} does not answer: torch's +cpu wheel must come from --find-links", flush=True)
        torch_index = False
    command = compile_command(args.uv, defaults, args.python, args.arch, output, args.find_links, torch_index)
    print("==> " + " ".join(command), flush=True)
    result = subprocess.run(command, input="\n".join(wanted(defaults)) + "\n", text=True, check=False)
    if result.returncode != 0:
        raise LockError(f"uv pip compile failed ({result.returncode}) for {output.name}")
    pins = check_lock(output.read_text(encoding="utf-8"), defaults)
    print(f"==> {output}: {len(pins)} packages, sha256 {engine.sha256(output)}")
    return output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    engine.add_lock_arguments(parser, "llf_webui_torch_index_url", LOCKS)
    args = parser.parse_args(argv)
    if args.python not in ("3.11", "3.12"):
        parser.error(f"--python: Open WebUI supports Python 3.11 and 3.12 (got {args.python})")
    return engine.default_find_links(args)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        make_lock(args, read_defaults())
    except LockError as error:
        print(f"make lock-webui: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
