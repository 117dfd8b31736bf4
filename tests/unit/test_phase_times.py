"""The phase times `make test` prints at the end."""

from __future__ import annotations

from tests.conftest import phase_lines


def test_unit_files_count_as_one_phase_and_lint_comes_first() -> None:
    phases = {"tests/unit/test_a.py": 30.0, "tests/unit/test_b.py": 30.0, "tests/e2e/test_95_lab.py": 1800.0}
    assert phase_lines(phases, "120") == [
        "make lint: 2.0 min (120 s)",
        "unit tests: 1.0 min (60 s)",
        "tests/e2e/test_95_lab.py: 30.0 min (1800 s)",
        "total: 33.0 min (1980 s)",
    ]


def test_without_make_the_lint_phase_is_left_out() -> None:
    assert phase_lines({"tests/e2e/test_02_deploy.py": 90.0}, None) == [
        "tests/e2e/test_02_deploy.py: 1.5 min (90 s)",
        "total: 1.5 min (90 s)",
    ]
