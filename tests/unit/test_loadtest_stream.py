"""One streamed request against the fake server: success and failure outcomes.

These check what is recorded, never how long it took (that is the calibration's job).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from loadtests.agent import Agent
from loadtests.collect import Collector, RecordWriter
from loadtests.config import RunConfig
from loadtests.stream import recount_tokens, send_streamed
from tests.fakes.fake_sse import FakeSSEServer

BODY = {"model": "fake-model", "max_tokens": 5, "stream": True, "messages": []}


@pytest.fixture
def fake() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(ttft=0.0, itl=0.0) as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_chat_stream_success(fake: FakeSSEServer, session: requests.Session) -> None:
    sample, received = send_streamed(session, fake.base_url + "/chat/completions", BODY)
    assert sample.success and sample.status == 200 and sample.error is None
    assert sample.chunks == 6  # the role-only delta and five tokens
    assert len(sample.itl) == 5
    assert sample.output_tokens == 5 and sample.tokens_source == "usage"
    assert sample.prompt_tokens == 10
    assert sample.ttft is not None and sample.ttft_content is not None and sample.e2el is not None
    assert sample.ttft <= sample.ttft_content <= sample.e2el
    assert received > 0 and sample.text is None


def test_stream_without_chunked_encoding(fake: FakeSSEServer, session: requests.Session) -> None:
    fake.behaviour.chunked = False  # an HTTP/1.0-style stream that ends when the socket closes
    sample, _ = send_streamed(session, fake.base_url + "/chat/completions", BODY)
    assert sample.success and sample.chunks == 6 and sample.output_tokens == 5


def test_plain_text_error_body(fake: FakeSSEServer, session: requests.Session) -> None:
    fake.behaviour.status, fake.behaviour.plain_error = 502, True
    sample, _ = send_streamed(session, fake.base_url + "/chat/completions", BODY)
    assert sample.error == "HTTP 502: upstream exploded"


def test_completions_stream(fake: FakeSSEServer, session: requests.Session) -> None:
    sample, _ = send_streamed(session, fake.base_url + "/completions", {**BODY, "max_tokens": 3})
    assert sample.success and sample.chunks == 3 and sample.ttft == sample.ttft_content


def test_missing_usage_counts_chunks_then_the_tokenizer(fake: FakeSSEServer, session: requests.Session) -> None:
    fake.behaviour.usage = False
    sample, _ = send_streamed(session, fake.base_url + "/chat/completions", BODY)
    assert sample.success and sample.output_tokens == 5 and sample.tokens_source == "chunks"
    assert sample.text == " w0 w1 w2 w3 w4"
    assert recount_tokens([sample], fake.root_url, "fake-model") == 1
    assert (sample.output_tokens, sample.tokens_source, sample.text) == (5, "tokenizer", None)


def test_recount_keeps_chunk_counts_without_a_tokenizer(session: requests.Session) -> None:
    with FakeSSEServer(ttft=0.0, itl=0.0, usage=False) as fake:
        sample, _ = send_streamed(session, fake.base_url + "/chat/completions", BODY)
    assert recount_tokens([sample], "http://127.0.0.1:9", "m", timeout=2) == 0
    assert sample.tokens_source == "chunks"


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ({"status": 503}, "HTTP 503: fake failure"),
        ({"error_after": 2}, "error in stream: fake error mid-stream"),
        ({"empty": True}, "no choices in the stream"),
        ({"api_key": "right"}, "HTTP 401: invalid API key"),
    ],
)
def test_failures(fake: FakeSSEServer, session: requests.Session, behaviour: dict[str, object], error: str) -> None:
    for name, value in behaviour.items():
        setattr(fake.behaviour, name, value)
    sample, _ = send_streamed(session, fake.base_url + "/chat/completions", BODY)
    assert not sample.success and sample.error == error
    assert sample.output_tokens is None and sample.elapsed is not None


def test_the_key_goes_in_the_authorization_header(fake: FakeSSEServer, session: requests.Session) -> None:
    fake.behaviour.api_key = "right"
    sample, _ = send_streamed(
        session, fake.base_url + "/chat/completions", BODY, headers={"Authorization": "Bearer right"}
    )
    assert sample.success
    assert fake.stats.authorizations[-1] == "Bearer right"


def test_unknown_path_and_refused_connection(fake: FakeSSEServer, session: requests.Session) -> None:
    sample, _ = send_streamed(session, fake.base_url + "/nothing", BODY)
    assert sample.error == "HTTP 404: not found"
    sample, _ = send_streamed(session, "http://127.0.0.1:9/v1/completions", BODY, timeout=2)
    assert not sample.success and sample.error is not None
    assert sample.error.startswith("ConnectionError")


def test_stream_bounded_in_time(fake: FakeSSEServer, session: requests.Session) -> None:
    fake.behaviour.stall = 1.0  # first chunk, then nothing for a second
    sample, _ = send_streamed(session, fake.base_url + "/chat/completions", BODY, timeout=0.3)
    assert not sample.success
    assert sample.error is not None and sample.error.startswith("ConnectionError")  # read timeout


def test_stream_total_deadline(fake: FakeSSEServer, session: requests.Session) -> None:
    fake.behaviour.itl = 0.05  # each gap is short, the whole stream is not
    body = {**BODY, "max_tokens": 20}
    sample, _ = send_streamed(session, fake.base_url + "/chat/completions", body, timeout=0.2)
    assert sample.error == "timeout: stream still open after 0.2 s"


def test_agent_records_samples_and_bounds(fake: FakeSSEServer, tmp_path: Path) -> None:
    config = RunConfig(
        host=fake.root_url,
        model="fake-model",
        out=str(tmp_path),
        slo_path="s",
        max_requests=2,
        duration=5.0,
        warmup=0.0,
    )
    writer = RecordWriter(tmp_path / "raw", "local", pid=3)
    agent = Agent(config, writer, headers={"Authorization": "Bearer k"})
    assert agent.inflight() == (0, None)
    assert agent.claim() is None  # closed loop: no schedule
    with requests.Session() as session:
        sample, _ = agent.send(session)
        assert sample.success and sample.kind == "short" and sample.proc == "local-3"
        assert sample.client_queue is None
        sample, _ = agent.send(session, t_sched=0.0)
        assert sample.client_queue is not None and sample.client_queue > 0
    assert not agent.may_send()  # max_requests reached
    bodies = fake.stats.bodies
    assert bodies[0]["messages"] != bodies[1]["messages"]  # a new prompt per request
    assert fake.stats.authorizations == ["Bearer k", "Bearer k"]
    collector = Collector(tmp_path / "raw")
    collector.poll()
    assert len(collector.samples) == 2


def test_agent_open_loop_schedule(tmp_path: Path) -> None:
    config = RunConfig(host="http://h", model="m", out=str(tmp_path), slo_path="s", shape="open", rate=8.0, workers=2)
    agent = Agent(config, RecordWriter(tmp_path / "raw", "worker", pid=4), index=1, processes=2)
    assert agent.schedule is not None and agent.schedule.rate == 4.0  # this worker's share
    first, second = agent.claim(), agent.claim()
    assert first is not None and second is not None and second >= first
    agent.deadline = 0.0
    assert agent.claim() is None
