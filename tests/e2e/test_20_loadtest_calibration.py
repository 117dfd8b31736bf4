"""Calibration of the load generator against a fake server with known timing.

Not a unit test: it runs the real CLI (Locust headless in a subprocess) against
``tests/fakes/fake_sse.py``, whose TTFT and gaps between chunks are set, and checks
that what the suite measures agrees with what the fake did, within stated tolerances.
It needs no vLLM server, but it times real streams, so it is marked like the live
tests (``e2e``) and kept out of the unit tests.

The truth is what the fake itself did: when it wrote its first and last chunk, from
the moment it had read the request. Tolerances: the client can only add time
(connecting, sending, parsing, scheduling on a busy 2-core machine), so its means may
exceed the truth by at most CLIENT_SLACK_MS (15 ms; E2EL 25 ms) and fall short of it by at most
SLEEP_SLACK_MS (2 ms, clock and rounding); TPOT and the pooled ITL, where the client's
offsets cancel, must agree within 2 ms.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_sse import FakeSSEServer

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLIENT_SLACK_MS = 15.0  # the most the client may add to a latency, on average
# E2EL ends with the last of 33 chunks, each read and parsed while the fake (in this
# process) and the load generator share two cores: seen 18 ms late once in CI
E2EL_SLACK_MS = 25.0
SLEEP_SLACK_MS = 2.0  # the client can never be earlier than the fake; clock rounding
TTFT_S, ITL_S, TOKENS = 0.200, 0.040, 32  # the "short" scenario asks for 32 tokens


def run_bounded(cmd: list[str], timeout: float, **kwargs: Any) -> tuple[int, str]:
    """Run the CLI; past ``timeout``, SIGTERM it (it then stops its locust) and fail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"the load test did not end within {timeout} s:\n{output}")
    return proc.returncode, output


def run_cli(out: Path, *options: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    cmd = [sys.executable, "-m", "loadtests", "run", "--out", str(out), "--seed", "1", *options]
    code, output = run_bounded(cmd, timeout, cwd=REPO)
    result_file = out / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    return code, result, output


def write_slo(path: Path, *targets: str, min_samples: int = 3, extra: str = "") -> Path:
    lines = [f"min_samples: {min_samples}", "targets:"] + [f"  - {t}" for t in targets]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture
def fake() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(ttft=TTFT_S, itl=ITL_S) as server:
        yield server


def within(measured: float, truth: float, slack_ms: float = CLIENT_SLACK_MS) -> bool:
    return truth - SLEEP_SLACK_MS <= measured <= truth + slack_ms


def mean_ms(values: list[float]) -> float:
    return 1000.0 * sum(values) / len(values)


def test_measured_timing_agrees_with_the_fake(fake: FakeSSEServer, tmp_path: Path) -> None:
    slo = write_slo(tmp_path / "slo.yaml", "ttft p50 <= 1 s", "error_rate <= 1 %")
    code, r, output = run_cli(
        tmp_path / "run",
        "--host", fake.base_url, "--users", "2", "--duration", "6s", "--warmup", "1s",
        "--slo", str(slo),
    )  # fmt: skip
    assert code == 0, output
    assert r["completed"] >= 6 and r["failed"] == 0
    # The truth: when the fake wrote its first and last chunk, from the moment it had
    # read the request (its sleeps overshoot a little on a busy machine; that is the
    # server's time, not a measurement error). Every request is alike, so the means of
    # the measured stage and of all the fake's requests describe the same thing.
    true_ttft = mean_ms(fake.stats.ttft)
    true_e2el = mean_ms(fake.stats.e2e)
    true_tpot = (true_e2el - true_ttft) / (TOKENS - 1)
    assert true_ttft >= TTFT_S * 1000 and true_e2el >= (TTFT_S + (TOKENS - 1) * ITL_S) * 1000
    assert within(r["mean_ttft_ms"], true_ttft), (r["mean_ttft_ms"], true_ttft)
    assert within(r["mean_ttft_content_ms"], true_ttft), (r["mean_ttft_content_ms"], true_ttft)
    assert within(r["mean_e2el_ms"], true_e2el, E2EL_SLACK_MS), (r["mean_e2el_ms"], true_e2el)
    # TPOT: (E2EL - TTFT) / 31; the client's offsets on both ends cancel out.
    assert abs(r["mean_tpot_ms"] - true_tpot) <= SLEEP_SLACK_MS, (r["mean_tpot_ms"], true_tpot)
    # ITL pools 32 gaps per request: the role->first-token gap (~0) and 31 of 40 ms.
    assert within(r["median_itl_ms"], ITL_S * 1000), r["median_itl_ms"]
    pooled = (true_e2el - true_ttft) / TOKENS
    assert abs(r["mean_itl_ms"] - pooled) <= SLEEP_SLACK_MS, (r["mean_itl_ms"], pooled)
    assert r["total_output_tokens"] == TOKENS * r["completed"]
    assert r["total_chunks"] == (TOKENS + 1) * r["completed"]
    # The server-side cross-check: the fake's /metrics histogram gives the same gap.
    assert r["server"]["ttft"]["count"] >= r["completed"]
    gap = next(c for c in r["checks"] if c["check"] == "TTFT gap client-server")
    assert -SLEEP_SLACK_MS <= gap["value"] <= CLIENT_SLACK_MS, gap


def test_open_loop_on_two_workers(fake: FakeSSEServer, tmp_path: Path) -> None:
    """WORKERS=2: the master judges the samples of both workers; nothing is lost."""
    fake.behaviour.ttft, fake.behaviour.itl = 0.02, 0.005
    slo = write_slo(tmp_path / "slo.yaml", "ttft_including_client_queue p50 <= 1 s")
    out = tmp_path / "run"
    code, r, output = run_cli(
        out,
        "--host", fake.root_url, "--rate", "6", "--users", "8", "--workers", "2",
        "--duration", "6s", "--warmup", "1s", "--slo", str(slo), "--scenario", "completions",
    )  # fmt: skip
    assert code == 0, output
    assert r["shape"] == "open" and r["request_rate"] == 6 and r["workers"] == 2
    assert r["backend"] == "openai" and fake.stats.bodies[0]["prompt"]
    assert r["mean_client_queue_time_ms"] is not None
    assert 15 <= r["completed"] <= 70  # about 6 req/s for 6 s
    raw = {p.name.split("-")[0]: p for p in (out / "raw").glob("*.jsonl")}
    workers = [p for p in (out / "raw").glob("worker-*.jsonl")]
    assert len(workers) == 2 and "master" in raw
    lines = [json.loads(x) for p in workers for x in p.read_text().splitlines()]
    samples = [x for x in lines if x["ev"] == "sample"]
    assert {s["proc"] for s in samples} == {p.stem for p in workers}  # both sent requests
    assert len(samples) == fake.stats.requests  # every request made it into a file
    assert sum(1 for x in lines if x["ev"] == "done") == 2  # test_stop/quitting on each worker
    master = raw["master"].read_text()
    assert '"ev":"sample"' not in master
    assert output.count("[loadtest] verdict:") == 1  # one verdict, on the master
    for name in ("locust.html", "locust_stats.csv", "ttft_hist.png"):
        assert (out / name).is_file()


def test_step_shape_finds_the_capacity(fake: FakeSSEServer, tmp_path: Path) -> None:
    """A fake that serves one stream at a time: TTFT grows with concurrency."""
    fake.behaviour.ttft, fake.behaviour.itl, fake.behaviour.serial = 0.05, 0.002, True
    # Alone: TTFT 50 ms. Two users: one waits for the other's ~110 ms stream.
    slo = write_slo(tmp_path / "slo.yaml", "ttft p90 <= 100 ms", min_samples=5)
    code, r, output = run_cli(
        tmp_path / "run",
        "--host", fake.root_url, "--shape", "step", "--step-users", "1,2,4",
        "--duration", "15s", "--warmup", "1s", "--slo", str(slo),
    )  # fmt: skip
    assert code == 0, output
    assert r["capacity_users"] == 1
    verdicts = [(s["stage"], s["verdict"]) for s in r["stages"]]
    assert verdicts[:2] == [("step-1", "PASS"), ("step-2", "MISSED")], verdicts
    assert "capacity: 1 users met every target" in output
