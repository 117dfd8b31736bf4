"""The master's controller, driven by a fake clock over raw sample files it reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests.collect import Collector, CpuMeter, RecordWriter
from loadtests.config import RunConfig
from loadtests.controller import Controller
from loadtests.metrics import Sample
from loadtests.report import PLOTS
from loadtests.slo import parse_slo

T0 = 1000.0
PASSING = {"min_samples": 2, "targets": ["ttft p50 <= 200 ms", "error_rate <= 10 %"]}
SERVER_BEFORE = (
    'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 0\n'
    'vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 0\n'
    'vllm:time_to_first_token_seconds_count{model_name="m"} 0\n'
    'vllm:time_to_first_token_seconds_sum{model_name="m"} 0\n'
)


def server_after(count: int, mean_s: float) -> str:
    return (
        f'vllm:time_to_first_token_seconds_bucket{{le="0.1",model_name="m"}} {count}\n'
        f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {count}\n'
        f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {count}\n'
        f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} {count * mean_s}\n'
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A controller, its clock, and the raw file of one load-generating process."""

    def __init__(
        self,
        tmp_path: Path,
        slo: dict[str, object] | None = None,
        scrapes: list[Any] | None = None,
        plots: bool = False,
        **config: object,
    ) -> None:
        settings: dict[str, object] = {"users": 2, "warmup": 2.0, "duration": 10.0, "request_timeout": 5.0}
        settings.update(config)
        self.config = RunConfig(host="http://h", model="m", out=str(tmp_path), slo_path="s", **settings)  # type: ignore[arg-type]
        self.clock = Clock()
        self.logs: list[str] = []
        self.scrapes = list(scrapes) if scrapes is not None else [SERVER_BEFORE, server_after(5, 0.05)]
        self.controller = Controller(
            self.config,
            parse_slo(slo or PASSING),
            tmp_path,
            scrape=self._scrape,
            recount=lambda samples: 0,
            clock=self.clock,
            log=self.logs.append,
            plots=plots,
        )
        self.writer = RecordWriter(tmp_path / "raw", "local", pid=1)

    def _scrape(self) -> dict[str, str | None]:
        """The next scrape: a text stands for the target's, a dict for several servers'."""
        text = self.scrapes.pop(0) if self.scrapes else None
        return text if isinstance(text, dict) else {"http://h": text}

    def tick(self, at: float) -> tuple[int, str] | None:
        self.clock.now = T0 + at
        return self.controller.tick()

    def request(self, at: float, ttft: float = 0.1, success: bool = True, **kw: object) -> None:
        self.writer.sample(
            Sample(
                start=T0 + at,
                success=success,
                status=200 if success else 503,
                ttft=ttft if success else None,
                ttft_content=ttft if success else None,
                e2el=ttft + 0.2 if success else None,
                elapsed=ttft + 0.2,
                itl=[0.1, 0.1] if success else [],
                output_tokens=3 if success else None,
                prompt_tokens=10,
                chunks=3,
                **kw,  # type: ignore[arg-type]
            )
        )

    def idle(self, at: float, cpu: float = 5.0) -> None:
        self.writer.heartbeat(cpu, 0, None, 0, t=T0 + at)


def result(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "result.json").read_text())


def test_closed_run_from_warmup_to_verdict(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert rig.tick(0) == (2, "closed")
    rig.request(0.5, ttft=5.0)  # warm-up: slow, and left out of the verdict
    assert rig.tick(1) == (2, "closed")
    assert rig.tick(2) == (2, "closed")  # the measured stage begins
    for i in range(6):
        rig.request(3 + i)
    rig.writer.heartbeat(5.0, 1, T0 + 9, 2, t=T0 + 9.5)
    assert rig.tick(12) == (0, "closed")  # drain: no new requests
    rig.writer.heartbeat(5.0, 1, T0 + 11.5, 2, t=T0 + 12.2)
    assert rig.tick(13) == (0, "closed")  # a request from before the drain is still running
    rig.idle(13.5)
    assert rig.tick(14) is None
    assert rig.controller.exit_code == 0
    assert rig.tick(15) is None  # done stays done
    doc = result(tmp_path)
    assert doc["completed"] == 6 and doc["failed"] == 0
    assert doc["mean_ttft_ms"] == pytest.approx(100.0)
    assert doc["duration"] == pytest.approx(10.0)  # stage start to the drain
    assert doc["server"]["ttft"]["count"] == 5
    gap = next(c for c in doc["checks"] if c["check"] == "TTFT gap client-server")
    assert gap["value"] == pytest.approx(50.0) and gap["status"] == "ok"
    assert doc["verdict"] == "PASS" and doc["exit_code"] == 0
    summary = (tmp_path / "summary.txt").read_text()
    assert "ttft p50 <= 200 ms" in summary and "PASS" in summary
    assert any("measure: 2 users for 10 s" in line for line in rig.logs)
    assert rig.controller.finish() == 0  # idempotent


def test_missed_target_exits_1(tmp_path: Path) -> None:
    rig = Rig(tmp_path, warmup=0.0, scrapes=[])
    rig.tick(0)
    for i in range(4):
        rig.request(1 + i, ttft=0.5)
    rig.tick(10)
    rig.idle(10.5)
    assert rig.tick(11) is None
    assert rig.controller.exit_code == 1
    assert result(tmp_path)["targets"][0]["status"] == "miss"
    assert "no server-side cross-check (through a gateway, pass the servers' --metrics-url)" in " ".join(rig.logs)


def test_servers_named_by_metrics_url_are_summed(tmp_path: Path) -> None:
    a, b, c = "http://a:8000", "http://b:8000", "http://c:8000"
    scrapes = [
        {a: SERVER_BEFORE, b: SERVER_BEFORE, c: "<html>gateway</html>"},
        {a: server_after(4, 0.05), b: server_after(6, 0.05), c: "<html>gateway</html>"},
    ]
    rig = Rig(tmp_path, warmup=0.0, scrapes=scrapes, metrics_urls=[a, b, c])
    rig.tick(0)
    for i in range(4):
        rig.request(1 + i)
    rig.tick(10)
    rig.idle(10.5)
    assert rig.tick(11) is None
    server = result(tmp_path)["stages"][0]["server"]
    assert server["ttft"]["count"] == 10 and server["metrics_urls"] == [a, b]
    logs = " ".join(rig.logs)
    assert "http://c:8000: not Prometheus text format: line 1 '<html>gateway</html>'" in logs
    assert logs.count("http://c:8000") == 1  # said once, not at every scrape
    assert f"server figures: /metrics of {a}, {b} (summed)" in (tmp_path / "summary.txt").read_text()


def test_too_few_samples_is_inconclusive(tmp_path: Path) -> None:
    rig = Rig(tmp_path, warmup=0.0)
    rig.tick(0)
    rig.request(1)
    rig.tick(10)
    rig.idle(10.5)
    rig.tick(11)
    assert rig.controller.exit_code == 3
    assert {t["status"] for t in result(tmp_path)["targets"]} == {"inconclusive"}


def test_busy_client_makes_the_run_invalid(tmp_path: Path) -> None:
    rig = Rig(tmp_path, warmup=0.0)
    rig.tick(0)
    for i in range(4):
        rig.request(1 + i)
        rig.writer.heartbeat(95.0, 1, T0 + 1 + i, 2, t=T0 + 1.5 + i)
    rig.tick(10)
    rig.idle(10.5, cpu=95.0)
    rig.tick(11)
    doc = result(tmp_path)
    cpu = next(c for c in doc["checks"] if c["check"] == "client CPU")
    assert cpu["status"] == "invalid" and cpu["value"] == pytest.approx(95.0)
    assert doc["exit_code"] == 3


@pytest.mark.parametrize(("action", "code"), [("warn", 0), ("invalid", 3)])
def test_server_gap_is_flagged(tmp_path: Path, action: str, code: int) -> None:
    slo = {**PASSING, "validity": {"server_gap_ms": 20, "server_gap_action": action}}
    rig = Rig(tmp_path, slo=slo, warmup=0.0, scrapes=[SERVER_BEFORE, server_after(4, 0.02)])
    rig.tick(0)
    for i in range(4):
        rig.request(1 + i, ttft=0.1)
    rig.tick(10)
    rig.idle(10.5)
    rig.tick(11)
    doc = result(tmp_path)
    gap = next(c for c in doc["checks"] if c["check"] == "TTFT gap client-server")
    assert gap["value"] == pytest.approx(80.0)
    assert gap["status"] == ("warn" if action == "warn" else "invalid")
    assert doc["exit_code"] == code


def test_open_loop_schedule_lag(tmp_path: Path) -> None:
    rig = Rig(tmp_path, warmup=0.0, shape="open", rate=1.0, users=8)
    assert rig.tick(0) == (8, "open")
    for i in range(4):
        rig.request(1 + i, client_queue=0.2)
    rig.tick(10)
    rig.idle(10.5)
    rig.tick(11)
    doc = result(tmp_path)
    lag = next(c for c in doc["checks"] if c["check"] == "schedule lag p95")
    assert lag["value"] == pytest.approx(200.0) and lag["status"] == "invalid"
    assert doc["mean_client_queue_time_ms"] == pytest.approx(200.0)
    assert doc["mean_ttft_including_client_queue_ms"] == pytest.approx(300.0)
    assert doc["exit_code"] == 3
    assert any("1 req/s, at most 8 in flight" in line for line in rig.logs)


def step_rig(tmp_path: Path, min_users: int) -> Rig:
    slo = {**PASSING, "capacity": {"min_users": min_users}}
    rig = Rig(tmp_path, slo=slo, shape="step", users=4, warmup=0.0, duration=30.0, scrapes=[])
    assert rig.tick(0) == (1, "closed")
    for i in range(3):
        rig.request(1 + i, ttft=0.1)  # step-1 passes
    assert rig.tick(10) == (2, "closed")
    rig.idle(10.5)
    assert rig.tick(11) == (2, "closed")  # step-1 judged: pass, go on
    for i in range(3):
        rig.request(12 + i, ttft=0.9)  # step-2 misses
    assert rig.tick(20) == (4, "closed")
    rig.idle(20.5)
    assert rig.tick(21) == (0, "closed")  # step-2 judged: miss, stop the steps
    rig.idle(21.5)
    assert rig.tick(22) is None
    return rig


def test_step_shape_reports_capacity(tmp_path: Path) -> None:
    rig = step_rig(tmp_path, min_users=1)
    doc = result(tmp_path)
    assert doc["capacity_users"] == 1
    assert [(s["stage"], s["verdict"]) for s in doc["stages"]] == [
        ("step-1", "PASS"),
        ("step-2", "MISSED"),
        ("step-4", "INVALID/INCONCLUSIVE"),  # cut short
    ]
    assert doc["stages"][2]["notes"] == ["cut short after 1.0 of 10 s"]
    assert doc["stage"] == "step-1"  # the top level describes the capacity step
    assert doc["stop_reason"] == "step-2 did not pass: stopping the steps"
    assert rig.controller.exit_code == 0
    assert "capacity: 1 users met every target" in (tmp_path / "summary.txt").read_text()


def test_step_shape_below_the_capacity_target(tmp_path: Path) -> None:
    rig = step_rig(tmp_path, min_users=2)
    assert rig.controller.exit_code == 1


def test_step_shape_where_every_step_passes_but_the_top_is_too_low(tmp_path: Path) -> None:
    slo = {**PASSING, "capacity": {"min_users": 8}}
    rig = Rig(tmp_path, slo=slo, shape="step", users=1, warmup=0.0, duration=10.0, scrapes=[])
    rig.tick(0)
    for i in range(3):
        rig.request(1 + i)
    rig.tick(10)
    rig.idle(10.5)
    rig.tick(11)
    rig.tick(12)
    assert rig.controller.exit_code == 3
    assert result(tmp_path)["capacity_users"] == 1


def test_failed_warmup_stops_the_run_and_is_judged(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.tick(0)
    rig.request(0.5, success=False, error="HTTP 401: invalid API key")
    rig.request(0.6, success=False, error="HTTP 401: invalid API key")
    assert rig.tick(2) == (0, "closed")  # no measured stage: straight to the drain
    rig.idle(2.5)
    assert rig.tick(3) is None
    doc = result(tmp_path)
    assert doc["stage"] == "warmup" and doc["failed"] == 2
    assert doc["exit_code"] == 1  # error_rate 100 %
    assert "every warm-up request failed (2; HTTP 401: invalid API key)" in doc["stop_reason"]
    assert doc["error_counts"] == {"HTTP 401: invalid API key": 2}


def test_interrupted_run_is_invalid(tmp_path: Path) -> None:
    rig = Rig(tmp_path, warmup=0.0)
    rig.tick(0)
    for i in range(4):
        rig.request(1 + i)
    rig.clock.now = T0 + 5
    assert rig.controller.finish(interrupted=True) == 3
    assert result(tmp_path)["checks"][-1]["check"] == "interrupted"


def test_finish_before_any_tick_is_invalid(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert rig.controller.finish(interrupted=True) == 3
    assert result(tmp_path)["stages"] == []


def test_drain_gives_up_after_the_request_timeout(tmp_path: Path) -> None:
    rig = Rig(tmp_path, warmup=0.0, workers=2)  # expects two workers; one never shows up
    rig.tick(0)
    for i in range(3):
        rig.request(1 + i)
    assert rig.tick(10) == (0, "closed")
    rig.idle(10.5)
    assert rig.tick(12) == (0, "closed")
    assert rig.tick(10 + 5 + 10 + 1) is None  # request_timeout + margin
    assert rig.controller.exit_code == 0


def test_plots_are_written(tmp_path: Path) -> None:
    rig = Rig(tmp_path, plots=True, warmup=1.0)
    rig.tick(0)
    rig.request(0.2)
    rig.tick(1)
    for i in range(4):
        rig.request(2 + i)
    rig.request(6, success=False)
    rig.tick(11)
    rig.idle(11.5)
    rig.tick(12)
    for name in PLOTS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_collector_reads_partial_lines_and_done_markers(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    collector = Collector(raw)
    collector.poll()  # no folder yet
    writer = RecordWriter(raw, "worker", pid=7)
    with writer.path.open("a") as f:
        f.write('{"ev":"hb","t":5,"cpu":1,"inflight":0,"oldest":null,"users":1}\n{"ev":"sam')
    collector.poll()
    assert collector.procs["worker-7"].heartbeats[0]["t"] == 5 and not collector.samples
    with writer.path.open("a") as f:
        f.write('ple","start":1,"success":true}\n')
    collector.poll()
    assert collector.samples == [Sample(start=1, success=True)]
    assert not collector.settled(6, expected=1)
    writer.close()
    writer.close()  # twice is fine
    collector.poll()
    assert collector.procs["worker-7"].done and collector.settled(6, expected=1)
    RecordWriter(raw, "worker", pid=8)  # a second worker, silent so far
    collector.poll()
    assert not collector.settled(6, expected=2)
    assert collector.cpu(0, 10) == {"worker-7": 1.0}


def test_cpu_meter() -> None:
    times = iter([0.0, 2.0, 2.0])
    cpu = iter([10.0, 11.0, 11.0])
    meter = CpuMeter(clock=lambda: next(times), cpu=lambda: next(cpu))
    assert meter.percent() == pytest.approx(50.0)  # 1 s of CPU in 2 s
    assert meter.percent() == 0.0  # no time passed
    assert CpuMeter().percent() >= 0.0


def test_all_steps_runs_past_a_missed_step(tmp_path: Path) -> None:
    """make bench: every step of the ladder runs, the capacity stays the unbroken passing run."""
    rig = Rig(tmp_path, slo=PASSING, shape="step", users=2, warmup=0.0, duration=20.0, scrapes=[], all_steps=True)
    assert rig.tick(0) == (1, "closed")
    for i in range(3):
        rig.request(1 + i, ttft=0.9)  # step-1 misses
    assert rig.tick(10) == (2, "closed")
    rig.idle(10.5)
    assert rig.tick(11) == (2, "closed")  # judged: miss, and the ladder goes on
    for i in range(3):
        rig.request(12 + i, ttft=0.1)
    rig.tick(20)
    rig.idle(20.5)
    while rig.tick(21) is not None:
        pass
    doc = result(tmp_path)
    assert [(s["stage"], s["verdict"]) for s in doc["stages"]] == [("step-1", "MISSED"), ("step-2", "PASS")]
    assert doc["stop_reason"] is None and doc["capacity_users"] == 0
    assert all(s["end"] > s["start"] for s in doc["stages"])
