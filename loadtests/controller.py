"""The master's side of a run: stage timing, server scrapes, step verdicts, final verdict.

Locust calls :meth:`Controller.tick` once a second through the load shape (on the
master, or on the single local runner). The controller never sees the users: it
reads the raw samples every process writes (``collect.py``), so the verdict is
taken in one place, on the samples of all workers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llf_client.metrics import Metrics, MetricsParseError
from loadtests import EXIT_INVALID, EXIT_PASS
from loadtests import report as reports
from loadtests.collect import Collector
from loadtests.config import RunConfig
from loadtests.metrics import Sample, metric_values, percentile, summarize, summarize_embeddings
from loadtests.plan import Stage, build_plan
from loadtests.prom import Scrapes, stage_summary
from loadtests.scenarios import EMBED_KIND, has_chat, has_embeddings
from loadtests.slo import EMBEDDINGS, INVALID, OK, WARN, Check, Slo, TargetResult, evaluate, exit_code

DRAIN_MARGIN = 10.0


@dataclass
class StageRun:
    stage: Stage
    start: float
    end: float | None = None
    scrape_start: Scrapes | None = None
    scrape_end: Scrapes | None = None
    result: StageResult | None = None


@dataclass
class StageResult:
    name: str
    users: int
    start: float
    end: float
    samples: list[Sample]
    summary: dict[str, Any]
    targets: list[TargetResult]
    checks: list[Check]
    server: dict[str, Any]
    cpu: dict[str, float]
    exit_code: int
    notes: list[str] = field(default_factory=list)
    # A mixed run (rag): the embedding requests' figures; ``summary`` has the chat ones.
    embeddings: dict[str, Any] | None = None


def _stderr(message: str) -> None:
    print(f"[loadtest] {message}", file=sys.stderr, flush=True)


class Controller:
    def __init__(
        self,
        config: RunConfig,
        slo: Slo,
        out: Path,
        scrape: Callable[[], Mapping[str, str | None]],
        recount: Callable[[list[Sample]], int] | None = None,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = _stderr,
        plots: bool = True,
    ) -> None:
        self.config = config
        self.slo = slo
        self.out = out
        self.plan = build_plan(config)
        self.collector = Collector(out / "raw")
        self.expected = max(1, config.workers)
        self._scrape = scrape
        self._recount = recount
        self._clock = clock
        self._log = log
        self._plots = plots
        self.runs: list[StageRun] = []
        self.state = "init"
        self.drain_start: float | None = None
        self.stop_reason: str | None = None
        self.warmup_failed = False
        self.t0: float | None = None
        self.exit_code: int | None = None
        self.result: dict[str, Any] | None = None
        self.metrics_available: bool | None = None
        self._scrape_noted: set[str] = set()

    # -- the load shape ------------------------------------------------------------

    def tick(self) -> tuple[int, str] | None:
        """``(users, user kind)`` for now, or None once the run is over."""
        if self.state == "done":
            return None
        now = self._clock()
        self.collector.poll()
        if self.state == "init":
            self.t0 = now
            self._enter(0, now)
        if self.state == "run":
            current = self.runs[-1]
            if now - current.start >= current.stage.duration:
                self._leave(now)
                if len(self.runs) < len(self.plan) and self.stop_reason is None:
                    self._enter(len(self.runs), now)
                else:
                    self._begin_drain(now)
            if self.config.shape == "step":
                self._evaluate_settled(now)
        if self.state == "drain":
            assert self.drain_start is not None
            waited = now - self.drain_start
            if self.collector.settled(self.drain_start, self.expected) or (
                waited > self.config.request_timeout + DRAIN_MARGIN
            ):
                self.finish()
                return None
            return 0, self.plan[0].kind
        stage = self.runs[-1].stage
        return stage.users, stage.kind

    def _scrape_now(self) -> Scrapes:
        """One scrape of every metrics URL; the first failure of each is said once."""
        scrapes = self._scrape()
        for url, text in scrapes.items():
            if url in self._scrape_noted:
                continue
            problem = None
            if text is None:
                problem = "no /metrics answer"
            else:
                try:
                    Metrics.parse(text)
                except MetricsParseError as err:
                    problem = str(err)
            if problem is not None:
                self._scrape_noted.add(url)
                self._log(f"{url or 'the server'}: {problem}: no server-side cross-check from it")
        if self.metrics_available is None:
            self.metrics_available = any(text is not None for text in scrapes.values())
            if not self.metrics_available:
                hint = "" if self.config.metrics_urls else " (through a gateway, pass the servers' --metrics-url)"
                self._log(f"no /metrics to read: no server-side cross-check{hint}")
        return scrapes

    def _enter(self, index: int, now: float) -> None:
        stage = self.plan[index]
        run = StageRun(stage=stage, start=now)
        if stage.measured:
            run.scrape_start = self._scrape_now()
            previous = self.runs[-1] if self.runs else None
            if previous is not None and previous.stage.measured and previous.scrape_end is None:
                previous.scrape_end = run.scrape_start
        self.runs.append(run)
        self.state = "run"
        what = (
            f"{stage.users} users"
            if stage.kind == "closed"
            else (f"{self.config.rate:g} req/s, at most {stage.users} in flight")
        )
        self._log(f"{stage.name}: {what} for {stage.duration:g} s")

    def _leave(self, now: float) -> None:
        run = self.runs[-1]
        run.end = now
        if run.stage.name == "warmup":
            samples = self.collector.in_window(run.start, now)
            if samples and not any(s.success for s in samples):
                first = samples[0].error or f"HTTP {samples[0].status}"
                self.warmup_failed = True
                self.stop_reason = f"every warm-up request failed ({len(samples)}; {first})"
                self._log(self.stop_reason)

    def _begin_drain(self, now: float) -> None:
        self.state = "drain"
        self.drain_start = now
        self._log("waiting for the requests in flight to end")

    def _evaluate_settled(self, now: float) -> None:
        """Step shape: judge each finished step once its requests have ended."""
        for run in self.runs:
            if not run.stage.measured or run.end is None or run.result is not None:
                continue
            late = now - run.end > self.config.request_timeout + DRAIN_MARGIN
            if not (self.collector.settled(run.end, self.expected) or late):
                return
            result = self._evaluate(run)
            self._log(
                f"{run.stage.name}: {reports.VERDICT_WORDS[result.exit_code]} ({result.summary['completed']} completed)"
            )
            if result.exit_code != EXIT_PASS and self.stop_reason is None and not self.config.all_steps:
                self.stop_reason = f"{run.stage.name} did not pass: stopping the steps"
                if self.state == "run":
                    self._leave(now)
                    self._begin_drain(now)
                return

    # -- verdicts ------------------------------------------------------------------

    def _evaluate(self, run: StageRun, measured_as: str | None = None) -> StageResult:
        assert run.end is not None
        samples = self.collector.in_window(run.start, run.end)
        if self._recount is not None and any(s.tokens_source == "chunks" for s in samples):
            self._recount(samples)
        ends = [s.start + (s.elapsed or 0.0) for s in samples]
        duration = max([run.end, *ends]) - run.start
        # Chat and embedding requests are summarized and judged apart, each by its own targets.
        chat = [s for s in samples if s.kind != EMBED_KIND]
        embed = [s for s in samples if s.kind == EMBED_KIND]
        embeddings = None
        targets = []
        if has_embeddings(self.config.scenario):
            embeddings = summarize_embeddings(embed, duration, self.slo.goodput_ms(EMBEDDINGS))
            targets += evaluate(self.slo, embed, duration, EMBEDDINGS)
        if has_chat(self.config.scenario):
            summary = summarize(chat, duration, self.slo.goodput_ms())
            targets = evaluate(self.slo, chat, duration) + targets
        else:
            assert embeddings is not None
            summary, embeddings = embeddings, None
        server = stage_summary(run.scrape_start, run.scrape_end, self.config.model)
        cpu = self.collector.cpu(run.start, run.end)
        checks = self._checks(samples, summary, server, cpu)
        notes = []
        if measured_as:
            notes.append(measured_as)
        ran = run.end - run.start
        if ran < run.stage.duration - 0.5:
            notes.append(f"cut short after {ran:.1f} of {run.stage.duration:g} s")
        result = StageResult(
            name=run.stage.name,
            users=run.stage.users,
            start=run.start,
            end=run.end,
            samples=samples,
            summary=summary,
            targets=targets,
            checks=checks,
            server=server,
            cpu=cpu,
            exit_code=exit_code(targets, checks),
            notes=notes,
            embeddings=embeddings,
        )
        run.result = result
        return result

    def _checks(
        self,
        samples: list[Sample],
        summary: dict[str, Any],
        server: dict[str, Any],
        cpu: dict[str, float],
    ) -> list[Check]:
        v = self.slo.validity
        checks = []
        if cpu:
            busiest = max(cpu, key=lambda k: cpu[k])
            value = cpu[busiest]
            checks.append(
                Check(
                    "client CPU",
                    value,
                    v.client_cpu_percent,
                    INVALID if value > v.client_cpu_percent else OK,
                    f"mean over the stage, busiest process {busiest}",
                )
            )
        if self.config.shape == "open":
            queue = metric_values(samples, "client_queue_time")
            if queue:
                lag = percentile(queue, 95) * 1000.0
                checks.append(
                    Check(
                        "schedule lag p95",
                        lag,
                        v.schedule_lag_ms,
                        INVALID if lag > v.schedule_lag_ms else OK,
                        "requests sent late for their scheduled arrival",
                    )
                )
        server_ttft = (server.get("ttft") or {}).get("mean_ms")
        client_ttft = summary.get("mean_ttft_ms")
        if server_ttft is not None and client_ttft is not None:
            gap = client_ttft - server_ttft
            bad = INVALID if v.server_gap_action == INVALID else WARN
            checks.append(
                Check(
                    "TTFT gap client-server",
                    gap,
                    v.server_gap_ms,
                    bad if gap > v.server_gap_ms else OK,
                    "client mean TTFT minus vLLM's mean time_to_first_token",
                )
            )
        return checks

    def finish(self, interrupted: bool = False) -> int:
        """Judge every stage not judged yet, write the reports; returns the exit code."""
        if self.exit_code is not None:
            return self.exit_code
        self.state = "done"
        self.collector.poll()
        now = self._clock()
        if self.runs and self.runs[-1].end is None:
            self._leave(now)
        measured = [r for r in self.runs if r.stage.measured]
        if measured and measured[-1].scrape_end is None:
            measured[-1].scrape_end = self._scrape_now()
        if self.warmup_failed:
            warm = self.runs[0]
            warm.stage = Stage("warmup", warm.stage.users, warm.stage.duration, True, warm.stage.kind)
            measured = [warm]
            self._evaluate(warm, measured_as="the warm-up was judged: every request in it failed")
        for run in measured:
            if run.result is None:
                self._evaluate(run)
        results = [r.result for r in measured if r.result is not None]
        if interrupted:
            for result in results:
                result.checks.append(Check("interrupted", None, 0, INVALID, "the run was stopped"))
                result.exit_code = exit_code(result.targets, result.checks)
        code, capacity = self._overall(results)
        self.exit_code = code
        self.result = reports.write_all(
            self.out,
            self.config,
            self.slo,
            results,
            self.collector.samples,
            t0=self.t0 or now,
            exit_code=code,
            capacity=capacity,
            stop_reason=self.stop_reason,
            plots=self._plots,
        )
        self._log(f"verdict: {reports.VERDICT_WORDS[code]} (exit {code}); results in {self.out}")
        return code

    def _overall(self, results: list[StageResult]) -> tuple[int, int | None]:
        """Exit code of the run, and for the step shape the capacity in users."""
        if not results:
            return EXIT_INVALID, None
        if self.config.shape != "step" or self.warmup_failed:
            return results[-1].exit_code, None
        capacity = 0
        first_bad = None
        for result in results:
            if result.exit_code != EXIT_PASS:
                first_bad = result
                break
            capacity = result.users
        if capacity >= self.slo.min_users:
            return EXIT_PASS, capacity
        if first_bad is not None:
            return first_bad.exit_code, capacity
        return EXIT_INVALID, capacity
