"""Several models per host: entries by kind, `embed`, `models` with kinds, `smoke` of
embedding entries, the default answer length of ask (against tests/fakes/fake_openai)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from llf_client import cli
from llf_client.client import cosine
from llf_client.config import resolve_endpoints
from llf_client.errors import ConfigError
from tests.fakes.fake_openai import FakeOpenAI
from tests.unit.test_client_cli import clean_env, dead_url, endpoints_file, run  # noqa: F401 - fixture

CHAT, EMB = "smol", "minilm"


def entries(chat_url: str, emb_url: str) -> list[dict[str, str]]:
    """What the deploy writes for one host serving a chat and an embedding model."""
    return [
        {"name": "local", "base_url": chat_url, "model": CHAT},
        {"name": "local-all-minilm", "base_url": emb_url, "model": EMB, "kind": "embedding"},
    ]


def test_commands_pick_entries_by_kind_and_model(tmp_path: Path) -> None:
    file = endpoints_file(
        tmp_path,
        *entries("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"),
        {"name": "local-qwen", "base_url": "http://127.0.0.1:8002/v1", "model": "qwen"},
        {"name": "gw-gateway", "base_url": "https://gw:8443/v1", "model": CHAT},
        {"name": "gw-gateway-qwen", "base_url": "https://gw:8443/v1", "model": "qwen"},
        {"name": "spare", "base_url": "http://10.0.0.9:8000/v1"},  # added by hand: any model
    )

    def names(**options: str | None) -> list[tuple[str, str | None]]:
        return [(e.name, e.model) for e in resolve_endpoints(endpoints_file=file, env={}, **options)]  # type: ignore[arg-type]

    # chat: the first entry's model, bursting only to entries serving it
    assert names(kind="chat") == [("local", CHAT), ("gw-gateway", CHAT), ("spare", CHAT)]
    assert names(kind="chat", model="qwen") == [
        ("local-qwen", "qwen"), ("gw-gateway-qwen", "qwen"), ("spare", "qwen")
    ]
    assert names(kind="embedding") == [("local-all-minilm", EMB)]
    assert len(names()) == 6  # models, health, smoke, top: every entry
    with pytest.raises(ConfigError) as info:
        resolve_endpoints(endpoints_file=file, endpoint_name="local-all-minilm", kind="chat", env={})
    assert info.value.one_line() == (
        f"endpoints file {file}: no chat endpoint (hint: deploy a chat model (llf_models), pass --url, "
        "or use llf-client embed for these)"
    )
    with pytest.raises(ConfigError) as info:
        resolve_endpoints(endpoints_file=file, endpoint_name="local", kind="embedding", model="x", env={})
    assert "no embedding endpoint (hint: deploy an embedding" not in info.value.one_line()
    assert "use llf-client ask or chat for these" in info.value.one_line()
    only_models = endpoints_file(tmp_path, *entries("http://a:1/v1", "http://a:2/v1"))
    with pytest.raises(ConfigError) as info:
        resolve_endpoints(endpoints_file=only_models, kind="chat", model="qwen", env={})
    assert info.value.one_line() == (
        f"endpoints file {only_models}: no chat endpoint serves model 'qwen' (hint: choose one of: smol)"
    )
    # --url: whatever the command needs
    (url,) = resolve_endpoints(url="http://h:1", kind="embedding", env={})
    assert url.kind == "embedding"


def test_a_bad_kind_is_a_config_error(tmp_path: Path) -> None:
    file = endpoints_file(tmp_path, {"name": "a", "base_url": "http://h:1/v1", "kind": "rerank"})
    with pytest.raises(ConfigError) as info:
        resolve_endpoints(endpoints_file=file, env={})
    assert info.value.one_line() == (
        f"endpoints file {file}, entry 1: kind must be chat or embedding, not 'rerank' "
        "(hint: correct the entry's kind)"
    )


def test_embed_prints_dimensions_numbers_and_similarities(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with FakeOpenAI(model=CHAT) as chat, FakeOpenAI(model=EMB, dimensions=8) as emb:
        file = endpoints_file(tmp_path, *entries(chat.base_url, emb.base_url))
        code, out, err = run(capsys, "embed", "--endpoints", file, "cat", "act", "zzz")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].startswith("1  8 dimensions  [") and lines[0].endswith("'cat'")
        assert lines[4] == "cosine similarity"
        assert lines[5].split() == ["1", "2", "3"]
        assert lines[6].split() == ["1", "1.0000", "1.0000", "0.0000"]  # "cat" and "act": same letters
        assert err == f"[{EMB}, served by local-all-minilm ({emb.base_url})]\n"
        code, out, _ = run(capsys, "embed", "--endpoints", file, "--json", "cat", "dog")
        document = json.loads(out)
        assert [e["dimensions"] for e in document["embeddings"]] == [8, 8]
        assert document["embeddings"][0]["embedding"][ord("c") % 8] == 1.0
        assert document["model"] == EMB and len(document["similarity"]) == 2
        assert chat.requests == []  # the chat server got nothing
        assert emb.behaviour.bodies[-1] == {"model": EMB, "input": ["cat", "dog"], "encoding_format": "float"}


def test_embed_reads_stdin_and_refuses_empty_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(model=EMB) as emb:
        monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
        code, out, _ = run(capsys, "embed", "--url", emb.base_url, "-")
        assert code == 0 and out.rstrip().endswith("'from stdin'")
        code, _, err = run(capsys, "embed", "--url", emb.base_url, " ")
        assert code == 2 and err == "llf-client: error: a text is empty (hint: give non-empty texts to embed)\n"
    with FakeOpenAI(model=EMB, dimensions=0) as empty:
        code, _, err = run(capsys, "embed", "--url", empty.base_url, "x")
    assert code == 7 and "the server sent 1 embedding(s) for 1 text(s), or an empty vector" in err


def test_embed_bursts_past_a_dead_embedding_endpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dead = dead_url()
    with FakeOpenAI(model=EMB) as emb:
        file = endpoints_file(
            tmp_path,
            {"name": "e1", "base_url": dead, "model": EMB, "kind": "embedding"},
            {"name": "e2", "base_url": emb.base_url, "model": EMB, "kind": "embedding"},
        )
        code, out, err = run(capsys, "embed", "--endpoints", file, "--json", "x")
    assert code == 0
    assert json.loads(out)["skipped"] == [{"endpoint": "e1", "base_url": dead, "reason": "connection refused"}]
    assert cosine([1.0, 0.0], [0.0, 0.0]) == 0.0


def test_models_shows_kinds_once_per_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with FakeOpenAI(model=CHAT) as chat, FakeOpenAI(model=EMB, max_model_len=512) as emb:
        file = endpoints_file(
            tmp_path,
            *entries(chat.base_url, emb.base_url),
            {"name": "again", "base_url": emb.base_url, "model": "other"},  # same server: listed once
        )
        code, out, _ = run(capsys, "models", "--endpoints", file)
        assert code == 0
        assert [line.split() for line in out.splitlines()] == [
            ["ENDPOINT", "URL", "MODEL", "KIND", "CONTEXT"],
            ["local", chat.base_url, CHAT, "chat", "4096"],
            ["local-all-minilm", emb.base_url, EMB, "embedding", "512"],
        ]
        assert emb.requests.count("GET /v1/models") == 1
        code, out, _ = run(capsys, "models", "--url", emb.base_url, "--json")
    (entry,) = json.loads(out)["endpoints"]
    assert entry["models"] == [{"endpoint": "url", "id": EMB, "kind": None, "max_model_len": 512}]


def test_smoke_checks_every_model_by_its_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with FakeOpenAI(model=CHAT) as chat, FakeOpenAI(model=EMB) as emb:
        file = endpoints_file(tmp_path, *entries(chat.base_url, emb.base_url))
        code, out, _ = run(capsys, "smoke", "--endpoints", file, "--json")
    assert code == 0
    document = json.loads(out)
    checks = {e["endpoint"]: [(c["check"], c["status"]) for c in e["checks"]] for e in document["endpoints"]}
    assert checks == {
        "local": [("health", "pass"), ("models", "pass"), ("answer", "pass"), ("stream", "pass"), ("auth", "skip")],
        "local-all-minilm": [("health", "pass"), ("models", "pass"), ("embedding", "pass"), ("auth", "skip")],
    }
    detail = document["endpoints"][1]["checks"][2]["detail"]
    assert detail.startswith("8 dimensions: [")
    assert emb.behaviour.bodies[0]["input"] == ["What is the capital of France?"]


def test_ask_has_a_default_answer_length(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with FakeOpenAI(model=CHAT) as chat:
        assert run(capsys, "ask", "--url", chat.base_url, "hi")[0] == 0
        assert run(capsys, "ask", "--url", chat.base_url, "--max-tokens", "7", "hi")[0] == 0
    assert [b["max_tokens"] for b in chat.behaviour.bodies] == [cli.DEFAULT_MAX_TOKENS, 7]
    # a long prompt gets the room left in the context rather than a refusal
    with FakeOpenAI(model=CHAT, max_model_len=1000) as small:
        assert run(capsys, "ask", "--url", small.base_url, "--no-stream", "word " * 500)[0] == 0
    assert small.behaviour.bodies[-1]["max_tokens"] == 1000 - 834  # 2500 characters: 834 tokens (estimated)


def test_chat_model_command_moves_to_the_entries_serving_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(model=CHAT) as smol, FakeOpenAI(model="qwen") as qwen:
        file = endpoints_file(
            tmp_path,
            {"name": "local", "base_url": smol.base_url, "model": CHAT},
            {"name": "local-qwen", "base_url": qwen.base_url, "model": "qwen"},
        )
        monkeypatch.setattr(sys, "stdin", io.StringIO("/model qwen\nhello\n/model nope\n/info\n"))
        code, out, err = run(capsys, "chat", "--endpoints", file)
    assert code == 0
    assert "model: qwen" in out and f"endpoints: local-qwen ({qwen.base_url})" in out
    assert f"[served by local-qwen ({qwen.base_url})]" in err
    assert "no chat endpoint serves model 'nope'" in err
    assert smol.behaviour.bodies == [] and qwen.behaviour.bodies[0]["model"] == "qwen"
