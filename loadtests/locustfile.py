"""Locust glue: users that stream requests, the load shape, and the event handlers.

Start it with ``python -m loadtests run`` (which writes the run configuration and
passes its path in ``LLF_LOADTEST_CONFIG``). Roles:

- every process that sends requests (the local runner, or each worker) writes its
  raw samples and heartbeats to ``<out>/raw/<role>-<pid>.jsonl``;
- the master (or the local runner) runs the :class:`~loadtests.controller.Controller`
  through the load shape and alone decides the verdict, on the samples of all workers.

``test_stop`` and ``quitting`` fire on every worker too; the handlers check the role.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import HttpUser, LoadTestShape, User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from loadtests.agent import Agent
from loadtests.collect import CpuMeter, RecordWriter
from loadtests.config import API_KEY_ENV, CONFIG_ENV, RunConfig, verify
from loadtests.controller import Controller
from loadtests.metrics import Sample
from loadtests.prom import scrape_all
from loadtests.scenarios import EMBED_KIND
from loadtests.slo import load_slo
from loadtests.stream import recount_tokens

HEARTBEAT_SECONDS = 1.0
SPAWN_RATE = 100.0


class StreamError(Exception):
    """A failed request (streamed or embeddings), as Locust's failure table shows it."""


class ProcessState:
    """What this Locust process holds: its writer, its agent, the controller."""

    def __init__(self) -> None:
        self.config: RunConfig | None = None
        self.role = "local"
        self.writer: RecordWriter | None = None
        self.agent: Agent | None = None
        self.controller: Controller | None = None
        self.environment: Environment | None = None


STATE = ProcessState()


def _config() -> RunConfig:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise SystemExit(f"{CONFIG_ENV} is not set: start the load test with python -m loadtests run")
    return RunConfig.load(path)


def _headers() -> dict[str, str]:
    key = os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def report_sample(environment: Environment, sample: Sample, received: int) -> None:
    """Report a request to Locust under our own names, with our own timing."""
    fire = environment.events.request.fire
    elapsed = sample.e2el if sample.success else sample.elapsed
    fire(
        request_type="POST" if sample.kind == EMBED_KIND else "SSE",
        name=f"{sample.kind} e2el",
        response_time=(elapsed or 0.0) * 1000.0,
        response_length=received,
        exception=None if sample.success else StreamError(sample.error),
        context={},
    )
    if not sample.success:
        return
    for metric in ("ttft", "ttft_content", "tpot"):  # none of them for an embedding request
        value = sample.value(metric)
        if value is not None:
            fire(
                request_type="METRIC",
                name=f"{sample.kind} {metric}",
                response_time=value * 1000.0,
                response_length=0,
                exception=None,
                context={},
            )


class StreamingUser(HttpUser):
    """An HttpUser (requests and urllib3 underneath, which hand over each HTTP chunk).

    The streamed POST goes through a plain ``requests.Session`` of the user rather
    than ``self.client``, so that Locust does not record its header-time
    ``response_time``; :func:`report_sample` reports our own timing instead.
    """

    abstract = True
    session: requests.Session

    def on_start(self) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies from the environment: measure the server
        # trust_env off also drops REQUESTS_CA_BUNDLE: the run's CA (the LLF gateway's) is set here
        self.session.verify = verify(STATE.config.ca_cert if STATE.config else None)

    def on_stop(self) -> None:
        self.session.close()


class ClosedLoopUser(StreamingUser):
    """Sends its next request as soon as the previous one has ended."""

    wait_time = constant(0)

    @task
    def stream(self) -> None:
        agent = STATE.agent
        if agent is None or not agent.may_send():
            raise StopUser()
        sample, received = agent.send(self.session)
        report_sample(self.environment, sample, received)


class OpenLoopUser(StreamingUser):
    """Takes the next scheduled arrival, waits for it, sends; late arrivals queue."""

    _t_sched: float | None = None

    def wait_time(self) -> float:  # type: ignore[override]
        agent = STATE.agent
        t = agent.claim() if agent is not None else None
        if t is None:
            raise StopUser()
        self._t_sched = t
        return max(0.0, t - time.perf_counter())

    @task
    def stream(self) -> None:
        agent = STATE.agent
        t_sched, self._t_sched = self._t_sched, None
        if agent is None or t_sched is None:
            return  # the first run of the task: the arrival is claimed in wait_time
        if not agent.may_send():
            raise StopUser()
        sample, received = agent.send(self.session, t_sched=t_sched)
        report_sample(self.environment, sample, received)


USER_CLASSES: dict[str, type[StreamingUser]] = {"closed": ClosedLoopUser, "open": OpenLoopUser}


class StageShape(LoadTestShape):
    """Delegates to the controller: warm-up, measured stage(s), drain, stop."""

    def tick(self) -> tuple[int, float, list[type[User]] | None] | None:
        controller = STATE.controller
        if controller is None:
            return None
        step = controller.tick()
        if step is None:
            if STATE.environment is not None:
                STATE.environment.process_exit_code = controller.exit_code
            return None
        users, kind = step
        classes: list[type[User]] = [USER_CLASSES[kind]]
        return users, SPAWN_RATE, classes


def _heartbeats(writer: RecordWriter) -> None:
    meter = CpuMeter()
    while True:
        gevent.sleep(HEARTBEAT_SECONDS)
        agent = STATE.agent
        runner = STATE.environment.runner if STATE.environment else None
        inflight, oldest = agent.inflight() if agent is not None else (0, None)
        users = runner.user_count if runner is not None else 0
        writer.heartbeat(meter.percent(), inflight, oldest, users)


@events.init.add_listener
def on_init(environment: Environment, **_: Any) -> None:
    config = _config()
    STATE.config = config
    STATE.environment = environment
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        STATE.role = "master"
    elif isinstance(runner, WorkerRunner):
        STATE.role = "worker"
    out = Path(config.out)
    STATE.writer = RecordWriter(out / "raw", STATE.role)
    gevent.spawn(_heartbeats, STATE.writer)
    if STATE.role in ("master", "local"):
        headers = _headers()
        STATE.controller = Controller(
            config,
            load_slo(config.slo_path),
            out,
            # The key goes to the target only, never to servers named by --metrics-url.
            scrape=lambda: scrape_all(config.scrape_urls(), {config.host: headers}, ca_cert=config.ca_cert),
            recount=lambda samples: recount_tokens(samples, config.host, config.model, headers, ca_cert=config.ca_cert),
        )


@events.test_start.add_listener
def on_test_start(environment: Environment, **_: Any) -> None:
    if STATE.role == "master" or STATE.agent is not None or STATE.writer is None:
        return
    assert STATE.config is not None
    runner = environment.runner
    index = max(0, getattr(runner, "worker_index", 0) or 0)
    STATE.agent = Agent(
        STATE.config,
        STATE.writer,
        index=index,
        processes=max(1, STATE.config.workers),
        headers=_headers(),
    )


@events.quitting.add_listener
def on_quitting(environment: Environment, **_: Any) -> None:
    controller = STATE.controller
    if controller is not None:
        interrupted = controller.exit_code is None
        environment.process_exit_code = controller.finish(interrupted=interrupted)
    if STATE.writer is not None:
        STATE.writer.close()
