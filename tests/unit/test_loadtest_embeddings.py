"""Embedding load tests: the request, the model choice, the SLO section, the reports.

Against the fake server's /v1/embeddings (tests/fakes/fake_sse.py); what is recorded
is checked, never how long it took.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loadtests import cli
from loadtests.agent import Agent
from loadtests.collect import Collector, RecordWriter
from loadtests.config import RunConfig, find_models, serves_embeddings, verify
from loadtests.errors import ServerError, SloError
from loadtests.metrics import Sample, summarize_embeddings
from loadtests.report import summary_text
from loadtests.scenarios import EMBED_KIND
from loadtests.slo import EMBEDDINGS, INCONCLUSIVE, MISS, PASS, evaluate, load_slo, parse_slo
from loadtests.stream import send_embedding
from tests.fakes.fake_sse import EMBED_MODEL, MODEL, FakeSSEServer
from tests.fakes.tls import self_signed
from tests.unit.test_loadtest_controller import T0, Rig, result

REPO = Path(__file__).resolve().parents[2]
EMBED_SLO = {
    "min_samples": 2,
    "targets": ["ttft p50 <= 200 ms", "error_rate <= 10 %"],
    "embeddings": {"targets": ["e2el p50 <= 100 ms", "error_rate <= 10 %", "request_throughput >= 0.3 req/s"]},
}


@pytest.fixture
def fake() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(ttft=0.0, itl=0.0, models=(MODEL, EMBED_MODEL)) as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# -- one request ---------------------------------------------------------------------


def test_embedding_request_success(fake: FakeSSEServer, session: requests.Session) -> None:
    body = {"model": EMBED_MODEL, "input": "one two three"}
    sample, received = send_embedding(
        session, fake.base_url + "/embeddings", body, headers={"Authorization": "Bearer k"}
    )
    assert sample.success and sample.status == 200 and sample.error is None
    assert sample.e2el is not None and sample.e2el == sample.elapsed  # the latency: POST to the body's end
    assert sample.prompt_tokens == 5  # usage.prompt_tokens: 3 words, [CLS], [SEP]
    assert sample.ttft is None and sample.itl == [] and sample.output_tokens is None  # nothing streamed
    assert received > 0
    assert fake.stats.authorizations == ["Bearer k"]
    assert "stream" not in fake.stats.bodies[0]


@pytest.mark.parametrize(
    ("body", "behaviour", "error"),
    [
        ({"model": MODEL, "input": "x"}, {}, "HTTP 400: The model does not support Embeddings API"),
        ({"model": EMBED_MODEL, "input": "x"}, {"status": 503}, "HTTP 503: fake failure"),
        ({"model": EMBED_MODEL, "input": "x"}, {"empty": True}, "expected 1 embedding(s) in the answer"),
        ({"model": EMBED_MODEL, "input": ["x", "y"]}, {"empty": True}, "expected 2 embedding(s) in the answer"),
    ],
)
def test_embedding_failures(
    fake: FakeSSEServer, session: requests.Session, body: dict[str, Any], behaviour: dict[str, Any], error: str
) -> None:
    for name, value in behaviour.items():
        setattr(fake.behaviour, name, value)
    sample, _ = send_embedding(session, fake.base_url + "/embeddings", body)
    assert not sample.success and sample.error == error
    assert sample.e2el is None and sample.elapsed is not None  # counted, not timed


def test_embedding_answer_that_is_not_json(session: requests.Session, fake: FakeSSEServer) -> None:
    sample, _ = send_embedding(session, fake.root_url + "/metrics-not-there", {"input": "x"})
    assert not sample.success and sample.status == 404
    sample, _ = send_embedding(session, "http://127.0.0.1:9/v1/embeddings", {"input": "x"}, timeout=2)
    assert not sample.success and sample.error is not None and sample.error.startswith("ConnectionError")


def test_embedding_answer_without_a_list(monkeypatch: pytest.MonkeyPatch, session: requests.Session) -> None:
    class Answer:
        status_code = 200
        content = b'{"data": "nope"}'

        def close(self) -> None:
            pass

    monkeypatch.setattr(session, "request", lambda *a, **kw: Answer())
    sample, received = send_embedding(session, "http://h/v1/embeddings", {"input": "x"})
    assert not sample.success and sample.error == "expected 1 embedding(s) in the answer"
    monkeypatch.setattr(Answer, "content", b"<html>")
    sample, _ = send_embedding(session, "http://h/v1/embeddings", {"input": "x"})
    assert sample.error == "the answer is not an embeddings list"


def test_agent_sends_embeddings_to_the_embedding_model(fake: FakeSSEServer, tmp_path: Path) -> None:
    config = RunConfig(
        host=fake.root_url, model=MODEL, out=str(tmp_path), slo_path="s", scenario="rag",
        embed_model=EMBED_MODEL, embed_tokens=20, max_requests=40, seed=3,
    )  # fmt: skip
    agent = Agent(config, RecordWriter(tmp_path / "raw", "local", pid=2))
    with requests.Session() as session:
        for _ in range(40):
            agent.send(session)
    collector = Collector(tmp_path / "raw")
    collector.poll()
    kinds = {s.kind for s in collector.samples}
    assert kinds == {EMBED_KIND, "chat"} and all(s.success for s in collector.samples)
    sent = {(b["model"], "input" in b) for b in fake.stats.bodies}
    assert sent == {(EMBED_MODEL, True), (MODEL, False)}
    embed = [s for s in collector.samples if s.kind == EMBED_KIND]
    assert all(18 <= (s.prompt_tokens or 0) <= 22 for s in embed)  # 20 tokens +-10 %


# -- which model ---------------------------------------------------------------------


def test_find_models_probes_each_listed_model(fake: FakeSSEServer) -> None:
    assert serves_embeddings(fake.root_url, None, EMBED_MODEL)
    assert not serves_embeddings(fake.root_url, None, MODEL)
    assert not serves_embeddings("http://127.0.0.1:9", None, EMBED_MODEL, timeout=2)
    assert find_models(fake.root_url, None, chat=True, embed=True) == (MODEL, EMBED_MODEL)
    assert find_models(fake.root_url, None, chat=False, embed=True) == (None, EMBED_MODEL)
    fake.behaviour.models = (EMBED_MODEL, MODEL)  # an embedding model listed first
    assert find_models(fake.root_url, None, chat=True, embed=False) == (MODEL, None)
    fake.behaviour.models = (MODEL,)
    probes = fake.stats.requests
    assert find_models(fake.root_url, None, chat=True, embed=False) == (MODEL, None)
    assert fake.stats.requests == probes  # a lone model needed as chat: no probe
    with pytest.raises(ServerError, match=r"no model of .* \(fake-model\) answers /v1/embeddings; pass --embed-model"):
        find_models(fake.root_url, None, chat=False, embed=True)
    fake.behaviour.models = (EMBED_MODEL,)
    with pytest.raises(ServerError, match="lists no chat model"):
        find_models(fake.root_url, None, chat=True, embed=True)
    fake.behaviour.models = ()
    with pytest.raises(ServerError, match="lists no model"):
        find_models(fake.root_url, None, chat=True, embed=False)


def config_for(*argv: str, env: dict[str, str] | None = None) -> RunConfig:
    return cli.make_config(cli.build_parser().parse_args(["run", *argv]), env=env or {})[0]


def test_cli_picks_the_models(fake: FakeSSEServer, tmp_path: Path) -> None:
    embeddings = config_for("--host", fake.base_url, "--scenario", "embeddings")
    assert (embeddings.model, embeddings.embed_model, embeddings.embed_tokens) == (EMBED_MODEL, EMBED_MODEL, 128)
    rag = config_for("--host", fake.base_url, "--scenario", "rag", "--embed-tokens", "64")
    assert (rag.model, rag.embed_model, rag.embed_tokens) == (MODEL, EMBED_MODEL, 64)
    named = config_for("--host", "http://127.0.0.1:9", "--scenario", "rag", "--model", "c", "--embed-model", "e")
    assert (named.model, named.embed_model) == ("c", "e")  # both given: nothing asked of the server
    by_model = config_for("--host", "http://127.0.0.1:9", "--scenario", "embeddings", "--model", "e")
    assert (by_model.model, by_model.embed_model) == ("e", "e")
    # a chat entry's model is not taken for an embeddings run; its server is
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(f"endpoints: [{{name: x, base_url: '{fake.base_url}', model: {MODEL}}}]\n")
    from_file = config_for("--scenario", "embeddings", env={"LLF_CONFIG": str(endpoints)})
    assert from_file.model == EMBED_MODEL
    chat = config_for("--host", fake.base_url)
    assert (chat.model, chat.embed_model) == (MODEL, "")


def test_cli_takes_the_endpoints_files_embedding_entry(fake: FakeSSEServer, tmp_path: Path) -> None:
    ca = tmp_path / "gw.pem"
    ca.write_text("not read: no https here\n")
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(
        "endpoints:\n"
        f"  - {{name: chat, base_url: '{fake.base_url}', model: {MODEL}}}\n"
        f"  - {{name: emb, base_url: '{fake.base_url}', model: e-file, kind: embedding, api_key: k-e,"
        f" ca_cert: '{ca}'}}\n"
        "  - {name: emb2, base_url: 'http://127.0.0.1:9/v1', model: e-other, kind: embedding}\n"
    )
    env = {"LLF_CONFIG": str(endpoints)}
    # no --host, no model: the first embedding entry gives URL, model, key and CA (no probe)
    config, key = cli.make_config(cli.build_parser().parse_args(["run", "--scenario", "embeddings"]), env=env)
    assert (config.host, config.model, config.embed_model, key, config.ca_cert) == (
        fake.root_url,
        "e-file",
        "e-file",
        "k-e",
        str(ca),
    )
    other = config_for("--scenario", "embeddings", "--embed-model", "e-other", env=env)
    assert (other.host, other.model, other.ca_cert) == ("http://127.0.0.1:9", "e-other", None)
    # rag: the chat entry's server and model, the embedding entry at that server
    rag = config_for("--scenario", "rag", env=env)
    assert (rag.host, rag.model, rag.embed_model) == (fake.root_url, MODEL, "e-file")


def test_embedding_probes_trust_the_ca_cert(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "ca")
    with FakeSSEServer(tls=(cert, key), ttft=0.0, itl=0.0, models=(MODEL, EMBED_MODEL)) as fake:
        assert not serves_embeddings(fake.root_url, None, EMBED_MODEL)  # the certificate is not trusted
        assert serves_embeddings(fake.root_url, None, EMBED_MODEL, ca_cert=str(cert))
        assert find_models(fake.root_url, None, chat=True, embed=True, ca_cert=str(cert)) == (MODEL, EMBED_MODEL)
        rag = config_for("--host", fake.base_url, "--scenario", "rag", "--ca-cert", str(cert))
        assert (rag.model, rag.embed_model, rag.ca_cert) == (MODEL, EMBED_MODEL, str(cert))
        with requests.Session() as session:
            session.trust_env, session.verify = False, verify(rag.ca_cert)  # as the Locust users do
            sample, _ = send_embedding(session, fake.base_url + "/embeddings", {"model": EMBED_MODEL, "input": "x y"})
        assert sample.success


@pytest.mark.parametrize(
    ("extra", "slo", "message"),
    [
        (["--embed-model", "e"], None, "--embed-model applies to the scenarios embeddings and rag, not short"),
        (["--scenario", "embeddings", "--embed-tokens", "0"], None, "--embed-tokens must be at least 1"),
        (["--scenario", "rag"], "min_samples: 2\ntargets: [error_rate <= 1 %]\n", "has no 'embeddings' section"),
        ([], "embeddings: {targets: [error_rate <= 1 %]}\n", "has no chat 'targets'"),
    ],
)
def test_embedding_usage_errors_exit_2(
    extra: list[str], slo: str | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--host", "http://127.0.0.1:9", "--model", "m", *extra]  # judged before the server is asked
    if slo is not None:
        (tmp_path / "slo.yaml").write_text(slo)
        argv += ["--slo", str(tmp_path / "slo.yaml")]
    assert cli.main(argv, env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("loadtest: error: ") and message in err


# -- the SLO section -----------------------------------------------------------------


def test_default_slo_has_an_embeddings_section() -> None:
    slo = load_slo(REPO / "loadtests" / "slo.yaml")
    assert slo.embeddings is not None
    assert {t.metric for t in slo.embeddings} == {"e2el", "error_rate"}
    assert all(t.group == EMBEDDINGS for t in slo.embeddings)
    assert all(t.group == "chat" for t in slo.targets)
    assert slo.goodput_ms(EMBEDDINGS) == {"e2el": 500.0}


def test_embeddings_section_parsing() -> None:
    slo = parse_slo(
        {"min_samples": 7, "embeddings": {"targets": ["e2el p95 <= 0.5 s", "request_throughput >= 2.5 req/s"]}}
    )
    assert slo.targets == ()  # a file for embedding runs only
    latency, rate = slo.group(EMBEDDINGS)
    assert (latency.limit, latency.min_samples) == (500.0, 7)
    assert (rate.metric, rate.stat, rate.limit, rate.needed) == ("request_throughput", "min", 2.5, 1)
    own = parse_slo({"targets": ["ttft p50 <= 1 s"], "embeddings": {"min_samples": 3, "targets": ["e2el max <= 1 s"]}})
    assert own.group(EMBEDDINGS)[0].min_samples == 3 and own.group("chat")[0].min_samples == 20


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"embeddings": {"targets": ["ttft p95 <= 1 s"]}}, "an embedding request has no ttft"),
        ({"embeddings": {"targets": ["itl p99 <= 1 s"]}}, "an embedding request has no itl"),
        ({"embeddings": {"targets": []}}, "embeddings needs a non-empty 'targets' list"),
        ({"embeddings": ["e2el p95 <= 1 s"]}, "embeddings takes only: min_samples, targets"),
        ({"embeddings": {"targets": ["e2el p95 <= 1 s"], "x": 1}}, "embeddings takes only"),
        ({"embeddings": {"targets": ["e2el p95 <= 1 s"], "min_samples": 0}}, "embeddings.min_samples must be"),
        ({"targets": ["request_throughput >= 2"]}, "or 'request_throughput >= <number> req/s'"),
        ({"targets": ["e2el p95 >= 2 ms"]}, "does not read"),
    ],
)
def test_embeddings_section_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SloError, match=message):
        parse_slo(data)


def embed_samples(latencies_ms: list[float], failed: int = 0) -> list[Sample]:
    ok = [Sample(start=T0, success=True, e2el=ms / 1000.0, elapsed=ms / 1000.0, kind=EMBED_KIND) for ms in latencies_ms]
    return ok + [Sample(start=T0, success=False, status=500, kind=EMBED_KIND) for _ in range(failed)]


def test_embedding_targets_and_the_rate_floor() -> None:
    slo = parse_slo(EMBED_SLO)
    samples = embed_samples(list(range(10, 210, 10)), failed=1)  # 10, 20, ... 200 ms
    latency, errors, rate = evaluate(slo, samples, duration=10.0, group=EMBEDDINGS)
    assert latency.value == pytest.approx(105.0) and latency.status == MISS  # numpy linear p50
    assert errors.value == pytest.approx(100 / 21) and errors.status == PASS
    assert rate.value == pytest.approx(2.0) and rate.status == PASS and rate.n == 21
    assert evaluate(slo, samples, duration=100.0, group=EMBEDDINGS)[2].status == MISS  # 0.2 req/s
    assert evaluate(slo, [], duration=10.0, group=EMBEDDINGS)[2].status == INCONCLUSIVE
    assert evaluate(slo, samples, group=EMBEDDINGS)[2].status == INCONCLUSIVE  # no duration given


def test_embedding_figures_have_no_chat_keys() -> None:
    samples = embed_samples([10, 20, 30, 40], failed=1)
    samples[0].prompt_tokens = 100
    figures = summarize_embeddings(samples, duration=2.0, goodput_ms={"e2el": 25.0})
    assert (figures["completed"], figures["failed"], figures["total_input_tokens"]) == (4, 1, 100)
    assert figures["request_throughput"] == pytest.approx(2.0)
    assert figures["total_token_throughput"] == pytest.approx(50.0)
    assert figures["request_goodput"] == pytest.approx(1.0) and figures["good_fraction"] == pytest.approx(0.4)
    assert figures["mean_e2el_ms"] == pytest.approx(25.0) and figures["p50_e2el_ms"] == pytest.approx(25.0)
    assert figures["error_counts"] == {"HTTP 500": 1}
    assert not any(k.endswith(("ttft_ms", "tpot_ms", "itl_ms")) or "output" in k for k in figures)
    assert "mean_client_queue_time_ms" not in figures  # closed loop: no queue
    samples[1].client_queue = 0.005
    assert summarize_embeddings(samples, 2.0)["mean_client_queue_time_ms"] == pytest.approx(5.0)


# -- a run, as the controller judges and reports it -----------------------------------


def embed_request(rig: Rig, at: float, latency: float = 0.05, success: bool = True) -> None:
    rig.writer.sample(
        Sample(
            start=T0 + at,
            success=success,
            status=200 if success else 500,
            e2el=latency if success else None,
            elapsed=latency,
            prompt_tokens=128 if success else None,
            kind=EMBED_KIND,
        )
    )


def run_rig(rig: Rig, chat: bool) -> None:
    rig.tick(0)
    for i in range(8):
        embed_request(rig, 0.5 + i)
        if chat:
            rig.request(0.7 + i, kind="chat")
    rig.idle(10.5)
    rig.tick(10)
    rig.tick(11)


def test_embeddings_run_reports_no_chat_figure(tmp_path: Path) -> None:
    rig = Rig(tmp_path, slo=EMBED_SLO, scenario="embeddings", warmup=0.0, plots=True, scrapes=[])
    run_rig(rig, chat=False)
    assert rig.controller.exit_code == 0
    doc = result(tmp_path)
    assert doc["endpoint_type"] == "openai-embeddings"
    assert doc["completed"] == 8 and doc["total_input_tokens"] == 8 * 128
    assert doc["mean_e2el_ms"] == pytest.approx(50.0)
    assert not any("ttft" in k or "tpot" in k or "itl" in k or "output" in k for k in doc)
    assert [t["group"] for t in doc["targets"]] == [EMBEDDINGS] * 3  # the chat targets do not apply
    assert all(t["status"] == "pass" for t in doc["targets"])
    text = (tmp_path / "summary.txt").read_text()
    assert "embed  e2el" in text and "input tok/s" in text
    assert "ttft" not in text and "tpot" not in text and "itl" not in text and "output" not in text
    assert "embed e2el p50 <= 100 ms" in text and "req/s" in text
    assert (tmp_path / "embed_latency_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "ttft_hist.png").exists() and not (tmp_path / "itl_hist.png").exists()


def test_rag_run_reports_and_judges_both_kinds_apart(tmp_path: Path) -> None:
    rig = Rig(
        tmp_path, slo=EMBED_SLO, scenario="rag", embed_model="e", warmup=0.0, plots=True,
        scrapes=[],
    )  # fmt: skip
    rig.tick(0)
    for i in range(8):
        embed_request(rig, 0.5 + i, latency=0.3)  # every embedding request too slow
        rig.request(0.7 + i, kind="chat")
    rig.idle(10.5)
    rig.tick(10)
    rig.tick(11)
    assert rig.controller.exit_code == 1
    doc = result(tmp_path)
    assert doc["completed"] == 8 and doc["mean_ttft_ms"] == pytest.approx(100.0)  # the chat requests only
    assert doc["mean_e2el_ms"] == pytest.approx(300.0)  # chat E2EL: TTFT + 0.2 s
    assert doc["embeddings"]["completed"] == 8 and doc["embeddings"]["mean_e2el_ms"] == pytest.approx(300.0)
    assert doc["embed_model_id"] == "e" and doc["model_id"] == "m"
    statuses = {(t["group"], t["target"]): t["status"] for t in doc["targets"]}
    assert statuses[("chat", "ttft p50 <= 200 ms")] == "pass"
    assert statuses[(EMBEDDINGS, "e2el p50 <= 100 ms")] == "miss"
    assert statuses[(EMBEDDINGS, "error_rate <= 10 %")] == "pass"
    text = (tmp_path / "summary.txt").read_text()
    assert "client ttft" in text and "embed  e2el" in text and "embeddings: 8 completed, 0 failed" in text
    assert "embedding model e" in text.splitlines()[0]
    for png in ("ttft_hist.png", "itl_hist.png", "embed_latency_hist.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png


def test_embeddings_summary_hides_the_server_ttft() -> None:
    stage = {
        "stage": "measure", "users": 2, "completed": 1, "failed": 0, "duration": 1.0, "request_throughput": 1.0,
        "total_token_throughput": 10.0, "mean_e2el_ms": 5.0, "targets": [], "checks": [],
        "server": {"ttft": {"mean_ms": 4.0, "count": 1}, "e2el": {"mean_ms": 4.5, "count": 1}},
    }  # fmt: skip
    doc: dict[str, Any] = {
        "scenario": "embeddings", "shape": "closed", "max_concurrency": 2, "request_rate": "inf",
        "model_id": "e", "host": "http://h", "endpoint_type": "openai-embeddings", "stages": [stage],
        "verdict": "PASS", "exit_code": 0,
    }  # fmt: skip
    text = summary_text(json.loads(json.dumps(doc)))
    assert "server e2el" in text and "server ttft" not in text
