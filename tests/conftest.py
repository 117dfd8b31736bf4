"""Shared fixtures.

`server` is the one real vLLM server every live test talks to. By default it is the
server that `make install` deploys on this machine (the deployment fixture in
tests/e2e/conftest.py runs it once per session). Set LLF_TEST_BASE_URL (and
LLF_TEST_MODEL, LLF_TEST_API_KEY) to point the live tests at a server you already run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_script(path: Path) -> ModuleType:
    """Import a role's module or script by its path, once per test session."""
    loaded = sys.modules.get(path.stem)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Server:
    base_url: str  # the OpenAI base URL, ending in /v1
    model: str  # the served model name
    api_key: str | None  # None when the server needs no key

    @property
    def root_url(self) -> str:
        """The server's root (for /health and /metrics)."""
        return self.base_url.rstrip("/").removesuffix("/v1")


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Server:
    url = os.environ.get("LLF_TEST_BASE_URL")
    if url:
        return Server(
            base_url=url.rstrip("/"),
            model=os.environ.get("LLF_TEST_MODEL", "smollm2-135m-instruct"),
            api_key=os.environ.get("LLF_TEST_API_KEY") or None,
        )
    deployment = request.getfixturevalue("deployment")
    return deployment.server


FIGURES: list[str] = []


def record_figure(text: str) -> None:
    """A measured figure (deploy time, memory, ...), printed at the end of the run."""
    FIGURES.append(text)
    print(f"FIGURE {text}")


PHASES: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test file's time (setup, call and teardown, module fixtures included)."""
    phase = report.nodeid.split("::")[0]
    PHASES[phase] = PHASES.get(phase, 0.0) + report.duration


def phase_lines(phases: dict[str, float], lint_seconds: str | None) -> list[str]:
    """The run's phases and their times: lint (from make), unit tests as one, each e2e file."""
    merged: dict[str, float] = {}
    if lint_seconds:
        merged["make lint"] = float(lint_seconds)
    for path, seconds in phases.items():
        name = "unit tests" if path.startswith("tests/unit/") else path
        merged[name] = merged.get(name, 0.0) + seconds
    total = sum(merged.values())
    rows = [*merged.items(), ("total", total)]
    return [f"{name}: {seconds / 60:.1f} min ({seconds:.0f} s)" for name, seconds in rows]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
    if PHASES:
        terminalreporter.section("phase times")
        for line in phase_lines(PHASES, os.environ.get("LLF_LINT_SECONDS")):
            terminalreporter.write_line(line)
