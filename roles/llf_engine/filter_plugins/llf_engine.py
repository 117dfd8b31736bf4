"""Filters of the llf_engine role: read the engine's lock, explain pip's refusals."""

from __future__ import annotations

import re

REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
# pip's report of a file whose sha256 is not the locked one
MISMATCH = re.compile(
    r"^\s+(?P<req>\S+) from (?P<url>\S+?)(?: \(from [^\n]*\))?:[ \t]*\n"
    r"\s+Expected sha256 (?P<expected>[0-9a-f]+)[ \t]*\n"
    r"(?P<others>(?:\s+Expected\s+or [0-9a-f]+[ \t]*\n)*)"
    r"\s+Got\s+(?P<got>[0-9a-f]+)",
    re.MULTILINE,
)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def llf_engine_lock_pins(text: str) -> dict[str, str]:
    """{name: version} of every `name==version` line of a lock (names canonical)."""
    return {canonical(name): version for name, version in REQUIREMENT.findall(text)}


def llf_engine_missing_pins(pins: dict[str, str], requirements: list[str]) -> list[str]:
    """The `name==version` requirements the lock does not pin exactly."""
    missing = []
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        if not version or pins.get(canonical(name.strip())) != version.strip():
            missing.append(requirement)
    return missing


def llf_engine_pip_refusal(output: str, lock: str, mode: str, wheelhouse: str = "") -> str:
    """One line naming the file pip refused and what to do; empty when pip refused no file's hash."""
    found = list(MISMATCH.finditer(output or ""))
    if not found:
        return ""
    first = found[0]
    url = first["url"]
    name = url.rsplit("/", 1)[-1]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    hashes = [first["expected"], *re.findall(r"[0-9a-f]{64}", first["others"])]
    locked = f"not {hashes[0]} as" if len(hashes) == 1 else f"none of the {len(hashes)}"
    what = f"pip refused {first['req']} ({name}){more}: its sha256 is {first['got']}, {locked} the lock {lock} records"
    if mode == "wheelhouse":
        todo = (f"the controller's copy was altered or damaged; delete {wheelhouse} on the controller "
                "and run the deploy again to download it afresh")
    else:
        todo = (f"the package index or a proxy served {url} and it is not the locked file; "
                "check pip's index settings (llf_engine_pip_args, pip.conf) and run again")
    return f"{what}. Nothing was installed and a running server is untouched: {todo}."


class FilterModule:
    def filters(self) -> dict:
        return {
            "llf_engine_lock_pins": llf_engine_lock_pins,
            "llf_engine_missing_pins": llf_engine_missing_pins,
            "llf_engine_pip_refusal": llf_engine_pip_refusal,
        }
