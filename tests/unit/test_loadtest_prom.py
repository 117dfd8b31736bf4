"""The load test's server cross-check: stage deltas, several servers merged, scrapes.

The parser and the histogram arithmetic are tested in test_metrics.py.
"""

from __future__ import annotations

import pytest

from loadtests.prom import merged_deltas, metrics_url, scrape, scrape_all, stage_summary
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
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="other"} 90.0
"""


def test_stage_summary_marks_quantiles_below_the_first_bucket() -> None:
    summary = stage_summary(BEFORE, AFTER, "m")
    assert summary["ttft"]["count"] == 10
    assert summary["ttft"]["mean_ms"] == pytest.approx(800.0)
    assert summary["ttft"]["p50_ms"] == pytest.approx(625.0)
    queue = summary["queue_time"]  # no queue histogram before: counted from zero
    assert queue["mean_ms"] == pytest.approx(2.0)
    assert queue["p50_ms"] is None and queue["p50_below_ms"] == pytest.approx(300.0)
    assert "e2el" not in summary and "metrics_urls" not in summary
    assert stage_summary(None, AFTER, "m") == {}
    assert stage_summary(AFTER, BEFORE, "m") == {}  # counters went back: nothing to say


def test_a_scrape_that_is_not_prometheus_text_gives_nothing() -> None:
    assert stage_summary(BEFORE, AFTER + "garbage line without value\n", "m") == {}


def test_several_servers_are_summed_server_by_server() -> None:
    # Two servers behind a gateway: the same stage on each, one of them twice as busy.
    before = {"http://a:8000": BEFORE, "http://b:8000": BEFORE}
    after = {"http://a:8000": AFTER, "http://b:8000": AFTER}
    one = stage_summary(BEFORE, AFTER, "m")
    both = stage_summary(before, after, "m")
    assert both["ttft"]["count"] == 2 * one["ttft"]["count"]
    assert both["ttft"]["mean_ms"] == pytest.approx(one["ttft"]["mean_ms"])
    assert both["ttft"]["p50_ms"] == pytest.approx(one["ttft"]["p50_ms"])  # same shape, twice the counts
    assert both["metrics_urls"] == ["http://a:8000", "http://b:8000"]

    merged = merged_deltas(before, after, "m")["histograms"]["vllm:time_to_first_token_seconds"]
    assert merged.buckets == ((0.1, 0.0), (0.5, 8.0), (1.0, 16.0), (float("inf"), 20.0))
    assert merged.sum == pytest.approx(16.0)


def test_a_server_that_restarted_or_failed_drops_out_alone() -> None:
    before = {"http://a:8000": BEFORE, "http://b:8000": AFTER, "http://c:8000": BEFORE}
    after = {"http://a:8000": AFTER, "http://b:8000": BEFORE, "http://c:8000": None}
    summary = stage_summary(before, after, "m")
    assert summary["ttft"]["count"] == 10  # b went back (a restart), c did not answer
    assert summary["metrics_urls"] == ["http://a:8000"]
    assert stage_summary({"http://a:8000": None}, after, "m") == {}


def test_metrics_url_from_any_form() -> None:
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/metrics"):
        assert metrics_url(url) == "http://h:8000/metrics"


def test_scrape_the_fake_server() -> None:
    with FakeSSEServer() as fake:
        text = scrape(fake.root_url)
        assert text is not None and "vllm:time_to_first_token_seconds_count" in text
        assert scrape(fake.root_url + "/nothing") is None  # 404
        both = scrape_all([fake.root_url, "http://127.0.0.1:9"], {fake.root_url: {"X-Test": "1"}})
        assert both[fake.root_url] == text and both["http://127.0.0.1:9"] is None
    assert scrape("http://127.0.0.1:9") is None  # nothing listens there
