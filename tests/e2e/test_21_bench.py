"""End-to-end: a short ``make bench`` against the real server, about 30 s.

One bench of two steps (1 and 2 users, 5 s each, two repeats, chat only): the report's
shape (table, plots, capacity, host profile, server memory), no baseline yet (a message,
exit 0); ``make bench-save FROM=`` stores it as the baseline, the same run judged again
has no regression (exit 0), and against a baseline made 10 times better it is one (exit 1,
the per-step deltas printed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.e2e.conftest import Harness

pytestmark = pytest.mark.e2e

SLO = """\
min_samples: 3
targets:
  - ttft_content p50 <= 5 s
  - error_rate <= 5 %
validity:
  client_cpu_percent: 90
"""


def test_make_bench_report_baseline_and_regression(server: Server, harness: Harness, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO)
    out, baselines = tmp_path / "bench", tmp_path / "baselines"
    harness.env["LLF_API_KEY"] = server.api_key or ""
    try:
        common = [f"HOST={server.base_url}", f"BASELINES={baselines}", f"SLO={slo}", "EMBED=0"]
        result = harness.make("bench", *common, "LADDER=1,2", "STEP=5s", "REPEATS=2", f"OUT={out}", timeout=300)
        assert result.returncode == 0, result.output[-4000:]
        doc = json.loads((out / "bench.json").read_text())
        key = doc["profile"]["key"]
        assert f"no baseline for host profile {key} in {baselines}" in result.output
        chat = doc["curves"]["chat"]
        assert chat["model"] == server.model
        assert [s["users"] for s in chat["steps"]] == [1, 2]
        for step in chat["steps"]:
            assert len(step["repeats"]) == 2 and step["completed"] > 0
            for figure in ("output_throughput", "total_token_throughput", "p50_ttft_ms", "p95_ttft_ms",
                           "p50_itl_ms", "p95_itl_ms", "mean_e2el_ms"):  # fmt: skip
                assert step["mean"][figure] > 0, figure
        assert chat["capacity_users"] == 2 and [s["slo"] for s in chat["steps"]] == ["pass", "pass"]
        profile = doc["profile"]
        assert profile["local"] and profile["cores"] >= 1 and profile["cpu_model"] != "unknown"
        assert profile["engine_version"] != "unknown" and profile["model"] == server.model
        assert doc["server"]["memory"]["rss_mib"] > 100  # the real engine's processes, found by their port
        for png in ("chat_throughput.png", "chat_latency.png"):
            assert (out / png).read_bytes()[:4] == b"\x89PNG", png
        assert "capacity: 2 concurrent users met every SLO target" in (out / "summary.txt").read_text()
        if server.api_key:
            assert server.api_key not in result.output + (out / "bench.json").read_text()

        saved = harness.make("bench-save", *common, f"FROM={out}", timeout=120)
        assert saved.returncode == 0, saved.output[-3000:]
        assert (baselines / f"{key}.json").is_file()
        same = harness.make("bench", *common, f"FROM={out}", timeout=120)
        assert same.returncode == 0 and "no regression against the baseline" in same.output, same.output[-3000:]

        # a baseline 10 times faster than this run: a regression, with the per-step deltas (a
        # smaller change can sit inside the noise band of two 5-second repeats: a CI run's
        # throughput repeats at 2 users were 81 and 30 tok/s, a band of 67 %)
        base = json.loads((baselines / f"{key}.json").read_text())
        for step in base["curves"]["chat"]["steps"]:
            step["mean"]["output_throughput"] *= 10
        (baselines / f"{key}.json").write_text(json.dumps(base))
        worse = harness.make("bench", *common, f"FROM={out}", timeout=120)
        # the bench exits 1, which make reports as its own failure (exit 2, "Error 1")
        assert worse.returncode == 2 and "bench] Error 1" in worse.output, worse.output[-3000:]
        assert "REGRESSION against the baseline" in worse.output
        assert "output tok/s" in worse.output and "-90.0%" in worse.output  # 1 / 10 - 1
    finally:
        harness.env.pop("LLF_API_KEY", None)
