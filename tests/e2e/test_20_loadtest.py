"""End-to-end: short load tests against the real vLLM server, judged by SLO files.

Two runs of 2 users (about 35 s in all): one with targets the server meets (exit 0),
one with targets no server can meet (exit 1); each leaves the full report behind. When
the deployed endpoints include an embedding model (an endpoints-file entry with
``kind: embedding``, or LLF_TEST_EMBED_BASE_URL and LLF_TEST_EMBED_MODEL), a 2-user
``embeddings`` run of 12 s too; it is skipped otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llf_client.config import load_endpoints_file
from tests.conftest import Server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VLLM_KEYS = (
    "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput", "duration",
    "max_output_tokens_per_s", "max_concurrent_requests", "model_id", "request_rate",
    "burstiness", "max_concurrency",
)  # fmt: skip
STATS = ("mean", "median", "std", "p50", "p90", "p95", "p99")
PASSING_SLO = """\
min_samples: 5
targets:
  - ttft_content p50 <= 5 s
  - tpot mean <= 1 s
  - itl p99 <= 2 s
  - error_rate <= 5 %
validity:
  client_cpu_percent: 80
"""


EMBEDDINGS_SLO = """\
min_samples: 5
targets:
  - error_rate <= 5 %
embeddings:
  targets:
    - e2el p50 <= 5 s
    - error_rate <= 5 %
    - request_throughput >= 0.5 req/s
validity:
  client_cpu_percent: 80
"""


@pytest.fixture(scope="module")
def embedding_server(request: pytest.FixtureRequest) -> Server:
    """The deployed embedding model: LLF_TEST_EMBED_BASE_URL (and _MODEL, _API_KEY), else
    the first ``kind: embedding`` entry of the deploy's endpoints file; else skip."""
    url = os.environ.get("LLF_TEST_EMBED_BASE_URL")
    if url:
        model = os.environ.get("LLF_TEST_EMBED_MODEL", "all-minilm-l6-v2")
        return Server(base_url=url.rstrip("/"), model=model, api_key=os.environ.get("LLF_TEST_EMBED_API_KEY") or None)
    if os.environ.get("LLF_TEST_BASE_URL"):
        pytest.skip("no embedding model: set LLF_TEST_EMBED_BASE_URL to test one beside LLF_TEST_BASE_URL")
    endpoints_file = request.getfixturevalue("deployment").endpoints_file
    for entry in load_endpoints_file(endpoints_file):  # llf_client's reader, the one reader of the file
        if entry.kind == "embedding" and entry.model:
            return Server(base_url=entry.base_url, model=entry.model, api_key=entry.api_key)
    pytest.skip("the deployed endpoints include no embedding model (kind: embedding)")


def run_bounded(cmd: list[str], timeout: float, **kwargs: Any) -> tuple[int, str]:
    """Run the CLI; past ``timeout``, SIGTERM it (it then stops its locust) and fail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"the load test did not end within {timeout} s:\n{output}")
    return proc.returncode, output


def load_test(server: Server, out: Path, slo: Path, duration: str, warmup: str, scenario: str = "short") -> int:
    env = dict(os.environ)
    env.pop("LLF_API_KEY", None)
    if server.api_key:
        env["LLF_API_KEY"] = server.api_key  # from the environment, not the command line
    cmd = [
        sys.executable, "-m", "loadtests", "run",
        "--host", server.base_url, "--model", server.model, "--users", "2",
        "--scenario", scenario, "--duration", duration, "--warmup", warmup,
        "--slo", str(slo), "--out", str(out),
    ]  # fmt: skip
    code, output = run_bounded(cmd, 180, cwd=REPO, env=env)
    out.mkdir(parents=True, exist_ok=True)
    (out / "test-output.txt").write_text(output)
    if server.api_key:
        assert server.api_key not in output
    return code


def check_report(out: Path) -> dict[str, Any]:
    result = json.loads((out / "result.json").read_text())
    for key in VLLM_KEYS:
        assert key in result, key
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in STATS:
            assert f"{stat}_{metric}_ms" in result, f"{stat}_{metric}_ms"
    assert result["completed"] > 0
    assert result["total_output_tokens"] == 32 * result["completed"]  # usage, ignore_eos
    assert result["output_tokens_source"] == {"usage": result["completed"]}
    with (out / "locust_stats.csv").open() as f:
        names = {row["Name"] for row in csv.DictReader(f)}
    assert {"short e2el", "short ttft", "short tpot"} <= names  # our names, our timing
    assert "<html" in (out / "locust.html").read_text()[:2000].lower()
    for png in ("ttft_hist.png", "itl_hist.png", "latency_over_time.png", "throughput_over_time.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    return result


def test_passing_slo_exits_0(server: Server, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(PASSING_SLO)
    out = tmp_path / "pass"
    code = load_test(server, out, slo, duration="15s", warmup="3s")
    assert code == 0, (out / "test-output.txt").read_text()
    result = check_report(out)
    assert result["verdict"] == "PASS"
    assert all(t["status"] == "pass" for t in result["targets"])
    assert result["server"]["ttft"]["count"] > 0  # vLLM's /metrics cross-check
    assert "verdict: PASS (exit 0)" in (out / "summary.txt").read_text()


def test_impossible_slo_exits_1(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "impossible"
    code = load_test(server, out, REPO / "loadtests" / "slo-impossible.yaml", "10s", "2s")
    assert code == 1, (out / "test-output.txt").read_text()
    result = check_report(out)
    assert result["verdict"] == "MISSED"
    statuses = {t["target"]: t["status"] for t in result["targets"]}
    assert statuses["ttft p50 <= 0.001 ms"] == "miss"


def test_embeddings_run_reports_latency_and_rate_only(embedding_server: Server, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(EMBEDDINGS_SLO)
    out = tmp_path / "embeddings"
    code = load_test(embedding_server, out, slo, duration="12s", warmup="2s", scenario="embeddings")
    assert code == 0, (out / "test-output.txt").read_text()
    result = json.loads((out / "result.json").read_text())
    assert result["endpoint_type"] == "openai-embeddings" and result["model_id"] == embedding_server.model
    assert result["completed"] > 0 and result["failed"] == 0
    assert result["total_input_tokens"] > 100 * result["completed"]  # 128 tokens +-10 % per input
    for stat in STATS:
        assert f"{stat}_e2el_ms" in result, f"{stat}_e2el_ms"
    assert not [k for k in result if k.endswith(("_ttft_ms", "_tpot_ms", "_itl_ms")) or "output" in k]
    assert {t["group"] for t in result["targets"]} == {"embeddings"}
    assert all(t["status"] == "pass" for t in result["targets"])
    summary = (out / "summary.txt").read_text()
    assert "embed  e2el" in summary and "ttft" not in summary and "verdict: PASS (exit 0)" in summary
    with (out / "locust_stats.csv").open() as f:
        names = {row["Name"] for row in csv.DictReader(f)}
    assert "embed e2el" in names
    assert (out / "embed_latency_hist.png").read_bytes()[:4] == b"\x89PNG"
