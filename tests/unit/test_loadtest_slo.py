"""SLO files: parsing, validation messages, verdicts including inconclusive."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.errors import SloError
from loadtests.metrics import Sample
from loadtests.slo import (
    INCONCLUSIVE,
    INVALID,
    MISS,
    OK,
    PASS,
    WARN,
    Check,
    evaluate,
    exit_code,
    load_slo,
    parse_slo,
    parse_target,
)

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"


def samples(ttfts_ms: list[float], failed: int = 0) -> list[Sample]:
    out = [
        Sample(start=float(i), success=True, ttft=t / 1000, e2el=t / 1000 + 1, output_tokens=1)
        for i, t in enumerate(ttfts_ms)
    ]
    out += [Sample(start=0.0, success=False, status=503) for _ in range(failed)]
    return out


def test_target_forms() -> None:
    t = parse_target("ttft p95 <= 500 ms", 20)
    assert (t.metric, t.stat, t.limit, t.min_samples, t.percentile) == ("ttft", "p95", 500.0, 20, 95.0)
    assert parse_target("e2el p99 <= 2.5 s", 20).limit == 2500.0
    assert parse_target("  tpot mean<=40ms ", 20).stat == "mean"
    rate = parse_target("error_rate <= 1 %", 20)
    assert (rate.metric, rate.stat, rate.limit) == ("error_rate", "rate", 1.0)
    override = parse_target({"target": "itl p99 <= 50 ms", "min_samples": 7}, 20)
    assert override.min_samples == 7
    assert override.needed == 100  # a p99 needs 100 values whatever min_samples says


@pytest.mark.parametrize(
    ("p", "min_samples", "needed"),
    [("p50", 1, 2), ("p90", 1, 10), ("p95", 1, 20), ("p99", 1, 100), ("p99.9", 1, 1000)],
)
def test_samples_needed_for_a_percentile(p: str, min_samples: int, needed: int) -> None:
    assert parse_target(f"ttft {p} <= 1 ms", min_samples).needed == needed
    assert parse_target(f"ttft {p} <= 1 ms", 5000).needed == 5000


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ttft p95 < 500 ms", "does not read '<metric> <stat> <= <number> <ms|s|%>'"),
        ("latency p95 <= 5 ms", "unknown metric 'latency'"),
        ("ttft <= 5 ms", "give a statistic"),
        ("ttft p95 <= 5 %", "latency limits are in ms or s"),
        ("ttft p100 <= 5 ms", "between 0 and 100"),
        ("error_rate p95 <= 1 %", "write error_rate as"),
        ("error_rate <= 1 ms", "write error_rate as"),
        (42, "is not a string"),
        ({"target": "ttft p95 <= 5 ms", "extra": 1}, "use {target:"),
        ({"target": "ttft p95 <= 5 ms", "min_samples": 0}, "min_samples must be a positive"),
    ],
)
def test_target_errors(spec: object, message: str) -> None:
    with pytest.raises(SloError, match=None) as err:
        parse_target(spec, 20)
    assert message in str(err.value)


def test_slo_document_and_defaults() -> None:
    slo = parse_slo(
        {
            "min_samples": 3,
            "targets": ["ttft p95 <= 500 ms", "ttft p50 <= 200 ms", "tpot p95 <= 50 ms", "itl p99 <= 9 ms"],
            "validity": {"client_cpu_percent": 40, "server_gap_action": "invalid"},
            "capacity": {"min_users": 4},
        }
    )
    assert [t.min_samples for t in slo.targets] == [3, 3, 3, 3]
    assert slo.validity.client_cpu_percent == 40.0
    assert slo.validity.schedule_lag_ms == 50.0  # default kept
    assert slo.validity.server_gap_action == INVALID
    assert slo.min_users == 4
    assert slo.goodput_ms() == {"ttft": 200.0, "tpot": 50.0}  # ITL is not per request


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a mapping"),
        ({"targets": []}, "non-empty 'targets' list"),
        ({"targets": ["ttft p50 <= 1 s"], "extra": 1}, "unknown key(s) in the SLO file: extra"),
        ({"targets": ["ttft p50 <= 1 s"], "min_samples": True}, "min_samples must be"),
        ({"targets": ["ttft p50 <= 1 s"], "validity": {"x": 1}}, "validity takes only"),
        (
            {"targets": ["ttft p50 <= 1 s"], "validity": {"client_cpu_percent": -1}},
            "non-negative number",
        ),
        (
            {"targets": ["ttft p50 <= 1 s"], "validity": {"server_gap_action": "fail"}},
            "warn or invalid",
        ),
        ({"targets": ["ttft p50 <= 1 s"], "capacity": {"max": 3}}, "capacity takes only"),
    ],
)
def test_slo_document_errors(data: object, message: str) -> None:
    with pytest.raises(SloError) as err:
        parse_slo(data)
    assert message in str(err.value)


def test_shipped_slo_files_parse() -> None:
    default = load_slo(LOADTESTS / "slo.yaml")
    assert {t.metric for t in default.targets} >= {"ttft_content", "tpot", "e2el", "error_rate"}
    impossible = load_slo(LOADTESTS / "slo-impossible.yaml")
    assert impossible.targets[0].limit < 1.0


def test_load_slo_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SloError, match="cannot read SLO file"):
        load_slo(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [unclosed\n")
    with pytest.raises(SloError, match="is not valid YAML"):
        load_slo(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("targets: ['ttft p95 <= fast']\n")
    with pytest.raises(SloError, match=f"^{wrong}: target"):
        load_slo(wrong)


def test_evaluate_pass_miss_inconclusive() -> None:
    slo = parse_slo(
        {
            "min_samples": 5,
            "targets": ["ttft p50 <= 300 ms", "ttft max <= 100 ms", "ttft p99 <= 1 s", "error_rate <= 10 %"],
        }
    )
    results = evaluate(slo, samples([100, 200, 300, 400, 500]))
    assert [r.status for r in results] == [PASS, MISS, INCONCLUSIVE, PASS]
    assert results[0].value == pytest.approx(300.0)  # inclusive: exactly the limit passes
    assert results[2].n == 5 and results[2].target.needed == 100
    assert results[3].value == 0.0
    assert results[0].row()["status"] == PASS


def test_evaluate_p99_becomes_conclusive_at_100_values() -> None:
    slo = parse_slo({"min_samples": 1, "targets": ["ttft p99 <= 1 s", "e2el median <= 2 s"]})
    assert evaluate(slo, samples([10.0] * 99))[0].status == INCONCLUSIVE
    results = evaluate(slo, samples([10.0] * 100))
    assert [r.status for r in results] == [PASS, PASS]


def test_error_rate_counts_failures_among_all_requests() -> None:
    slo = parse_slo({"min_samples": 4, "targets": ["error_rate <= 20 %", "tpot mean <= 1 ms"]})
    rate, tpot = evaluate(slo, samples([10, 10, 10], failed=1))
    assert (rate.status, rate.value, rate.n) == (MISS, 25.0, 4)
    assert (tpot.status, tpot.value, tpot.n) == (INCONCLUSIVE, None, 0)  # one token: no TPOT
    assert evaluate(slo, [])[0].status == INCONCLUSIVE


def test_exit_code_precedence() -> None:
    slo = parse_slo({"min_samples": 1, "targets": ["ttft p50 <= 1 s"]})
    passed = evaluate(slo, samples([5, 5]))
    missed = evaluate(parse_slo({"min_samples": 1, "targets": ["ttft p50 <= 1 ms"]}), samples([5, 5]))
    unknown = evaluate(slo, [])
    ok = Check("client CPU", 10.0, 50.0, OK)
    warn = Check("TTFT gap client-server", 300.0, 100.0, WARN)
    invalid = Check("client CPU", 90.0, 50.0, INVALID)
    assert exit_code(passed, [ok, warn]) == 0
    assert exit_code(missed, [ok]) == 1
    assert exit_code(unknown, []) == 3
    assert exit_code(missed + unknown, []) == 1  # a miss is a miss
    assert exit_code(missed, [invalid]) == 3  # but not when the client was the bottleneck
    assert invalid.row()["status"] == INVALID
