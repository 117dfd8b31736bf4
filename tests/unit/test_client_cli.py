"""llf-client's command line: arguments, and the failures only a fake server can produce.

The fake (tests/fakes/fake_openai.py) answers 429/503, stalls, breaks off mid-stream,
demands a key or reports a queue; everything that works normally is tested against
the real server in tests/e2e/test_10_client.py.
"""

from __future__ import annotations

import io
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llf_client import cli
from llf_client.client import EndpointClient, Router
from llf_client.config import Endpoint
from tests.fakes.fake_openai import FakeOpenAI


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No endpoint settings from the caller's environment; config in tmp_path."""
    for name in (
        "LLF_BASE_URL",
        "OPENAI_BASE_URL",
        "LLF_API_KEY",
        "OPENAI_API_KEY",
        "LLF_MODEL",
        "LLF_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def dead_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def endpoints_file(tmp_path: Path, *entries: dict[str, Any]) -> str:
    path = tmp_path / "endpoints.yml"
    path.write_text(json.dumps({"endpoints": list(entries)}), encoding="utf-8")  # JSON is YAML
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


# --- arguments ------------------------------------------------------------------------


def test_help_documents_exit_codes_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "exit codes:",
        "  130  interrupted (Ctrl-C)",
        "    4  authentication failed",
        "LLF_BASE_URL",
        "OPENAI_API_KEY",
        "llf/endpoints.yml",
        "--first-token-timeout",
    ):
        assert text in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: llf-client")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("llf-client ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "--timeout", "-1", "q"], "argument --timeout: must be > 0: '-1'"),
        (["ask", "--timeout", "soon", "q"], "argument --timeout: not a number: 'soon'"),
        (["ask", "--timeout", "nan", "q"], "not a finite number"),
        (["ask", "--max-tokens", "-3", "q"], "argument --max-tokens: must be >= 0: '-3'"),
        (["ask", "--max-tokens", "x", "q"], "not a whole number"),
        (["health", "--burst-queue-threshold", "-1"], "must be >= 0"),
        (["smoke", "--ttft-target-ms", "0"], "must be > 0"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_options_work_before_and_after_the_command(fake: FakeOpenAI) -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["--url", fake.base_url, "--no-burst", "ask", "q"])
    after = parser.parse_args(["ask", "q", "--url", fake.base_url, "--no-burst"])
    assert before.url == after.url == fake.base_url
    assert before.no_burst and after.no_burst


def test_ask_without_prompt_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    code, _, err = run(capsys, "ask")
    assert code == 2
    assert err == (
        'llf-client: error: no prompt (hint: give one: llf-client ask "...", or pipe it on stdin)\n'
    )


def test_ask_with_empty_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    assert run(capsys, "ask", "-")[0] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["ask", "--url", "http://a/v1", "--endpoint", "x", "q"],
            "llf-client: error: --url cannot be combined with --endpoints/--endpoint",
        ),
        (
            ["smoke", "--inventory", ".", "--url", "http://a/v1"],
            "llf-client: error: --inventory cannot be combined with --url/--endpoints/--endpoint",
        ),
        (["models", "--endpoint", "local"], "llf-client: error: endpoints file "),
        (["ask", "--url", "localhost:8000", "q"], "llf-client: error: --url: not an http(s) URL"),
    ],
)
def test_configuration_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1 and "(hint: " in err


# --- failures a real server does not produce on demand --------------------------------


def test_429_without_burst_exits_7(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.behaviour.chat_status = 429
    code, out, err = run(capsys, "ask", "--url", fake.base_url, "--no-burst", "hi")
    assert code == 7 and out == ""
    assert err == (
        f"llf-client: error: url ({fake.base_url}): HTTP 429: fake failure 429 "
        "(hint: the server is overloaded (429): retry later or add a burst endpoint)\n"
    )
    assert fake.requests.count("POST /v1/chat/completions") == 1  # max_retries=0: no retry


def test_max_retries_is_explicit(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.behaviour.chat_status = 503
    code, _, _ = run(capsys, "ask", "--url", fake.base_url, "--max-retries", "1", "hi")
    assert code == 7
    assert fake.requests.count("POST /v1/chat/completions") == 2


def test_503_bursts_to_the_next_endpoint(
    fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake.behaviour.chat_status = 503
    dead = dead_url()
    path = endpoints_file(
        tmp_path, {"name": "busy", "base_url": fake.base_url}, {"name": "spare", "base_url": dead}
    )
    code, _, err = run(capsys, "ask", "--endpoints", path, "hi")
    assert code == 3
    assert err.splitlines() == [
        f"[busy ({fake.base_url}) skipped: HTTP 503: fake failure 503; trying spare]",
        f"llf-client: error: spare ({dead}): connection refused "
        "(hint: nothing listens on that port: start the server or fix the URL)",
    ]


def test_debug_shows_the_traceback(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.behaviour.chat_status = 429
    code, _, err = run(capsys, "--debug", "ask", "--url", fake.base_url, "hi")
    assert code == 7
    assert "Traceback (most recent call last)" in err
    assert "openai.RateLimitError" in err
    assert err.splitlines()[-1].startswith("llf-client: error: url (")


def test_stalled_first_token_times_out(
    fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.behaviour.stall_s = 30  # released when the fake stops
    code, _, err = run(capsys, "ask", "--url", fake.base_url, "--first-token-timeout", "0.3", "q")
    assert code == 6
    assert err.startswith(f"llf-client: error: url ({fake.base_url}): no answer within 0.3 s ")
    code, _, err = run(
        capsys, "ask", "--url", fake.base_url, "--no-stream", "--timeout", "0.3", "q"
    )
    assert code == 6 and "no answer within 0.3 s" in err


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("error", "the server reported an error: engine died"),
        ("close", "the server reported an error: the stream ended early"),
        ("cut", "connection error (peer closed connection"),
    ],
)
def test_failure_mid_stream_is_an_error_not_a_burst(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, how: str, why: str
) -> None:
    with FakeOpenAI(break_after=1, break_with=how) as fake:
        path = endpoints_file(
            tmp_path,
            {"name": "first", "base_url": fake.base_url},
            {"name": "second", "base_url": dead_url()},
        )
        code, out, err = run(capsys, "ask", "--endpoints", path, "q")
    assert code == 7
    assert out == "The capital\n"  # what was shown stays shown, nothing re-sent
    assert "skipped" not in err
    assert err.startswith(
        f"llf-client: error: first ({fake.base_url}): the reply broke off after 1 chunks: {why}"
    )
    assert "(hint: the reply above is incomplete; ask again)" in err


def test_tls_failure(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    url = fake.base_url.replace("http://", "https://")
    code, _, err = run(capsys, "ask", "--url", url, "q")
    assert code == 3
    assert err.startswith(f"llf-client: error: url ({url}): TLS failure (")
    assert "(hint: check that the scheme matches the server" in err


def test_unknown_host(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "llf-nohost.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    code, _, err = run(capsys, "ask", "--url", "http://llf-nohost.test:8000/v1", "q")
    assert code == 3
    assert err == (
        "llf-client: error: url (http://llf-nohost.test:8000/v1): unknown host llf-nohost.test "
        "(Name or service not known) "
        "(hint: the host name does not resolve: check the URL or the inventory)\n"
    )
    code, out, err = run(capsys, "health", "--url", "http://llf-nohost.test:8000/v1")
    assert code == 3 and "UnknownHost" in out


def test_missing_or_wrong_key_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(api_key="right") as fake:
        code, _, err = run(capsys, "ask", "--url", fake.base_url, "q")
        assert code == 4
        assert err == (
            f"llf-client: error: url ({fake.base_url}): HTTP 401: Unauthorized "
            "(hint: the server wants an API key: pass --api-key or set LLF_API_KEY)\n"
        )
        code, _, err = run(capsys, "ask", "--url", fake.base_url, "--api-key", "wrong", "q")
        assert code == 4 and "(hint: the key was refused" in err


def test_queue_over_threshold_bursts(
    fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake.behaviour.waiting = 5
    path = endpoints_file(
        tmp_path,
        {"name": "busy", "base_url": fake.base_url, "queue_threshold": 2},
        {"name": "spare", "base_url": dead_url()},
    )
    code, _, err = run(capsys, "ask", "--endpoints", path, "q")
    assert code == 3
    assert err.splitlines()[0] == (
        f"[busy ({fake.base_url}) skipped: 5 requests waiting (threshold 2); trying spare]"
    )
    assert "POST /v1/chat/completions" not in fake.requests
    # at or under the threshold the request is sent
    fake.behaviour.waiting = 2
    code, out, _ = run(capsys, "ask", "--endpoints", path, "--no-stream", "q")
    assert code == 0 and "Paris" in out


def test_prompt_over_the_context_length(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with FakeOpenAI(max_model_len=50) as fake:  # no /tokenize: the estimate is used
        path = endpoints_file(
            tmp_path,
            {"name": "small", "base_url": fake.base_url},
            {"name": "big", "base_url": dead_url()},
        )
        code, _, err = run(capsys, "ask", "--endpoints", path, "x" * 300)
        assert err.splitlines()[0] == (
            f"[small ({fake.base_url}) skipped: prompt of 100 tokens (estimated) + 1 to "
            "generate does not fit the context length 50 of fake-model; trying big]"
        )
        code, _, err = run(capsys, "ask", "--endpoints", path, "--no-burst", "x" * 300)
        assert code == 5 and "does not fit the context length 50" in err
        assert "POST /v1/chat/completions" not in fake.requests


def test_unhealthy_server(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.behaviour.health_status = 503
    code, out, err = run(capsys, "health", "--url", fake.base_url)
    assert code == 7
    assert "ServerError  503" in out
    assert err.startswith(f"llf-client: error: url ({fake.base_url}): /health answered 503")
    code, out, _ = run(capsys, "health", "--url", fake.base_url, "--json")
    document = json.loads(out)
    assert document["ok"] is False
    assert document["endpoints"][0]["error"]["exit_code"] == 7


def test_models_of_a_dead_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    url = dead_url()
    code, out, err = run(capsys, "models", "--url", url, "--json")
    assert code == 3
    (entry,) = json.loads(out)["endpoints"]
    assert entry["error"]["type"] == "ConnectionRefused" and entry["models"] == []
    code, out, _ = run(capsys, "models", "--url", url)
    assert code == 3 and "(unreachable)" in out


def test_smoke_checks_the_key_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(api_key="right", model="smol") as fake:
        code, out, _ = run(
            capsys,
            "smoke",
            "--url",
            fake.base_url,
            "--api-key",
            "right",
            "--model",
            "smol",
            "--json",
        )
    assert code == 0
    (entry,) = json.loads(out)["endpoints"]
    assert [(c["check"], c["status"]) for c in entry["checks"]] == [
        ("health", "pass"),
        ("models", "pass"),
        ("answer", "pass"),
        ("stream", "pass"),
        ("auth", "pass"),
    ]
    assert entry["checks"][4]["detail"] == "a request without the key got 401 (expected 401)"


def test_smoke_with_a_wrong_key_or_an_open_server(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(api_key="right") as fake:
        code, out, _ = run(capsys, "smoke", "--url", fake.base_url, "--api-key", "wrong")
        assert code == 1
        assert "models  FAIL" in out and "answer  SKIP" in out and "not run: HTTP 401" in out
    with FakeOpenAI() as fake:  # a key is configured but the server takes anything
        code, out, _ = run(capsys, "smoke", "--url", fake.base_url, "--api-key", "k")
        assert code == 1
        assert "auth    FAIL" in out and "got 200 (expected 401)" in out


def test_smoke_failures(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.behaviour.chat_status = 503
    code, out, _ = run(capsys, "smoke", "--url", fake.base_url, "--model", "absent")
    assert code == 1
    assert "does not list absent; served: fake-model (context 4096)" in out
    assert "answer  FAIL" in out and "no model to ask" in out
    code, out, _ = run(capsys, "smoke", "--url", fake.base_url)
    assert "answer  FAIL" in out and "HTTP 503: fake failure 503" in out
    assert out.splitlines()[-1] == "smoke: 1 endpoint(s), 5 checks, 2 failed"


def test_smoke_of_a_dead_server_and_an_empty_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "smoke", "--url", dead_url(), "--json")
    assert code == 1
    checks = json.loads(out)["endpoints"][0]["checks"]
    assert [c["status"] for c in checks] == ["fail", "skip", "skip", "skip", "skip"]
    assert checks[1]["detail"] == "not run: connection refused"


def test_smoke_an_inventory(
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.behaviour.chat_status = 500
    inventory = tmp_path / "inv"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(
        f"all:\n  children:\n    llf_servers:\n      hosts:\n        srv:\n"
        f"          ansible_host: 127.0.0.1\n          llf_server_port: {fake.port}\n"
    )
    (inventory / "group_vars" / "all" / "v.yml").write_text(
        "llf_server_api_key: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  3131\n"
        "llf_smoke_expected_model: fake-model\n"
    )
    monkeypatch.setenv("LLF_API_KEY", "from-env")
    code, out, err = run(capsys, "smoke", "--inventory", str(inventory))
    assert code == 1
    assert err == (
        "llf-client: srv: llf_server_api_key is vault-encrypted, skipped; "
        "using --api-key/LLF_API_KEY instead\n"
    )
    assert "lists fake-model" in out and "HTTP 500" in out


# --- chat, in-process -----------------------------------------------------------------


def test_chat_commands_and_errors_keep_the_session(
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fake.behaviour.chat_status = 503
    lines = [
        "",
        "/help",
        "hello",
        "/info",
        "/model other",
        "/model",
        "/system Be brief.",
        "/system -",
        "/bogus",
        "/clear",
        "quit",
        "never read",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = run(capsys, "chat", "--url", fake.base_url, "--no-burst")
    assert code == 0
    assert f"llf-client chat: url ({fake.base_url}). /help for commands" in err
    assert f"llf-client: error: url ({fake.base_url}): HTTP 503: fake failure 503" in err
    for text in (
        "/clear         forget the conversation",
        "messages: 0",
        f"endpoints: url ({fake.base_url}) (no burst)",
        "model: fake-model",
        "model: other",
        "system prompt: Be brief.",
        "system prompt: (none)",
        "unknown command /bogus; /help lists them",
        "conversation cleared",
    ):
        assert text in out
    assert (tmp_path / "config" / "llf" / "chat_history").exists()


def test_chat_ctrl_c_at_the_prompt_and_ctrl_d(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[BaseException] = [KeyboardInterrupt(), EOFError()]

    def fake_input(prompt: str = "") -> str:
        raise answers.pop(0)

    monkeypatch.setattr("builtins.input", fake_input)
    code, _, err = run(capsys, "chat", "--url", dead_url())
    assert code == 0 and "(exit or Ctrl-D to leave)" in err


def test_chat_info_when_the_model_is_unknown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("/info\nexit\n"))
    code, out, _ = run(capsys, "chat", "--url", dead_url())
    assert code == 0 and "model: (unknown: connection refused)" in out


def test_history_that_cannot_be_saved_is_reported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "blocker").write_text("a file where the config folder should be")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "blocker"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, "chat", "--url", dead_url())
    assert code == 0 and "llf-client: chat history not saved to" in err


# --- the rest -------------------------------------------------------------------------


def test_unexpected_exceptions_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(Router, "ask", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["ask", "--url", "http://127.0.0.1:9/v1", "q"])


def test_router_needs_an_endpoint() -> None:
    with pytest.raises(ValueError):
        Router([])


def test_server_without_models_or_tokenize(fake: FakeOpenAI) -> None:
    client = EndpointClient(Endpoint("f", fake.base_url, model="fake-model"))
    assert client.version() == "fake"
    assert client.queue_depth() == 0.0
    assert client.count_prompt_tokens("fake-model", [{"role": "user", "content": "abcdef"}]) == (
        2,
        False,
    )
    fake.behaviour.max_model_len = None
    assert client.max_model_len("fake-model") is None
    client.endpoint = Endpoint("f", fake.base_url.replace("/v1", "/none/v1"))
    assert client.version() is None
