"""Prometheus text parsing, histogram deltas and quantile estimates (by hand)."""

from __future__ import annotations

import pytest

from loadtests.prom import Histogram, parse_histograms, scrape, stage_summary
from tests.fakes.fake_sse import FakeSSEServer

BEFORE = """\
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 2.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.35
vllm:time_to_first_token_seconds_created{engine="0",model_name="m"} 1.7e+09
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="other"} 50.0
"""

AFTER = """\
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="m"} 6.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="m"} 10.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 8.35 1700000000000
vllm:request_queue_time_seconds_bucket{engine="0",le="0.3",model_name="m"} 10.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 10.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 0.02
garbage line without value
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="other"} 90.0
"""


def test_parse_filters_by_model_and_skips_noise() -> None:
    h = parse_histograms(BEFORE, model="m")["vllm:time_to_first_token_seconds"]
    assert h.buckets == ((0.1, 1.0), (0.5, 2.0), (1.0, 2.0), (float("inf"), 2.0))
    assert (h.count, h.sum) == (2.0, 0.35)
    everything = parse_histograms(BEFORE)["vllm:time_to_first_token_seconds"]
    assert everything.buckets[0] == (0.1, 51.0)  # summed over label sets without a filter


def test_parse_sums_engines_and_unescapes_labels() -> None:
    text = (
        'x_bucket{engine="0",le="1",model_name="a\\"b"} 2\n'
        'x_bucket{engine="1",le="1",model_name="a\\"b"} 3\n'
        'x_count{model_name="a\\"b"} 5\n'
        "x_sum 1.5\n"
        "y_bucket 7\n"
        'x_bucket{le="2",model_name="a\\"b"} NaNish\n'
    )
    h = parse_histograms(text, model='a"b')["x"]
    assert h.buckets == ((1.0, 5.0),)
    assert (h.count, h.sum) == (5.0, 1.5)


def test_delta_mean_and_quantiles_by_hand() -> None:
    before = parse_histograms(BEFORE, "m")["vllm:time_to_first_token_seconds"]
    after = parse_histograms(AFTER, "m")["vllm:time_to_first_token_seconds"]
    d = after.minus(before)
    assert d is not None
    # Stage buckets: (0.1: 0), (0.5: 4), (1.0: 8), (+Inf: 10); 10 requests, sum 8.0 s.
    assert d.buckets == ((0.1, 0.0), (0.5, 4.0), (1.0, 8.0), (float("inf"), 10.0))
    assert d.mean() == pytest.approx(0.8)
    assert d.quantile(0.5) == pytest.approx(0.5 + 0.5 * (5 - 4) / 4)  # rank 5 in (0.5, 1.0]
    assert d.quantile(0.2) == pytest.approx(0.1 + 0.4 * 2 / 4)  # rank 2 in (0.1, 0.5]
    assert d.quantile(0.95) == 1.0  # in +Inf: the highest finite bound, as Prometheus says
    assert d.quantile(0.0) == 0.1  # rank 0: the upper edge of the first (empty) bucket


def test_counter_reset_and_empty_histograms() -> None:
    before = parse_histograms(AFTER, "m")["vllm:time_to_first_token_seconds"]
    after = parse_histograms(BEFORE, "m")["vllm:time_to_first_token_seconds"]
    assert after.minus(before) is None  # the server restarted between the scrapes
    empty = Histogram(buckets=(), count=0.0, sum=0.0)
    assert empty.mean() is None and empty.quantile(0.5) is None
    assert not empty.in_first_bucket(0.5)
    odd = Histogram(buckets=((1.0, 1.0),), count=5.0, sum=1.0)  # count beyond the buckets
    assert odd.quantile(0.9) == 1.0


def test_stage_summary_marks_quantiles_below_the_first_bucket() -> None:
    summary = stage_summary(BEFORE, AFTER, "m")
    assert summary["ttft"]["count"] == 10
    assert summary["ttft"]["mean_ms"] == pytest.approx(800.0)
    assert summary["ttft"]["p50_ms"] == pytest.approx(625.0)
    queue = summary["queue_time"]  # no queue histogram before: counted from zero
    assert queue["mean_ms"] == pytest.approx(2.0)
    assert queue["p50_ms"] is None and queue["p50_below_ms"] == pytest.approx(300.0)
    assert "e2el" not in summary
    assert stage_summary(None, AFTER, "m") == {}
    assert stage_summary(AFTER, BEFORE, "m") == {}  # counters went back: nothing to say


def test_scrape_the_fake_server() -> None:
    with FakeSSEServer() as fake:
        text = scrape(fake.root_url)
        assert text is not None and "vllm:time_to_first_token_seconds_count" in text
        assert scrape(fake.root_url + "/nothing") is None  # 404
    assert scrape("http://127.0.0.1:9") is None  # nothing listens there
