"""``python -m loadtests bench``: the regression verdict on synthetic runs, the report, the
baselines, the host profile and the bare vLLM server (a fake one) of ``--vs``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from loadtests import baseline as bl
from loadtests import bench, cli, hostinfo
from loadtests.bare import BareServer, Engine, engine_from_cmdline
from loadtests.collect import RecordWriter
from loadtests.errors import UsageError
from loadtests.metrics import Sample, summarize
from tests.fakes.fake_sse import MODEL, FakeSSEServer

SLO = """\
min_samples: 5
targets:
  - ttft p50 <= 150 ms
  - error_rate <= 5 %
"""


# -- the verdict on synthetic runs ------------------------------------------------------


def run_doc(steps: dict[int, list[dict[str, float]]], key: str = "abc") -> dict[str, Any]:
    """A bench document whose chat curve has these repeats per step."""
    return {
        "kind": "llf-bench",
        "date": "2025-01-01T00:00:00Z",
        "profile": {"key": key},
        "curves": {
            "chat": {
                "steps": [
                    {"users": u, "repeats": reps, **bl.step_figures("chat", reps)} for u, reps in steps.items()
                ]
            }
        },
    }


def reps(throughput: list[float], ttft: list[float]) -> list[dict[str, float]]:
    return [{"output_throughput": t, "p95_ttft_ms": f} for t, f in zip(throughput, ttft, strict=True)]


BASE = run_doc({1: reps([100.0, 101.0], [100.0, 101.0]), 2: reps([180.0, 182.0], [150.0, 152.0])})


def verdicts(current: dict[str, Any], min_effect: float = 5.0) -> dict[tuple[int, str], str]:
    return {(d.users, d.figure): d.verdict for d in bl.compare(current, BASE, min_effect)}


def test_step_figures_mean_and_noise() -> None:
    figures = bl.step_figures("chat", reps([90.0, 110.0], [100.0, 100.0]))
    assert figures["mean"]["output_throughput"] == 100.0
    assert figures["noise_pct"]["output_throughput"] == pytest.approx(20.0)  # (110 - 90) / 100
    assert figures["noise_pct"]["p95_ttft_ms"] == 0.0
    assert figures["mean"]["p50_itl_ms"] is None  # not measured: no figure, no verdict


def test_clear_regression() -> None:
    now = run_doc({1: reps([100.0, 100.5], [100.0, 101.0]), 2: reps([120.0, 121.0], [200.0, 203.0])})
    v = verdicts(now)
    assert v[(2, "output_throughput")] == bl.REGRESSION  # -33 %, noise about 1 %
    assert v[(2, "p95_ttft_ms")] == bl.REGRESSION  # +33 %
    assert v[(1, "output_throughput")] == bl.NOISE
    deltas = bl.compare(now, BASE, 5.0)
    assert bl.regressed(deltas)
    table = "\n".join(bl.delta_table(deltas))
    assert "REGRESSION" in table and "-33.4%" in table


def test_a_drop_within_the_noise_of_the_repeats_is_no_regression() -> None:
    # -12 % on average, but the repeats themselves spread over 30 %
    now = run_doc({2: reps([130.0, 190.0], [150.0, 151.0])})
    assert verdicts(now)[(2, "output_throughput")] == bl.NOISE
    assert not bl.regressed(bl.compare(now, BASE, 5.0))


def test_a_change_within_the_two_runs_noise_together_is_no_regression() -> None:
    # measured: the same deploy benched twice, TTFT p50 at 8 streams +33 % with spreads of
    # 25 % (baseline) and 10 % (now): the two runs's own repeats differ that much
    base = run_doc({8: reps([190.0, 194.0], [285.0, 365.0])})
    now = run_doc({8: reps([186.0, 175.0], [412.0, 454.0])})
    deltas = {(d.users, d.figure): d for d in bl.compare(now, base, 5.0)}
    assert deltas[(8, "p95_ttft_ms")].verdict == bl.NOISE
    assert deltas[(8, "p95_ttft_ms")].band_pct == pytest.approx(24.6 + 9.7, abs=0.1)
    # twice as slow is still one
    slow = run_doc({8: reps([96.0, 95.0], [812.0, 850.0])})
    assert bl.regressed(bl.compare(slow, base, 5.0))


def test_a_drop_below_the_minimum_effect_is_no_regression() -> None:
    now = run_doc({2: reps([176.0, 176.0], [155.0, 155.0])})  # -3 % and +2 %, no noise at all
    assert set(verdicts(now).values()) == {bl.NOISE}
    assert verdicts(now, min_effect=1.0)[(2, "output_throughput")] == bl.REGRESSION


def test_improvement() -> None:
    now = run_doc({1: reps([150.0, 151.0], [60.0, 61.0])})
    assert set(verdicts(now).values()) == {bl.IMPROVEMENT}
    assert not bl.regressed(bl.compare(now, BASE, 5.0))


def test_no_baseline_is_a_message_not_a_failure(tmp_path: Path) -> None:
    doc = run_doc({1: reps([1.0], [1.0])}, key="nokey")
    assert bench.judge(doc, tmp_path / "baselines", 5.0) == 0
    assert doc["comparison"]["message"].startswith("no baseline for host profile nokey in ")
    assert "make bench-save" in doc["comparison"]["message"]


def test_judge_against_a_stored_baseline(tmp_path: Path) -> None:
    path = bl.save_baseline(tmp_path, BASE)
    assert path == tmp_path / "abc.json"
    now = run_doc({2: reps([120.0, 121.0], [150.0, 150.0])})
    assert bench.judge(now, tmp_path, 5.0) == 1
    assert now["comparison"]["message"].startswith(f"REGRESSION against the baseline {path}")
    assert bench.judge(run_doc({8: reps([1.0], [1.0])}), tmp_path, 5.0) == 0  # no step in common


def test_an_unreadable_baseline_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "abc.json").write_text("{not json")
    with pytest.raises(UsageError, match="delete it or store a new one"):
        bl.load_baseline(tmp_path, "abc")
    (tmp_path / "abc.json").write_text("{}")
    with pytest.raises(UsageError, match="is not a bench result"):
        bl.load_baseline(tmp_path, "abc")


# -- a whole bench, the load tests' runs replaced by synthetic results --------------------


def fake_runner(slow: float = 1.0) -> bench.RunOne:
    """Writes what ``run`` writes (run-config.json, result.json, raw samples), ``slow`` x latency."""

    def runner(argv: list[str], env: dict[str, str], log: Path) -> int:
        args = cli.build_parser().parse_args(argv)
        config, _ = cli.make_config(args, env)
        assert config.shape == "step" and args.scenario in ("short", "embeddings")
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "run-config.json")
        writer = RecordWriter(out / "raw", "local")
        stages, t = [], time.time()
        for users in config.step_users:
            samples = []
            for i in range(10 * users):
                s = Sample(start=t + i * 0.01, success=True, ttft=0.05 * users * slow, e2el=0.5 * slow,
                           itl=[0.02 * slow] * 3, output_tokens=4, prompt_tokens=10, kind=args.scenario)  # fmt: skip
                writer.sample(s)
                samples.append(s)
            stages.append({"stage": f"step-{users}", "users": users, "start": t, "end": t + 1.0,
                           **summarize(samples, 1.0), "checks": []})  # fmt: skip
            t += 1.0
        writer.close()
        doc = {"model_id": config.model, "host": config.host, "stages": stages}
        (out / "result.json").write_text(json.dumps(doc))
        log.write_text("ran\n")
        return 0

    return runner


def bench_args(*extra: str) -> Any:
    return cli.build_parser().parse_args(["bench", "--ladder", "1,2,4", "--step", "5s", "--repeats", "2", *extra])


def test_bench_report_save_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO)
    baselines = tmp_path / "baselines"
    with FakeSSEServer() as fake:
        common = ["--host", fake.root_url, "--slo", str(slo), "--baselines", str(baselines), "--seed", "7"]
        first = tmp_path / "first"
        assert bench.bench(bench_args(*common, "--out", str(first)), {}, fake_runner()) == 0
        out = capsys.readouterr().out
        assert f"no baseline for host profile {json.loads((first / 'bench.json').read_text())['profile']['key']}" in out
        doc = json.loads((first / "bench.json").read_text())
        chat = doc["curves"]["chat"]
        assert [s["users"] for s in chat["steps"]] == [1, 2, 4]
        assert [s["slo"] for s in chat["steps"]] == ["pass", "pass", "miss"]  # TTFT 50, 100, 200... 200 ms
        assert chat["capacity_users"] == 2 and chat["model"] == MODEL
        assert len(chat["steps"][0]["repeats"]) == 2
        assert chat["steps"][2]["mean"]["p50_ttft_ms"] == pytest.approx(200.0)
        assert "embeddings" not in doc["curves"]  # --host without --embed-host
        assert doc["profile"]["local"] and doc["profile"]["cores"] == os.cpu_count()
        assert doc["server"]["memory"]["rss_mib"] > 0  # this test process listens on the port
        assert doc["settings"]["ladder"] == [1, 2, 4] and doc["settings"]["seed"] == 7
        for png in ("chat_throughput.png", "chat_latency.png"):
            assert (first / png).read_bytes()[:4] == b"\x89PNG", png
        summary = (first / "summary.txt").read_text()
        assert "capacity: 2 concurrent users met every SLO target" in summary

        # bench-save of that run, then the same run judged: no regression
        assert bench.bench(bench_args(*common, "--from", str(first), "--save"), {}) == 0
        assert (baselines / f"{doc['profile']['key']}.json").is_file()
        assert "stored as the baseline of host profile" in capsys.readouterr().out
        assert bench.bench(bench_args(*common, "--from", str(first)), {}) == 0
        assert "no regression against the baseline" in capsys.readouterr().out

        # a slower server: exit 1 and the per-step deltas
        second = tmp_path / "second"
        assert bench.bench(bench_args(*common, "--out", str(second)), {}, fake_runner(slow=1.5)) == 1
        out = capsys.readouterr().out
        assert "REGRESSION against the baseline" in out
        assert "TTFT p50 ms" in out and "+50.0%" in out


def test_bench_embeddings_curve_from_the_endpoints_file(tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO + "embeddings:\n  targets:\n    - e2el p50 <= 1 s\n")
    with FakeSSEServer() as fake:
        endpoints = tmp_path / "endpoints.yml"
        endpoints.write_text(
            f"endpoints:\n  - {{name: chat, base_url: '{fake.base_url}', model: {MODEL}}}\n"
            f"  - {{name: emb, base_url: '{fake.base_url}', model: fake-embed, kind: embedding}}\n"
        )
        env = {"LLF_CONFIG": str(endpoints)}
        args = bench_args("--slo", str(slo), "--baselines", str(tmp_path / "b"), "--out", str(tmp_path / "o"))
        assert bench.bench(args, env, fake_runner()) == 0
    doc = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert set(doc["curves"]) == {"chat", "embeddings"}
    assert doc["curves"]["embeddings"]["capacity_users"] == 4
    assert (tmp_path / "o" / "embeddings.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--step", "2s"], "give at least 5 s per step"),
        (["--vs-args=--x"], "--vs-args applies to --vs"),
        (["--from", "/nonexistent"], "no readable bench.json"),
        (["--ladder", "4,2"], "must rise strictly"),
        (["--ladder", "a"], "use rising concurrencies"),
    ],
)
def test_bench_usage_errors_exit_2(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--host", "http://127.0.0.1:9", "--step", "5s", *extra]
    if extra[0] == "--step":
        argv = ["bench", "--host", "http://127.0.0.1:9", *extra]
    assert cli.main(argv, env={}) == 2
    assert message in capsys.readouterr().err


def test_ratios_and_the_vs_report(tmp_path: Path) -> None:
    ours = run_doc({1: reps([100.0], [100.0]), 2: reps([200.0], [100.0])})["curves"]
    theirs = run_doc({1: reps([50.0], [200.0])})["curves"]
    rows = bench.ratios(ours, theirs)["chat"]
    assert rows == [{"users": 1, **{k: None for k, _, _ in bl.FIGURES["chat"]}, "output_throughput": 2.0,
                     "p95_ttft_ms": 0.5}]  # fmt: skip
    for data in (*ours.values(), *theirs.values()):
        data.update(model=MODEL, host="h", capacity_users=1)
        for s in data["steps"]:
            s.update(slo="pass", completed=1)
    doc = {
        "date": "d", "settings": {"ladder": [1, 2], "step_seconds": 5.0, "repeats": 1},
        "profile": {"key": "k", "cpu_model": "cpu", "cores": 2, "memory_gib": 8, "gpu": "none",
                    "engine_version": "0.32.0", "model": MODEL},
        "server": {"memory": "unknown", "startup_seconds": None, "uptime_seconds": None},
        "curves": ours,
        "vs": {"name": "vllm-defaults", "command": ["vllm serve", "/m"],
               "server": {"memory": {"rss_mib": 900.0, "pss_mib": 800.0, "processes": 3}, "startup_seconds": 42.0,
                          "started_at": 1_800_000_000.0, "uptime_seconds": 60.0},
               "curves": theirs, "ratios": {"chat": rows}},
    }  # fmt: skip
    text = bench.write_report(tmp_path, doc)
    assert "ratio LLF / vllm-defaults (chat):" in text
    assert "memory unknown (not on this machine); start time unknown" in text
    assert ("memory RSS 900 MiB, PSS 800 MiB over 3 processes; started in 42.0 s; "
            "running since 2027-01-15T08:00:00Z (up 60 s)") in text
    assert (tmp_path / "chat_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_an_inconclusive_step_that_ends_the_capacity_says_what_to_change() -> None:
    data = run_doc({1: reps([100.0], [100.0]), 2: reps([200.0], [100.0])})["curves"]["chat"]
    data.update(model=MODEL, host="h", capacity_users=0)
    for s, verdict in zip(data["steps"], ["inconclusive", "pass"], strict=True):
        s.update(slo=verdict, completed=1)
    lines = bench.curve_table("chat", data)
    assert lines[-2] == "capacity: 0 concurrent users met every SLO target"
    assert lines[-1].startswith("  inconclusive at 1 users (too few samples") and "REPEATS" in lines[-1]
    data["steps"][0]["slo"] = "pass"
    assert bench.curve_table("chat", data)[-1].startswith("capacity:")


# -- host profile and the server's processes ---------------------------------------------


def test_cpu_profile_and_key(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor : 0\nmodel name : Fake CPU @ 2GHz\nflags : sse2 avx2 fpu\n" * 2)
    (tmp_path / "meminfo").write_text("MemTotal:       24524400 kB\nMemFree: 1 kB\n")
    profile = hostinfo.cpu_profile(tmp_path)
    assert profile["cpu_model"] == "Fake CPU @ 2GHz"
    assert profile["cpu_flags"] == "avx2 fpu sse2" and profile["memory_gib"] == 23
    key = hostinfo.profile_key({**profile, "model": "m", "engine_version": "1"})
    assert key == hostinfo.profile_key({**profile, "model": "m", "engine_version": "2"})  # versions not keyed
    assert key != hostinfo.profile_key({**profile, "model": "other"})
    assert hostinfo.cpu_profile(tmp_path / "none")["cpu_model"] == "unknown"


def test_gpu_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostinfo.shutil, "which", lambda name: None)
    assert hostinfo.gpu_profile() == "none"
    monkeypatch.setattr(hostinfo.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    done = subprocess.CompletedProcess([], 0, stdout="NVIDIA L4, 23034 MiB, 550.1\n")
    assert hostinfo.gpu_profile(run=lambda *a, **k: done) == "NVIDIA L4, 23034 MiB, 550.1"
    assert hostinfo.gpu_profile(run=lambda *a, **k: subprocess.CompletedProcess([], 9, stdout="")) == "unknown"


def test_a_remote_server_has_an_unknown_machine() -> None:
    with FakeSSEServer() as fake:
        remote = fake.root_url.replace("127.0.0.1", "localhost.invalid")
        assert not hostinfo.is_local(remote)
        assert hostinfo.is_local(fake.root_url)
        profile = hostinfo.host_profile(fake.root_url, None, MODEL)
    assert profile["engine_version"] == "unknown"  # the fake has no /version
    assert profile["server"] == "this machine"


def test_the_listener_its_process_tree_and_memory() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert hostinfo.listener_pid(port) == os.getpid()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert child.pid in hostinfo.process_tree(os.getpid())
        mem = hostinfo.memory([os.getpid(), child.pid])
        assert mem["processes"] == 2 and mem["rss_mib"] > mem["pss_mib"] > 0
        started = hostinfo.process_started(child.pid)
        assert started is not None and abs(started - time.time()) < 60
    finally:
        child.kill()
        child.wait()
    assert hostinfo.listener_pid(1) is None


# -- the bare vLLM server -------------------------------------------------------------------


def test_engine_from_the_deployed_command_line() -> None:
    argv = ["/opt/llf/engines/v/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--config", "/etc/llf/x.yaml"]
    engine = engine_from_cmdline(argv, read_config=lambda path: {"model": "/m/model", "served-model-name": "smol"})
    assert engine == Engine("/opt/llf/engines/v/bin/python", "/m/model", "smol")
    serve = engine_from_cmdline(["/e/bin/vllm", "serve", "/m2", "--port", "8000"])
    assert serve == Engine("/e/bin/python", "/m2", "/m2")
    with pytest.raises(UsageError, match="not vLLM"):
        engine_from_cmdline(["/usr/bin/python3", "-m", "http.server"])
    with pytest.raises(UsageError, match="names no model"):
        engine_from_cmdline(["/e/bin/python", "-m", "vllm.x"], read_config=lambda path: {})


FAKE_VLLM = """\
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def _ok(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def do_GET(self):
        self._ok()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"])); self._ok()
    def log_message(self, *a):
        pass

port = int(sys.argv[sys.argv.index("--port") + 1])
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bare_server_starts_answers_and_is_stopped(tmp_path: Path) -> None:
    package = tmp_path / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for d in (tmp_path / "vllm", tmp_path / "vllm" / "entrypoints", package):
        (d / "__init__.py").write_text("")
    (package / "api_server.py").write_text(textwrap.dedent(FAKE_VLLM))
    server = BareServer(Engine(sys.executable, "/m", "smol"), free_port(), ["--dtype", "float32"], tmp_path)
    assert server.command()[-2:] == ["--dtype", "float32"]
    assert server.command_line()[:2] == ["vllm serve", "/m"]
    with server:
        seconds = server.start(timeout=30)
        assert 0 < seconds < 30
        with pytest.raises(UsageError, match="already serves something"):
            BareServer(server.engine, server.port, [], tmp_path / "again").start(timeout=5)
        pid = server.pid
    assert server.proc is not None and server.proc.poll() is not None
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_bare_server_that_exits_says_why(tmp_path: Path) -> None:
    server = BareServer(Engine(sys.executable, "/m", "smol"), free_port(), [], tmp_path)  # no vllm module here
    with server, pytest.raises(UsageError, match=r"exited with 1: .*Error.*VS_ARGS"):
        server.start(timeout=30)
