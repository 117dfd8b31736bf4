"""One load-generating process: builds requests, sends them, records the samples.

Locust users call into the agent of their process; it keeps the requests in flight
(for the heartbeats), the arrival schedule of an open-loop run, and the bounds on
the request loop (a count and a deadline).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import requests

from loadtests.arrivals import ArrivalSchedule
from loadtests.collect import RecordWriter
from loadtests.config import RunConfig
from loadtests.metrics import Sample
from loadtests.plan import build_plan
from loadtests.prompts import PromptGenerator
from loadtests.scenarios import build_request
from loadtests.stream import send_embedding, send_streamed

DEADLINE_MARGIN = 60.0


class Agent:
    def __init__(
        self,
        config: RunConfig,
        writer: RecordWriter,
        index: int = 0,
        processes: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.headers = dict(headers or {})
        # Each process draws its own prompts and arrivals: no two requests of a run
        # share a prompt, and N processes at rate R/N add up to rate R.
        self.generator = PromptGenerator(f"{config.seed}/{index}")
        self.schedule: ArrivalSchedule | None = None
        if config.shape == "open":
            assert config.rate is not None
            self.schedule = ArrivalSchedule(
                config.rate / processes,
                config.burstiness,
                seed=config.seed * 1000 + index,
                limit=config.max_requests,
            )
        planned = sum(stage.duration for stage in build_plan(config))
        self.deadline = time.time() + planned + config.request_timeout + DEADLINE_MARGIN
        self.sent = 0
        self._inflight: dict[int, float] = {}

    def may_send(self) -> bool:
        """The request loop's bounds: at most max_requests, and not past the deadline."""
        return self.sent < self.config.max_requests and time.time() < self.deadline

    def claim(self) -> float | None:
        """Open loop: the next scheduled arrival (perf_counter), None when spent."""
        if self.schedule is None or not self.may_send():
            return None
        return self.schedule.claim()

    def inflight(self) -> tuple[int, float | None]:
        """Requests in flight, and the wall-clock start of the oldest."""
        if not self._inflight:
            return 0, None
        return len(self._inflight), min(self._inflight.values())

    def send(self, session: requests.Session, t_sched: float | None = None) -> tuple[Sample, int]:
        spec = build_request(
            self.config.scenario,
            self.config.model,
            self.generator,
            key=str(self.sent),
            ignore_eos=self.config.ignore_eos,
            embed_model=self.config.embed_model or None,
            embed_tokens=self.config.embed_tokens,
        )
        send = send_embedding if spec.part.embedding else send_streamed
        self.sent += 1
        rid = self.sent
        self._inflight[rid] = time.time()
        queue = None if t_sched is None else max(0.0, time.perf_counter() - t_sched)
        try:
            sample, received = send(
                session,
                self.config.host + spec.path,
                spec.body,
                headers=self.headers,
                timeout=self.config.request_timeout,
            )
            sample.kind = spec.part.name
            sample.proc = self.writer.proc
            sample.client_queue = queue
            self.writer.sample(sample)
        finally:
            del self._inflight[rid]
        return sample, received
