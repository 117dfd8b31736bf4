"""Per-run figures against values computed by hand (numpy linear percentiles)."""

from __future__ import annotations

import math

import pytest

from loadtests.metrics import Sample, distribution_ms, is_good, metric_values, peaks, summarize


def fixture() -> list[Sample]:
    """Three successes and one failure, times in seconds, starts on a wall clock."""
    return [
        Sample(
            start=1000.0,
            success=True,
            ttft=0.100,
            ttft_content=0.110,
            itl=[0.020, 0.030, 0.040],
            e2el=0.190,
            elapsed=0.2,
            output_tokens=4,
            prompt_tokens=10,
            chunks=4,
        ),
        Sample(
            start=1000.5,
            success=True,
            ttft=0.200,
            ttft_content=0.200,
            itl=[0.050],
            e2el=0.250,
            elapsed=0.26,
            output_tokens=2,
            prompt_tokens=10,
            chunks=2,
        ),
        Sample(
            start=1001.2,
            success=True,
            ttft=0.300,
            ttft_content=0.300,
            itl=[],
            e2el=0.300,
            elapsed=0.31,
            output_tokens=1,
            prompt_tokens=10,
            chunks=1,
            tokens_source="chunks",
        ),
        Sample(start=1001.5, success=False, status=500, error=None, elapsed=0.01),
    ]


def test_tpot_formula_and_per_request_values() -> None:
    a, b, c, failed = fixture()
    assert a.tpot == pytest.approx((0.190 - 0.100) / 3)
    assert b.tpot == pytest.approx(0.050)
    assert c.tpot is None  # one output token: no TPOT
    assert failed.tpot is None and failed.value("ttft") is None
    assert a.value("ttft_including_client_queue") is None
    with pytest.raises(KeyError):
        a.value("nope")


def test_distributions_match_hand_computed_values() -> None:
    result = summarize(fixture(), duration=2.0)
    # TTFT [100, 200, 300] ms
    assert result["mean_ttft_ms"] == pytest.approx(200.0)
    assert result["median_ttft_ms"] == pytest.approx(200.0)
    assert result["std_ttft_ms"] == pytest.approx(math.sqrt(20000 / 3))
    assert result["p50_ttft_ms"] == pytest.approx(200.0)
    assert result["p90_ttft_ms"] == pytest.approx(280.0)  # rank 1.8: 200 + 0.8 * 100
    assert result["p95_ttft_ms"] == pytest.approx(290.0)
    assert result["p99_ttft_ms"] == pytest.approx(298.0)
    assert result["mean_ttft_content_ms"] == pytest.approx(610 / 3)
    # TPOT [30, 50] ms (the one-token request has none)
    assert result["mean_tpot_ms"] == pytest.approx(40.0)
    assert result["p90_tpot_ms"] == pytest.approx(48.0)
    # ITL pools the gaps of all requests: [20, 30, 40, 50] ms
    assert result["mean_itl_ms"] == pytest.approx(35.0)
    assert result["median_itl_ms"] == pytest.approx(35.0)
    assert result["p90_itl_ms"] == pytest.approx(47.0)
    assert result["p99_itl_ms"] == pytest.approx(49.7)
    # E2EL [190, 250, 300] ms
    assert result["mean_e2el_ms"] == pytest.approx(740 / 3)
    assert result["p50_e2el_ms"] == pytest.approx(250.0)
    assert "mean_client_queue_time_ms" not in result  # closed loop: no arrival schedule


def test_counts_and_throughputs() -> None:
    result = summarize(fixture(), duration=2.0)
    assert result["completed"] == 3
    assert result["failed"] == 1
    assert result["total_input_tokens"] == 30
    assert result["total_output_tokens"] == 7
    assert result["request_throughput"] == pytest.approx(1.5)
    assert result["output_throughput"] == pytest.approx(3.5)
    assert result["total_token_throughput"] == pytest.approx(18.5)
    assert result["request_goodput"] is None  # no SLO thresholds given
    assert result["max_output_tokens_per_s"] == 6.0
    assert result["max_concurrent_requests"] == 2
    assert result["total_chunks"] == 7
    assert result["output_tokens_source"] == {"usage": 2, "chunks": 1}
    assert result["error_counts"] == {"HTTP 500": 1}


def test_goodput_counts_requests_meeting_every_slo() -> None:
    thresholds = {"ttft": 250.0, "tpot": 45.0}
    a, b, c, failed = fixture()
    assert is_good(a, thresholds)
    assert not is_good(b, thresholds)  # TPOT 50 ms
    assert not is_good(c, thresholds)  # TTFT 300 ms
    assert is_good(c, {"tpot": 1.0})  # one token: TPOT counts as 0, as vLLM does
    assert not is_good(a, {"client_queue_time": 1000.0})  # no value: not good
    assert not is_good(failed, {})
    result = summarize(fixture(), duration=2.0, goodput_ms=thresholds)
    assert result["request_goodput"] == pytest.approx(0.5)
    assert result["good_fraction"] == pytest.approx(0.25)  # errors in the denominator


def test_open_loop_metrics_from_scheduled_arrival() -> None:
    samples = fixture()
    samples[0].client_queue = 0.010
    samples[1].client_queue = 0.030
    assert metric_values(samples, "client_queue_time") == [0.010, 0.030]
    assert metric_values(samples, "ttft_including_client_queue") == pytest.approx([0.11, 0.23])
    result = summarize(samples, duration=2.0)
    assert result["mean_client_queue_time_ms"] == pytest.approx(20.0)
    assert result["mean_e2el_including_client_queue_ms"] == pytest.approx(240.0)


def test_empty_inputs() -> None:
    assert distribution_ms([], "ttft")["mean_ttft_ms"] is None
    assert peaks([]) == (0.0, 0)
    result = summarize([], duration=0.0)
    assert result["completed"] == 0 and result["mean_ttft_ms"] is None


def test_sample_json_round_trip() -> None:
    sample = fixture()[0]
    data = sample.to_json()
    assert "text" not in data
    assert Sample.from_json({**data, "unknown": 1}) == sample
    sample.text = "kept when usage is missing"
    assert Sample.from_json(sample.to_json()).text == sample.text
