"""Molecule: each role's scenario (converge, idempotence, verify) on real systemd
hosts (systemd-nspawn, `make testhosts-up`), run the way a developer runs them, with
`make molecule ROLE=...`. The scenarios run in the order the roles stand on each
other, on the same hosts, which are removed at the end.

Runs after the lab test removed its hosts, so one machine never runs more than one
vLLM server here.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO, record_figure
from tests.e2e.conftest import Harness

pytestmark = pytest.mark.e2e

# the order the roles stand on each other, as `make molecule` runs them
SCENARIOS = re.search(r"^MOLECULE_SCENARIOS := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)[1].split()
ANSI = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;;[^\x1b]*\x1b\\")  # colours; hyperlinks (ESC ] 8 ;; url ESC \)


@pytest.fixture(scope="module")
def molecule_hosts(harness: Harness):
    harness.link_venv()
    try:
        yield
    finally:
        down = harness.make("testhosts-down", timeout=600)
        assert down.returncode == 0, down.output[-3000:]


def test_every_scenario_runs() -> None:
    """A scenario added under molecule/ but missing from the Makefile would never run."""
    found = {path.parent.name for path in (REPO / "molecule").glob("*/molecule.yml")}
    assert sorted(SCENARIOS) == sorted(found)


def actions(text: str, scenario: str) -> dict[str, str]:
    """Molecule's closing DETAILS (colours removed): action -> outcome, for one scenario."""
    # "llf_host ➜ verify: Executed: Successful", with ">" for the arrow when not on a terminal
    found = re.findall(rf"^{scenario} (?:➜|>) (\w+): Executed: (\w+)", text, flags=re.MULTILINE)
    return dict(found)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(harness: Harness, molecule_hosts: None, scenario: str) -> None:
    result = harness.make("molecule", f"ROLE={scenario}", "KEEP=1", timeout=3600)
    text = ANSI.sub("", result.output)
    assert result.returncode == 0, text[-10000:]
    outcome = actions(text, scenario)
    for action in ("syntax", "create", "converge", "idempotence", "verify"):
        assert outcome.get(action) == "Successful", (action, outcome)
    # it ran on the hosts: a play with no hosts would have "succeeded" too
    recaps = re.findall(r"^\W*(llf-th\d+)\s+: ok=(\d+)\s+changed=(\d+)", text, re.MULTILINE)
    assert recaps and all(int(ok) > 0 for _, ok, _ in recaps), recaps
    record_figure(f"molecule {scenario} (converge, idempotence, verify): {result.seconds:.1f} s")
