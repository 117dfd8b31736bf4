"""`llf-client top`: the figures from two real scrapes, the JSON, the view, the keys.

The readings come from /metrics captured on the real server (tests/unit/data) or are
served by the fake server; the live loop runs with a fake clock and fake keys.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from llf_client import cli, top
from llf_client.client import EndpointClient
from llf_client.config import Endpoint
from llf_client.errors import ConnectionRefused
from llf_client.metrics import Metrics
from tests.fakes.fake_openai import FakeOpenAI

DATA = Path(__file__).parent / "data"
BEFORE = (DATA / "vllm-metrics-before.txt").read_text()
AFTER = (DATA / "vllm-metrics-after.txt").read_text()
EP = Endpoint("local", "http://127.0.0.1:8000/v1")


def reading(at: float, text: str | None, **kw: Any) -> top.Reading:
    return top.Reading(at=at, health_status=200, metrics=None if text is None else Metrics.parse(text), **kw)


def test_snapshot_from_two_real_scrapes() -> None:
    doc = top.snapshot(EP, [reading(100.0, BEFORE), reading(110.0, AFTER)])
    assert doc["health"] == "ok" and doc["metrics"] == "ok" and doc["error"] is None
    assert doc["models"] == ["smollm2-135m-instruct"]
    assert (doc["requests_running"], doc["requests_waiting"], doc["kv_cache_percent"]) == (0.0, 0.0, 0.0)
    assert doc["window_s"] == 10.0 and doc["rate_window_s"] == 10.0
    assert doc["requests_finished"] == 3  # the three requests between the scrapes
    assert doc["finish_reasons"]["length"] == 3
    # worked out by hand in test_metrics.py: rank 1.5 of 3 in (0.1, 0.25]
    assert doc["ttft_p50_ms"] == pytest.approx(137.5)
    assert doc["ttft_p95_ms"] == pytest.approx(238.75, abs=0.06)
    assert doc["itl_p50_ms"] == pytest.approx(37.5)
    assert doc["prompt_tokens_per_s"] == pytest.approx(10.2)  # 102 tokens in 10 s
    assert doc["generation_tokens_per_s"] == pytest.approx(2.4)  # 24 tokens in 10 s
    # the one 4xx in the files came before the first scrape
    assert doc["errors"] == {"scrape_failures": 0, "http_4xx": 0, "http_5xx": 0, "aborted": 0, "failed": 0}
    assert top.row(doc) == ["local", "ok", "0", "0", "0.0", "138", "239", "38", "10.2", "2.4", "3", "0"]
    doc["errors"].update(scrape_failures=2, http_5xx=1)
    assert top.error_count(doc) == 3


def test_rates_over_the_last_interval_and_latencies_over_the_window() -> None:
    # Nothing happened in the last interval: no tokens per second now, yet the
    # window still holds the three requests.
    doc = top.snapshot(EP, [reading(100.0, BEFORE), reading(110.0, AFTER), reading(112.0, AFTER)])
    assert doc["window_s"] == 12.0 and doc["rate_window_s"] == 2.0
    assert doc["generation_tokens_per_s"] == 0.0 and doc["requests_finished"] == 3


def test_one_reading_has_gauges_but_no_window() -> None:
    doc = top.snapshot(EP, [reading(100.0, AFTER)])
    assert doc["requests_running"] == 0.0 and doc["window_s"] is None and doc["ttft_p50_ms"] is None
    assert top.row(doc)[5:11] == ["-"] * 6


def test_a_restart_between_readings_shows_no_window_figures() -> None:
    doc = top.snapshot(EP, [reading(100.0, AFTER), reading(110.0, BEFORE)])
    assert doc["ttft_p50_ms"] is None and doc["generation_tokens_per_s"] is None
    assert doc["requests_finished"] == 0  # every reason went back: nothing counted


def test_watch_keeps_the_window() -> None:
    watch = top.Watch(EndpointClient(EP), window=60.0)
    for at in range(0, 200, 10):
        watch.add(reading(float(at), AFTER))
    assert [r.at for r in watch.readings][0] == 130.0  # the base: at or just before 190 - 60
    watch.add(top.Reading(at=200.0, metrics_state="down", error=ConnectionRefused("refused")))
    doc = watch.snapshot()
    assert doc["health"] == "down" and doc["errors"]["scrape_failures"] == 1
    assert top.row(doc)[2:11] == ["-"] * 9


def test_not_available_and_errors_in_the_view() -> None:
    doc = {
        "time": "2026-01-01T12:00:00+00:00",
        "interval_s": 2.0,
        "window_s": 60.0,
        "endpoints": [
            top.snapshot(EP, [top.Reading(1.0, 200, metrics_state=top.NOT_AVAILABLE, note="/metrics answered 404")]),
            top.snapshot(
                Endpoint("dead", "http://127.0.0.1:9/v1"),
                [top.Reading(1.0, metrics_state="down", error=ConnectionRefused("connection refused", where="dead"))],
                failures=1,
            ),
        ],
    }
    out = io.StringIO()
    Console(file=out, width=100).print(top.render(doc))
    text = out.getvalue()
    assert "llf-client top 12:00:00  every 2 s" in text
    assert "local: metrics not available (/metrics answered 404)" in text
    assert "dead: connection refused" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["local", "ok", *["n/a"] * 9, "0"] in lines
    assert ["dead", "down", *["-"] * 9, "1"] in lines


# --- against the fake server -------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_once_json_reads_twice(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(metrics=[BEFORE, AFTER]) as fake:
        code, out, err = run(capsys, "top", "--once", "--json", "--interval", "0.05", "--url", fake.base_url)
        assert fake.behaviour.requests.count("GET /metrics") == 2
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["ok"] is True and doc["interval_s"] == 0.05 and doc["window_s"] == 0.05
    (endpoint,) = doc["endpoints"]
    assert endpoint["endpoint"] == "url" and endpoint["requests_finished"] == 3
    assert endpoint["ttft_p50_ms"] == pytest.approx(137.5)
    assert endpoint["generation_tokens_per_s"] > 0


def test_once_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(metrics=[BEFORE, AFTER]) as fake:
        code, out, _ = run(capsys, "top", "--once", "--interval", "0.05", "--url", fake.base_url)
    assert code == 0
    assert "ENDPOINT" in out and "TTFT50" in out and "138" in out


def test_a_gateway_without_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    # A gateway answers 404 for /health and /metrics: health comes from /v1/models.
    with FakeOpenAI(health_status=404, metrics_status=404, api_key="k" * 20) as fake:
        code, out, err = run(
            capsys, "top", "--json", "--interval", "0.01", "--url", fake.base_url, "--api-key", "k" * 20
        )
        assert "GET /v1/models" in fake.behaviour.requests
    assert code == 0 and err == ""
    (endpoint,) = json.loads(out)["endpoints"]
    assert endpoint["health"] == "ok" and endpoint["metrics"] == "metrics not available"
    assert endpoint["note"] == "/metrics answered 404" and endpoint["error"] is None


def test_a_gateway_that_refuses_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(health_status=404, metrics_status=404, api_key="k" * 20) as fake:
        code, out, err = run(capsys, "top", "--json", "--interval", "0.01", "--url", fake.base_url)
    assert code == 4  # authentication, as in errors.py
    assert json.loads(out)["endpoints"][0]["health"] == "down"
    assert "HTTP 401" in err


def test_metrics_that_are_not_prometheus_text(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(metrics=["<html>oops</html>\n"]) as fake:
        code, out, err = run(capsys, "top", "--json", "--interval", "0.01", "--url", fake.base_url)
    assert code == 7
    endpoint = json.loads(out)["endpoints"][0]
    assert endpoint["metrics"] == "error" and endpoint["errors"]["scrape_failures"] == 2
    assert "/metrics: not Prometheus text format: line 1 '<html>oops</html>'" in err


def test_metrics_server_error_and_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(metrics_status=500) as fake:
        code, _, err = run(capsys, "top", "--json", "--interval", "0.01", "--url", fake.base_url)
    assert code == 7 and "HTTP 500" in err
    with FakeOpenAI(health_status=503, metrics=[AFTER]) as fake:
        code, out, err = run(capsys, "top", "--json", "--interval", "0.01", "--url", fake.base_url)
    assert code == 7 and "/health answered 503" in err
    assert json.loads(out)["endpoints"][0]["health"] == "HTTP 503"


def test_an_endpoint_that_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "top", "--json", "--interval", "0.01", "--url", "http://127.0.0.1:9/v1")
    assert code == 3
    assert json.loads(out)["endpoints"][0]["health"] == "down"
    assert err.startswith("llf-client: error: url (http://127.0.0.1:9/v1): connection refused")


def test_every_endpoint_of_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with FakeOpenAI(metrics=[AFTER]) as a, FakeOpenAI(metrics_status=404) as b:
        path = tmp_path / "endpoints.yml"
        entries = [{"name": "a", "base_url": a.base_url}, {"name": "gw", "base_url": b.base_url}]
        path.write_text(json.dumps({"endpoints": entries}))
        code, out, _ = run(capsys, "top", "--json", "--interval", "0.01", "--endpoints", str(path))
        assert code == 0
        assert [e["endpoint"] for e in json.loads(out)["endpoints"]] == ["a", "gw"]
        code, out, _ = run(capsys, "top", "--json", "--interval", "0.01", "--endpoints", str(path), "--endpoint", "gw")
        assert [e["metrics"] for e in json.loads(out)["endpoints"]] == ["metrics not available"]


def test_interval_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["top", "--interval", "0"])
    assert caught.value.code == 2
    assert "must be > 0" in capsys.readouterr().err


# --- the live loop and the keys ------------------------------------------------------------


class FakeKeys(top.Keys):
    """Presses q after a number of waits."""

    def __init__(self, quit_after: int | None) -> None:
        super().__init__(io.StringIO())
        self.waits = 0
        self.quit_after = quit_after

    def quit_within(self, seconds: float) -> bool:
        self.waits += 1
        time.sleep(min(seconds, 0.02))
        return self.quit_after is not None and self.waits >= self.quit_after


def test_live_refreshes_until_q() -> None:
    with FakeOpenAI(metrics=[BEFORE, AFTER]) as fake:
        watch = top.Watch(EndpointClient(Endpoint("local", fake.base_url)))
        out = io.StringIO()
        top.run_live([watch], 0.01, 60.0, console=Console(file=out, width=100), keys=FakeKeys(quit_after=20))
    assert len(watch.readings) >= 1  # q ends it, whichever wait it comes in
    assert "local" in out.getvalue()


def test_live_stops_after_max_refreshes() -> None:
    with FakeOpenAI(metrics=[BEFORE, AFTER]) as fake:
        watch = top.Watch(EndpointClient(Endpoint("local", fake.base_url)))
        top.run_live([watch], 0.001, 60.0, console=Console(file=io.StringIO()), keys=FakeKeys(None), max_refreshes=2)
    assert len(watch.readings) == 2 and watch.snapshot()["requests_finished"] == 3


def test_ctrl_c_leaves_with_0(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(top, "run_live", interrupted)
    assert cli.main(["top", "--url", "http://127.0.0.1:9/v1"]) == 0


def test_keys_in_cbreak_mode_on_a_terminal() -> None:
    import termios

    master, slave = os.openpty()
    with os.fdopen(slave, "r") as stream:
        before = termios.tcgetattr(slave)
        keys = top.Keys(stream)
        with keys.cbreak():
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # no line buffering
            assert keys.quit_within(0.01) is False
            os.write(master, b"x")
            assert keys.quit_within(1.0) is False  # another key
            os.write(master, b"q")
            assert keys.quit_within(1.0) is True
        assert termios.tcgetattr(slave) == before  # the terminal is put back
    os.close(master)


def test_keys_without_a_terminal_only_wait() -> None:
    keys = top.Keys(io.StringIO())
    with keys.cbreak():
        assert keys.quit_within(0.0) is False


def test_queue_depth_before_bursting_reads_the_same_parser() -> None:
    with FakeOpenAI(metrics=[AFTER]) as fake:
        assert EndpointClient(Endpoint("f", fake.base_url)).queue_depth("smollm2-135m-instruct") == 0.0
    with FakeOpenAI(metrics=["<html>\n"]) as fake:
        assert EndpointClient(Endpoint("f", fake.base_url)).queue_depth() is None  # cannot tell: no burst
    with FakeOpenAI(metrics_status=404) as fake:
        assert EndpointClient(Endpoint("f", fake.base_url)).queue_depth() is None
