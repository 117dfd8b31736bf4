"""`llf-client top` against the real server (the `server` fixture), about 30 s.

- In a real terminal (pexpect): while requests run, the DONE and OUT/s figures move
  between refreshes; `q` leaves with exit code 0.
- `top --once --json` read around a few sequential requests: its TTFT p50 (from the
  server's histogram delta) agrees within 20 % with the p50 measured client-side.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pexpect
import pytest

from llf_client.client import EndpointClient, GenParams, build_messages
from llf_client.config import Endpoint
from tests.conftest import Server, record_figure
from tests.e2e.test_10_client import llf_client_command

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PARAMS = GenParams(temperature=0, max_tokens=16)


def top_env(server: Server, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, LLF_BASE_URL=server.base_url, XDG_CONFIG_HOME=str(tmp_path), TERM="xterm")
    for name in ("LLF_API_KEY", "OPENAI_API_KEY", "LLF_CONFIG", "LLF_MODEL"):
        env.pop(name, None)
    if server.api_key:
        env["LLF_API_KEY"] = server.api_key
    return env


def ask(server: Server, count: int, prompt: str = "Name three colors.") -> list[float]:
    """`count` streamed chat completions one after the other; their client-side TTFTs."""
    client = EndpointClient(Endpoint("real", server.base_url, api_key=server.api_key), timeout=60)
    ttfts = []
    for _ in range(count):
        reply = client.chat(server.model, build_messages(prompt), PARAMS, stream=True)
        assert reply.ttft_s is not None
        ttfts.append(reply.ttft_s)
    return ttfts


def rows(text: str) -> list[list[str]]:
    """The `url` rows of every refresh seen so far, split into cells."""
    clean = ANSI.sub("", text).replace("\r", "\n")
    return [line.split() for line in clean.splitlines() if line.startswith("url ")]


def test_top_in_a_terminal_moves_and_q_quits(server: Server, tmp_path: Path) -> None:
    command, *args = llf_client_command()
    child = pexpect.spawn(
        command,
        [*args, "top", "--interval", "1"],
        env=top_env(server, tmp_path),
        encoding="utf-8",
        timeout=20,
        dimensions=(24, 120),
    )
    seen = ""
    try:
        child.expect("TTFT50")
        load = threading.Thread(target=ask, args=(server, 6))
        load.start()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            try:
                child.expect(r"\n", timeout=2)
            except pexpect.TIMEOUT:
                pass
            seen += (child.before or "") + "\n"
            figures = {(r[9], r[10]) for r in rows(seen) if len(r) == 12 and r[1] == "ok"}  # OUT/s, DONE
            done = max((int(d) for _, d in figures if d != "-"), default=0)
            if not load.is_alive() and len(figures) >= 3 and done >= 6:
                break
        load.join(timeout=60)
        table = [r for r in rows(seen) if len(r) == 12]
        assert table, f"no rows seen in:\n{ANSI.sub('', seen)[-2000:]}"
        assert all(r[1] == "ok" for r in table)
        moving = {(r[9], r[10]) for r in table}
        assert len(moving) >= 3, f"the figures did not move: {sorted(moving)}"
        assert max(int(r[10]) for r in table if r[10] != "-") >= 6  # DONE counts our requests
        assert max(float(r[9]) for r in table if r[9] != "-") > 0  # tokens came out
        child.send("q")
        child.expect(pexpect.EOF, timeout=10)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_top_once_json_ttft_agrees_with_the_client(server: Server, tmp_path: Path) -> None:
    ask(server, 1)  # warm
    command = [*llf_client_command(), "top", "--once", "--json", "--interval", "15"]
    top = subprocess.Popen(command, env=top_env(server, tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(5.0)  # top starts and reads once before the requests; the second reading comes after
        ttfts = ask(server, 8)
        out, _ = top.communicate(timeout=30)
    finally:
        if top.poll() is None:
            top.kill()
    assert top.returncode == 0
    (endpoint,) = json.loads(out)["endpoints"]
    assert endpoint["requests_finished"] >= 8  # ours (and whatever else ran meanwhile)
    client_p50_ms = statistics.median(ttfts) * 1000
    server_p50_ms = endpoint["ttft_p50_ms"]
    record_figure(f"top TTFT p50: {server_p50_ms} ms from /metrics, {client_p50_ms:.1f} ms client-side")
    assert server_p50_ms == pytest.approx(client_p50_ms, rel=0.2), (server_p50_ms, client_p50_ms, ttfts)
