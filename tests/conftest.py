"""Shared fixtures.

`server` is the one real vLLM server every live test talks to. By default it is the
server that `make install` deploys on this machine (the deployment fixture in
tests/e2e/conftest.py runs it once per session). Set LLF_TEST_BASE_URL (and
LLF_TEST_MODEL, LLF_TEST_API_KEY) to point the live tests at a server you already run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
