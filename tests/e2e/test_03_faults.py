"""Faults on the local deployment (supervisor where systemd is not PID 1): every vLLM
process killed comes back by itself, a start that cannot succeed fails the deploy in
under a minute naming the cause, and a warm restart reuses the compile cache.
(A taken port fails the same way, `Cause: OSError: [Errno 98] Address already in use`;
checked by hand, left out of `make test` for its two extra restarts.)

The same kills under systemd run on the test hosts (test_95_lab.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Server, record_figure
from tests.e2e.conftest import (
    MODEL,
    PGREP,
    SUPERVISORCTL,
    VLLM_PROCESSES,
    VLLM_WORKER,
    Deployment,
    Harness,
    oldest_pid,
    server_answers,
)

pytestmark = pytest.mark.e2e

LOG = Path("/var/log/llf/llf-vllm.log")


def answers(server: Server) -> bool:
    return server_answers(server.base_url, server.api_key, server.model)


def wait_answering(server: Server, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if answers(server):
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"the server did not answer again within {timeout:.0f} s")


@pytest.fixture(scope="module")
def supervised(deployment: Deployment) -> Deployment:
    if os.path.exists("/run/systemd/system"):
        pytest.skip("systemd is PID 1 here: these faults run under systemd on the test hosts")
    assert answers(deployment.server)
    return deployment


@pytest.mark.parametrize("name", list(VLLM_PROCESSES))
def test_a_killed_vllm_process_comes_back_by_itself(supervised: Deployment, name: str) -> None:
    pid = oldest_pid(VLLM_PROCESSES[name])
    assert pid, f"no {name} process found"
    os.kill(pid, 9)
    killed = time.monotonic()
    # it goes down (the API server exits 0 when its engine dies) ...
    while answers(supervised.server) and time.monotonic() - killed < 60:
        time.sleep(0.2)
    # ... and answers again with no one doing anything
    wait_answering(supervised.server)
    seconds = time.monotonic() - killed
    assert oldest_pid(VLLM_PROCESSES["API server"]) != pid
    record_figure(f"supervisor: kill -9 of {name} until answering again: {seconds:.0f} s")
    # nothing of the killed server is left behind
    for process, pattern in VLLM_PROCESSES.items():
        count = subprocess.run([*PGREP[:-1], "-c", "-f", pattern], capture_output=True, text=True,
                               check=False).stdout.strip()
        assert count == "1", f"{count} {process} processes run after the restart"
    # the model's worker runs inside the engine core (llf_server_inprocess_worker: auto)
    workers = subprocess.run([*PGREP[:-1], "-c", "-f", VLLM_WORKER], capture_output=True, text=True, check=False)
    assert workers.stdout.strip() == "0", f"{workers.stdout.strip()} worker processes beside the engine core"


def test_a_deliberate_stop_stays_stopped_a_broken_start_fails_fast_and_a_warm_start_hits_the_cache(
    supervised: Deployment, harness: Harness
) -> None:
    """One restart serves three checks: a stop nobody undoes, a start that cannot
    succeed failing the deploy within a minute, and the good settings' warm start."""
    subprocess.run([*SUPERVISORCTL, "stop", "llf-vllm"], check=True, capture_output=True, timeout=120)
    time.sleep(5)
    assert not answers(supervised.server)
    assert "STOPPED" in subprocess.run([*SUPERVISORCTL, "status", "llf-vllm"], capture_output=True, text=True,
                                       check=False).stdout

    bad_arg = "ARGS=-e '{\"llf_server_extra_args\": {\"no-such-engine-option\": 1}}'"
    bad = harness.make("install", f"MODEL={MODEL}", bad_arg, timeout=900)
    # the good settings bring it back, with a warm start, before anything about the bad
    # deploy is judged: the tests after this one need the server whatever happened here
    started = time.monotonic()
    good = harness.make("install", f"MODEL={MODEL}", timeout=900)
    seconds = time.monotonic() - started

    assert bad.returncode != 0
    assert "did not answer" in bad.output and "Last 50 lines of its log" in bad.output, bad.output[-4000:]
    assert re.search(r"Cause: .*no.such.engine.option", bad.output), bad.output[-4000:]
    waited = re.search(r"Wait for /health to answer 200.*?\n(.*?)\n(?:TASK|RUNNING|fatal)", bad.output, re.S)
    timings = [float(t) for t in re.findall(r"(?:started again|stopped trying) after (\d+) s", bad.output)]
    assert timings and timings[0] < 60, waited.group(0) if waited else bad.output[-3000:]
    record_figure(f"supervisor: deploy with a bad engine argument failed {timings[0]:.0f} s into the start")

    assert good.returncode == 0, good.output[-4000:]
    assert answers(supervised.server)
    record_figure(f"supervisor: deploy with the good settings again until answering (warm start): {seconds:.0f} s")
    whole_log = LOG.read_text(encoding="utf-8", errors="replace")
    assert "finalize_loading" not in whole_log
    # what each step of a start costs, cold (the deploy's first start) and warm (this one)
    steps = {
        "weights": r"Loading weights took ([0-9.]+)",
        "engine init (compile, KV cache, warm-up)":
            r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+)",
    }
    for step, pattern in steps.items():
        found = re.findall(pattern, whole_log)
        if found:
            record_figure(f"supervisor: {step}: cold {float(found[0]):.1f} s, warm {float(found[-1]):.1f} s")
    # Inductor's cache in the state directory was hit: this start compiled nothing new
    cache = Path("/var/lib/llf/server/cache/inductor")
    assert cache.is_dir() and any(cache.iterdir())
    fresh = [path for path in cache.rglob("*.so") if path.stat().st_mtime > time.time() - seconds - 5]
    assert not fresh, f"the warm start compiled again: {fresh[:3]}"
