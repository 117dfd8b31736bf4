"""The Locust glue, in-process: users, shape and event handlers, against the fake server.

Locust is imported without gevent's monkey patching (``LOCUST_SKIP_MONKEY_PATCH``)
so that the rest of the test session keeps the real stdlib; nothing here yields to
the gevent hub, the calls run synchronously.
"""

from __future__ import annotations

import os

# Only for this import: the load tests the other modules start in subprocesses need
# the patching, so the variable must not stay in the environment they inherit.
_SKIP = "LOCUST_SKIP_MONKEY_PATCH"
_had_skip = _SKIP in os.environ
os.environ.setdefault(_SKIP, "1")
try:
    from locust.env import Environment
    from locust.exception import StopUser
    from locust.runners import MasterRunner, WorkerRunner

    from loadtests import locustfile
finally:
    if not _had_skip:
        del os.environ[_SKIP]

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from loadtests.agent import Agent  # noqa: E402
from loadtests.collect import Collector, RecordWriter  # noqa: E402
from loadtests.config import API_KEY_ENV, CONFIG_ENV, RunConfig  # noqa: E402
from loadtests.metrics import Sample  # noqa: E402
from tests.fakes.fake_sse import FakeSSEServer  # noqa: E402
from tests.fakes.tls import self_signed  # noqa: E402

SLO = Path(__file__).resolve().parents[2] / "loadtests" / "slo.yaml"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def fire(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


def fake_env(runner: object = None) -> Any:
    return SimpleNamespace(events=SimpleNamespace(request=Recorder()), runner=runner, process_exit_code=None)


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> locustfile.ProcessState:
    fresh = locustfile.ProcessState()
    monkeypatch.setattr(locustfile, "STATE", fresh)
    return fresh


@pytest.fixture
def fake() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(ttft=0.0, itl=0.0) as server:
        yield server


@pytest.fixture
def config_file(tmp_path: Path, fake: FakeSSEServer, monkeypatch: pytest.MonkeyPatch) -> RunConfig:
    config = RunConfig(
        host=fake.root_url,
        model="fake-model",
        out=str(tmp_path),
        slo_path=str(SLO),
        warmup=0.0,
        duration=5.0,
        max_requests=3,
    )
    config.save(tmp_path / "run-config.json")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "run-config.json"))
    monkeypatch.setenv(API_KEY_ENV, "sk-x")
    return config


def test_report_sample_uses_our_names_and_timing() -> None:
    env = fake_env()
    ok = Sample(start=0, success=True, ttft=0.1, ttft_content=0.1, e2el=0.4, output_tokens=4, kind="short")
    locustfile.report_sample(env, ok, 123)
    calls = env.events.request.calls
    assert [(c["request_type"], c["name"]) for c in calls] == [
        ("SSE", "short e2el"),
        ("METRIC", "short ttft"),
        ("METRIC", "short ttft_content"),
        ("METRIC", "short tpot"),
    ]
    assert calls[0]["response_time"] == pytest.approx(400.0)  # E2EL, not the header time
    assert calls[0]["response_length"] == 123 and calls[0]["exception"] is None
    assert calls[3]["response_time"] == pytest.approx(100.0)
    env = fake_env()
    bad = Sample(start=0, success=False, error="HTTP 500", elapsed=0.02, kind="long")
    locustfile.report_sample(env, bad, 0)
    (call,) = env.events.request.calls
    assert isinstance(call["exception"], locustfile.StreamError) and str(call["exception"]) == "HTTP 500"
    assert call["response_time"] == pytest.approx(20.0)
    env = fake_env()
    embedded = Sample(start=0, success=True, e2el=0.05, elapsed=0.05, kind="embed")
    locustfile.report_sample(env, embedded, 99)
    (call,) = env.events.request.calls  # no TTFT or TPOT for an embedding request
    assert (call["request_type"], call["name"]) == ("POST", "embed e2el")
    assert call["response_time"] == pytest.approx(50.0)


def test_shape_delegates_to_the_controller(state: locustfile.ProcessState) -> None:
    shape = locustfile.StageShape()
    assert shape.tick() is None  # no controller: nothing to run
    steps: list[tuple[int, str] | None] = [(3, "open"), None]
    state.controller = SimpleNamespace(tick=lambda: steps.pop(0), exit_code=1)  # type: ignore[assignment]
    state.environment = fake_env()
    assert shape.tick() == (3, locustfile.SPAWN_RATE, [locustfile.OpenLoopUser])
    assert shape.tick() is None
    assert state.environment.process_exit_code == 1


def test_users_stream_through_the_agent(
    state: locustfile.ProcessState,
    config_file: RunConfig,
    fake: FakeSSEServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(locustfile.StreamingUser, "host", fake.root_url)
    env = Environment(user_classes=[locustfile.ClosedLoopUser], host=fake.root_url)
    reported: list[str] = []
    env.events.request.add_listener(lambda **kw: reported.append(kw["name"]))
    user = locustfile.ClosedLoopUser(env)
    user.on_start()
    with pytest.raises(StopUser):
        user.stream()  # no agent in this process yet
    state.agent = Agent(config_file, RecordWriter(tmp_path / "raw", "local", pid=5))
    user.stream()
    user.stream()
    assert reported.count("short e2el") == 2 and reported.count("short ttft") == 2
    user.on_stop()

    opened = locustfile.OpenLoopUser(env)
    opened.on_start()
    opened.stream()  # first run: nothing claimed yet, nothing sent
    state.agent.schedule = None
    with pytest.raises(StopUser):
        opened.wait_time()  # closed-loop agent: no arrivals to claim
    opened._t_sched = 0.0
    opened.stream()  # the third and last request this agent may send
    assert fake.stats.requests == 3
    opened._t_sched = 0.0
    with pytest.raises(StopUser):
        opened.stream()  # max_requests reached
    opened.on_stop()
    collector = Collector(tmp_path / "raw")
    collector.poll()
    assert [s.client_queue is not None for s in collector.samples] == [False, False, True]


def test_open_user_waits_for_its_arrival(
    state: locustfile.ProcessState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locustfile.StreamingUser, "host", "http://h")
    config = RunConfig(host="http://h", model="m", out=str(tmp_path), slo_path="s", shape="open", rate=0.5)
    state.agent = Agent(config, RecordWriter(tmp_path / "raw", "local", pid=6))
    user = locustfile.OpenLoopUser(Environment(user_classes=[locustfile.OpenLoopUser], host="http://h"))
    assert user.wait_time() == 0.0  # the first arrival is now
    assert 0.0 < user.wait_time() < 60.0  # then Poisson gaps around 2 s
    state.agent = None
    with pytest.raises(StopUser):
        user.wait_time()


def runner(cls: type, worker_index: int = 0) -> Any:
    """A stand-in of a runner class: right type for the role check, nothing started."""

    class Fake(cls):  # type: ignore[misc, valid-type]
        user_count = 0

        def __init__(self) -> None:
            self.worker_index = worker_index

        def __del__(self) -> None:
            pass

    return Fake()


@pytest.mark.parametrize(("cls", "role"), [(MasterRunner, "master"), (WorkerRunner, "worker"), (object, "local")])
def test_init_by_role(
    state: locustfile.ProcessState,
    config_file: RunConfig,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cls: type,
    role: str,
) -> None:
    spawned: list[object] = []
    monkeypatch.setattr(locustfile.gevent, "spawn", lambda *a: spawned.append(a))
    env = fake_env(runner(cls, worker_index=2))
    locustfile.on_init(env)
    assert state.role == role and len(spawned) == 1
    assert state.writer is not None and state.writer.path.name.startswith(f"{role}-")
    assert (state.controller is not None) == (role != "worker")
    if state.controller is not None:
        calls: list[tuple[object, ...]] = []
        monkeypatch.setattr(locustfile, "scrape_all", lambda *a, **kw: calls.append((*a, kw)) or {})
        state.controller._scrape()
        # the key goes to the target only, never to servers named by --metrics-url; the CA to all
        assert calls == [
            ([config_file.host], {config_file.host: {"Authorization": "Bearer sk-x"}}, {"ca_cert": None})
        ]
    locustfile.on_test_start(env)
    assert (state.agent is not None) == (role != "master")
    if state.agent is not None:
        assert state.agent.generator.seed == f"{config_file.seed}/2"
        assert state.agent.headers == {"Authorization": "Bearer sk-x"}
        first = state.agent
        locustfile.on_test_start(env)  # a second test_start keeps the agent
        assert state.agent is first
    locustfile.on_quitting(env)
    if role != "worker":
        assert env.process_exit_code == 3  # interrupted before any stage: no verdict
        assert (tmp_path / "result.json").is_file()
    assert '"ev":"done"' in state.writer.path.read_text()


def test_heartbeats(state: locustfile.ProcessState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "raw", "local", pid=9)
    state.environment = fake_env(runner(object))
    ticks = iter(range(2))

    def sleep(_: float) -> None:
        if next(ticks, None) is None:
            raise StopIteration

    monkeypatch.setattr(locustfile.gevent, "sleep", sleep)
    with pytest.raises(StopIteration):
        locustfile._heartbeats(writer)
    collector = Collector(tmp_path / "raw")
    collector.poll()
    beats = collector.procs["local-9"].heartbeats
    assert len(beats) == 2 and beats[0]["inflight"] == 0 and beats[0]["oldest"] is None


def test_config_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(SystemExit, match="python -m loadtests run"):
        locustfile._config()
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert locustfile._headers() == {}


@pytest.mark.parametrize("trusted", [True, False])
def test_users_stream_over_https_with_the_runs_ca_only(
    state: locustfile.ProcessState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    cert, key = self_signed(tmp_path / "ca")
    with FakeSSEServer(tls=(cert, key), ttft=0.0, itl=0.0) as fake:
        config = RunConfig(
            host=fake.root_url, model="fake-model", out=str(tmp_path), slo_path=str(SLO),
            warmup=0.0, duration=5.0, max_requests=1, ca_cert=str(cert) if trusted else None,
        )
        state.config = config
        monkeypatch.setattr(locustfile.StreamingUser, "host", fake.root_url)
        env = Environment(user_classes=[locustfile.ClosedLoopUser], host=fake.root_url)
        failures: list[object] = []
        env.events.request.add_listener(lambda **kw: failures.append(kw["exception"]))
        user = locustfile.ClosedLoopUser(env)
        user.on_start()
        assert user.session.verify == (str(cert) if trusted else True)
        state.agent = Agent(config, RecordWriter(tmp_path / "raw", "local", pid=6))
        user.stream()
        user.on_stop()
    if trusted:
        assert fake.stats.requests == 1 and failures and failures[0] is None
    else:
        assert fake.stats.requests == 0
        assert "CERTIFICATE_VERIFY_FAILED" in str(failures[0])
