"""llf-client against the real vLLM server (the `server` fixture).

The CLI runs in-process (`llf_client.cli.main`) so that coverage counts it; the
interactive chat also runs for real in a pseudo-terminal with pexpect. Answers are
checked only where the small model is deterministic: temperature 0, the system prompt
below, and the capital of France.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from llf_client import cli
from tests.conftest import Server
from tests.fakes.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e

SYSTEM = "You are a helpful assistant."
QUESTION = "What is the capital of France?"
DETERMINISTIC = ["--system", SYSTEM, "--temperature", "0", "--seed", "0", "--max-tokens", "16"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
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


def url_args(server: Server) -> list[str]:
    key = ["--api-key", server.api_key] if server.api_key else []
    return ["--url", server.base_url, *key]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def endpoints_file(tmp_path: Path, *entries: dict[str, Any]) -> str:
    path = tmp_path / "endpoints.yml"
    path.write_text(json.dumps({"endpoints": list(entries)}), encoding="utf-8")
    return str(path)


def real_entry(server: Server, **extra: Any) -> dict[str, Any]:
    return {"name": "real", "base_url": server.base_url, "api_key": server.api_key, **extra}


# --- ask ------------------------------------------------------------------------------


def test_ask_streams_and_says_who_served(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "ask", *url_args(server), *DETERMINISTIC, QUESTION)
    assert code == 0
    assert "Paris" in out and out.endswith("\n")
    assert err == f"[served by url ({server.base_url})]\n"


def test_ask_without_streaming(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "ask", *url_args(server), *DETERMINISTIC, "--no-stream", "--top-p", "1", QUESTION
    )
    assert code == 0 and "Paris" in out
    assert err == f"[served by url ({server.base_url})]\n"


def test_ask_json(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ask", *url_args(server), *DETERMINISTIC, "--json", QUESTION)
    assert code == 0 and err == ""
    answer = json.loads(out)
    assert set(answer) >= {
        "answer",
        "endpoint",
        "base_url",
        "model",
        "ttft_s",
        "total_s",
        "prompt_tokens",
        "completion_tokens",
        "tokens_per_s",
    }
    assert "Paris" in answer["answer"]
    assert (answer["endpoint"], answer["base_url"]) == ("url", server.base_url)
    assert answer["model"] == server.model  # the first model the server lists
    assert 0 < answer["ttft_s"] <= answer["total_s"]
    assert answer["prompt_tokens"] > 0 and 0 < answer["completion_tokens"] <= 16
    assert answer["tokens_per_s"] > 0 and answer["skipped"] == []


def test_ask_reads_the_prompt_from_stdin(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLF_BASE_URL", server.base_url)  # the environment works too
    if server.api_key:
        monkeypatch.setenv("LLF_API_KEY", server.api_key)
    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION + "\n"))
    code, out, _ = run(capsys, "ask", *DETERMINISTIC)
    assert code == 0 and "Paris" in out
    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION))
    code, out, _ = run(capsys, "ask", *DETERMINISTIC, "--model", server.model, "-")
    assert code == 0 and "Paris" in out


def test_ctrl_c_during_ask_exits_130(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_write", interrupting_writer(after=2))
    code, out, err = run(capsys, "ask", *url_args(server), *DETERMINISTIC, QUESTION)
    assert code == 130
    assert err.endswith("llf-client: interrupted\n")


def test_unknown_model(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "ask", *url_args(server), "--model", "no-such-model", "--max-tokens", "4", "hi"
    )
    assert code == 5 and out == ""
    assert err.startswith(
        f"llf-client: error: url ({server.base_url}): unknown model: "
        "The model `no-such-model` does not exist."
    )
    assert err.endswith("(hint: list the served models with: llf-client models)\n")


def test_prompt_over_the_context_length_is_refused_before_sending(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "ask", *url_args(server), "hello " * 5000)
    assert code == 5
    assert "tokens + 1 to generate does not fit the context length" in err
    assert "(estimated)" not in err  # vLLM's /tokenize counted them


# --- bursting -------------------------------------------------------------------------


def test_burst_past_a_dead_local_server(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dead = dead_url()
    path = endpoints_file(tmp_path, {"name": "local", "base_url": dead}, real_entry(server))
    code, out, err = run(capsys, "ask", "--endpoints", path, *DETERMINISTIC, QUESTION)
    assert code == 0 and "Paris" in out
    assert err.splitlines() == [
        f"[local ({dead}) skipped: connection refused; trying real]",
        f"[served by real ({server.base_url})]",
    ]
    code, out, _ = run(capsys, "ask", "--endpoints", path, *DETERMINISTIC, "--json", QUESTION)
    answer = json.loads(out)
    assert (answer["endpoint"], answer["base_url"]) == ("real", server.base_url)
    assert answer["skipped"] == [
        {"endpoint": "local", "base_url": dead, "reason": "connection refused"}
    ]

    code, out, err = run(capsys, "ask", "--endpoints", path, "--no-burst", *DETERMINISTIC, QUESTION)
    assert code == 3 and out == ""
    assert err == (
        f"llf-client: error: local ({dead}): connection refused "
        "(hint: nothing listens on that port: start the server or fix the URL)\n"
    )


def test_burst_past_an_overloaded_server(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with FakeOpenAI(chat_status=503) as fake:
        path = endpoints_file(
            tmp_path,
            {"name": "busy", "base_url": fake.base_url},
            real_entry(server, model=server.model),
        )
        code, out, err = run(capsys, "ask", "--endpoints", path, *DETERMINISTIC, QUESTION)
    assert code == 0 and "Paris" in out
    assert err.splitlines()[0] == (
        f"[busy ({fake.base_url}) skipped: HTTP 503: fake failure 503; trying real]"
    )


def test_burst_past_a_stalled_server(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the timeout covers every read of the real server's stream too: 5 s leaves room for a
    # server that has just restarted (the fault tests run before these)
    with FakeOpenAI(stall_s=60, model=server.model) as fake:  # released when it stops
        path = endpoints_file(
            tmp_path, {"name": "stalled", "base_url": fake.base_url}, real_entry(server)
        )
        code, out, err = run(
            capsys,
            "ask",
            "--endpoints",
            path,
            "--first-token-timeout",
            "5",
            *DETERMINISTIC,
            QUESTION,
        )
    assert code == 0 and "Paris" in out
    assert err.splitlines() == [
        f"[stalled ({fake.base_url}) skipped: no answer within 5 s; trying real]",
        f"[served by real ({server.base_url})]",
    ]


def test_queue_threshold_reads_vllm_metrics(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = endpoints_file(
        tmp_path, real_entry(server, queue_threshold=0), {"name": "spare", "base_url": dead_url()}
    )
    code, out, err = run(capsys, "ask", "--endpoints", path, *DETERMINISTIC, QUESTION)
    assert code == 0 and "Paris" in out  # nothing waits on an idle server
    assert err == f"[served by real ({server.base_url})]\n"


# --- models, health, smoke ------------------------------------------------------------


def test_models(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", *url_args(server))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ENDPOINT", "URL", "MODEL", "KIND", "CONTEXT"]
    assert row.split()[:4] == ["url", server.base_url, server.model, "-"]  # --url: kind unknown
    code, out, _ = run(capsys, "models", *url_args(server), "--json")
    (entry,) = json.loads(out)["endpoints"]
    (model,) = entry["models"]
    assert model["id"] == server.model and model["max_model_len"] > 0
    assert row.split()[4] == str(model["max_model_len"])


def test_models_of_an_endpoints_file_know_the_kind(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = endpoints_file(tmp_path, real_entry(server, model=server.model, kind="chat"))
    code, out, _ = run(capsys, "models", "--endpoints", path)
    assert code == 0 and out.splitlines()[1].split()[2:4] == [server.model, "chat"]


def test_health(server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "health", *url_args(server), "--json")
    assert code == 0
    document = json.loads(out)
    (entry,) = document["endpoints"]
    assert document["ok"] is True and entry["health_status"] == 200
    assert entry["version"] and entry["latency_ms"] >= 0 and entry["error"] is None
    path = endpoints_file(tmp_path, real_entry(server), {"name": "gone", "base_url": dead_url()})
    code, out, err = run(capsys, "health", "--endpoints", path)
    assert code == 3
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["real", server.base_url, "ok", "200", entry["version"]]
    assert lines[2].split()[2] == "ConnectionRefused"
    assert err.startswith("llf-client: error: gone (")


def test_smoke_passes(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "smoke", *url_args(server), "--model", server.model)
    assert code == 0, out
    assert out.splitlines()[-1] == "smoke: 1 endpoint(s), 5 checks, all passed"
    assert "contains 'Paris'" in out


def test_smoke_fails_on_a_wrong_expectation(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "smoke", *url_args(server), "--expect", "Berlin", "--json")
    assert code == 1
    document = json.loads(out)
    assert document["ok"] is False
    checks = {c["check"]: c for c in document["endpoints"][0]["checks"]}
    assert checks["answer"]["status"] == "fail"
    assert checks["answer"]["detail"].startswith("lacks 'Berlin'")
    assert checks["health"]["status"] == checks["models"]["status"] == "pass"
    assert checks["stream"]["status"] == "pass"


def test_smoke_an_inventory(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    host, port = server.root_url.split("://", 1)[1].rsplit(":", 1)
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    llf_servers:\n      hosts:\n"
        f"        server1:\n          ansible_host: {host}\n          llf_server_port: {port}\n"
    )
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "group_vars" / "all" / "llf.yml").write_text(
        f"llf_smoke_expected_model: {server.model}\n"
        + (f"llf_server_api_key: {server.api_key}\n" if server.api_key else "")
    )
    code, out, _ = run(capsys, "smoke", "--inventory", str(tmp_path))
    assert code == 0, out
    assert [line.split()[:3] for line in out.splitlines()[1:3]] == [
        ["server1", "health", "PASS"],
        ["server1", "models", "PASS"],
    ]


# --- chat -----------------------------------------------------------------------------


def interrupting_writer(after: int) -> Callable[[Any], Callable[[str], None]]:
    """A stand-in for cli._write whose writer raises Ctrl-C at the given token."""

    def make(out: Any) -> Callable[[str], None]:
        count = 0

        def write(text: str) -> None:
            nonlocal count
            count += 1
            if count >= after:
                raise KeyboardInterrupt
            out.write(text)

        return write

    return make


def test_chat_in_process(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [QUESTION, "/info", "/clear", "/system Be brief.", "/info", "exit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = run(capsys, "chat", *url_args(server), *DETERMINISTIC)
    assert code == 0
    assert "Paris" in out
    assert f"[served by url ({server.base_url})]" in err
    assert "messages: 2" in out and "messages: 0" in out
    assert f"last reply: served by url ({server.base_url}), model {server.model}" in out
    assert "system prompt: Be brief." in out


def test_ctrl_c_stops_the_reply_not_the_chat(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_write", interrupting_writer(after=3))
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\nhello\n/info\n"))
    code, out, err = run(capsys, "chat", *url_args(server), *DETERMINISTIC)
    assert code == 0
    assert err.count("[reply stopped]") == 2
    assert "messages: 4" in out  # both questions and both partial replies kept


def llf_client_command() -> list[str]:
    script = Path(sys.executable).parent / "llf-client"
    if script.exists():
        return [str(script)]
    found = shutil.which("llf-client")
    return [found] if found else [sys.executable, "-m", "llf_client"]


def spawn_chat(server: Server, tmp_path: Path, *extra: str) -> pexpect.spawn:
    env = dict(os.environ, LLF_BASE_URL=server.base_url, XDG_CONFIG_HOME=str(tmp_path), TERM="dumb")
    for name in ("LLF_API_KEY", "OPENAI_API_KEY", "LLF_CONFIG", "LLF_MODEL"):
        env.pop(name, None)
    if server.api_key:
        env["LLF_API_KEY"] = server.api_key
    command, *args = llf_client_command()
    child = pexpect.spawn(
        command,
        [*args, "chat", *extra],
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.expect_exact("/help for commands; exit or Ctrl-D to leave.")
    child.expect_exact("> ")
    return child


def test_chat_in_a_terminal(server: Server, tmp_path: Path) -> None:
    child = spawn_chat(
        server, tmp_path, "--system", SYSTEM, "--temperature", "0", "--max-tokens", "300"
    )
    child.sendline(QUESTION)
    child.expect_exact(f"[served by url ({server.base_url})]")
    assert "Paris" in (child.before or "")
    child.expect_exact("> ")

    # Ctrl-C while a reply streams; a reply that ends (EOS) before the interrupt lands is a
    # whole turn, and the next prompt tries again
    turns = 1
    # counting keeps a small model going to the token limit; the stories are the fallback
    for topic in ("counting from 1 to 500, one number per line", "counting from 500 down to 1, one number per line",
                  "a dragon and a knight", "a ship lost at sea", "a city under the mountains",
                  "a robot who learns to paint", "two rival bakers in Paris", "a long winter in a lighthouse"):
        child.sendline(f"Write a very long story about {topic}.")
        child.expect_exact(f"{topic}.\r\n")  # the echo; then the reply starts streaming
        child.expect(r"\w+\W+\w+")
        child.sendintr()
        stopped = child.expect_exact(["[reply stopped]", "[served by"]) == 0
        child.expect_exact("> ")
        turns += 1
        if stopped:
            break
    assert stopped, "every reply ended before Ctrl-C reached it"

    child.sendline("/info")
    child.expect_exact(f"messages: {2 * turns}")
    child.expect_exact("> ")
    child.sendline("/clear")
    child.expect_exact("conversation cleared")
    child.expect_exact("> ")
    child.sendline("/system You are a pirate.")
    child.expect_exact("system prompt: You are a pirate.")
    child.expect_exact("> ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (tmp_path / "llf" / "chat_history").read_text()
    assert QUESTION in history and "/clear" in history


def test_chat_leaves_on_ctrl_d(server: Server, tmp_path: Path) -> None:
    child = spawn_chat(server, tmp_path)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
