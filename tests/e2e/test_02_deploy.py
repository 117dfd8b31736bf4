"""`make install` on this machine: a real vLLM server that answers, idempotent, verified."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from loadtests import hostinfo
from tests.conftest import record_figure
from tests.e2e.conftest import MODEL, VLLM_PROCESSES, Deployment, Harness, oldest_pid, recap

pytestmark = pytest.mark.e2e

MODEL_DIR = Path("/var/lib/llf/models") / MODEL
SECRETS = Path("/etc/llf/secrets.env")
INDUCTOR_CACHE = Path("/var/lib/llf/server/cache/inductor")


def test_install_prints_endpoint_model_time_and_example(deployment: Deployment) -> None:
    out = deployment.install.output
    assert f"Endpoint:     {deployment.server.base_url}" in out
    assert f"Model:        {MODEL} ({MODEL}, verified)" in out
    assert "Deploy took:" in out and "make install took" in out
    assert 'llf-client ask "What is the capital of France?"' in out
    assert recap(out)["failed"] == 0


def test_server_answers_the_capital_of_france(deployment: Deployment) -> None:
    proc = subprocess.run(
        [str(deployment.venv_link / "bin" / "llf-client"), "ask", "--no-stream", "--temperature", "0",
         "--system", "You are a helpful assistant.", "What is the capital of France?"],
        env=deployment.env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_server_runs_as_the_unprivileged_user(deployment: Deployment) -> None:
    ps = subprocess.run(["ps", "-ww", "-eo", "user:20,args"], capture_output=True, text=True, check=True).stdout
    servers = [line for line in ps.splitlines() if "/opt/llf/engines/" in line]
    assert servers, ps
    assert all(line.split()[0] == "llf" for line in servers), servers


def test_server_memory_figure(deployment: Deployment) -> None:
    pids = subprocess.run(["pgrep", "-u", "llf"], capture_output=True, text=True, check=True).stdout.split()
    pss_kb = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss_kb += int(line.split()[1])
    assert pss_kb > 100_000  # a real engine with a real model, not a stub
    record_figure(f"server memory (PSS of {len(pids)} processes): {pss_kb / 1024 / 1024:.2f} GiB")
    # the engine serving started from the compile cache: a deploy whose start compiled the
    # model's graphs restarts it once (llf_server_restart_after_compile; the compiler's memory)
    engine = oldest_pid(VLLM_PROCESSES["VLLM::EngineCore"])
    assert engine is not None, "no engine core process"
    started = hostinfo.process_started(engine)
    compiled = [path.stat().st_mtime for path in INDUCTOR_CACHE.rglob("*") if path.is_file()]
    assert started is not None and compiled, f"engine {engine}, {len(compiled)} files in {INDUCTOR_CACHE}"
    assert max(compiled) < started, "the serving engine compiled in its start and was not restarted"


def test_api_key_is_required_and_kept_secret(deployment: Deployment) -> None:
    key = deployment.server.api_key
    assert key and len(key) >= 32
    root = deployment.server.root_url
    assert requests.get(f"{root}/v1/models", timeout=10).status_code == 401
    ok = requests.get(f"{root}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert ok.status_code == 200
    # read by the service user, written only by root
    mode = stat.S_IMODE(SECRETS.stat().st_mode)
    assert mode == 0o640 and SECRETS.owner() == "root" and SECRETS.group() == "llf"
    assert stat.S_IMODE(deployment.endpoints_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(deployment.endpoints_file.parent.stat().st_mode) == 0o700  # created private
    # never on a command line, in a world-readable file or in the deploy's output
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert key not in ps
    for path in Path("/etc/llf").iterdir():
        if path.is_file() and path.stat().st_mode & stat.S_IROTH:
            assert key not in path.read_text(encoding="utf-8", errors="replace"), path
    assert key not in deployment.install.output


def test_model_is_pinned_and_locked(deployment: Deployment) -> None:
    lock = json.loads((MODEL_DIR / "llf-lock.json").read_text(encoding="utf-8"))
    assert lock["source"]["sha256"] == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert "model/model.safetensors" in lock["files"]
    assert all(len(entry["sha256"]) == 64 for entry in lock["files"].values())


def test_second_run_changes_nothing(deployment: Deployment, harness: Harness) -> None:
    result = harness.make("install", f"MODEL={MODEL}")
    assert result.returncode == 0, result.output[-4000:]
    counters = recap(result.output)
    assert counters["changed"] == 0, result.output[-6000:]
    assert counters["failed"] == 0
    record_figure(f"idempotent re-run of make install: {result.seconds:.1f} s")


def test_corrupted_model_file_fails_verification_naming_the_file(
    deployment: Deployment, harness: Harness, tmp_path: Path
) -> None:
    target = MODEL_DIR / "model" / "config.json"
    backup = tmp_path / "config.json"
    shutil.copy2(target, backup)
    try:
        with target.open("a", encoding="utf-8") as handle:
            handle.write(" ")
        result = harness.make("install", f"MODEL={MODEL}", timeout=600)
        assert result.returncode != 0
        assert f"model file {target} does not match its sha256" in result.output
        assert "delete /var/lib/llf/models/smollm2-135m-instruct to stage the model again" in result.output
    finally:
        shutil.copy2(backup, target)
    # the server that was working still is
    key = deployment.server.api_key
    models = requests.get(f"{deployment.server.root_url}/v1/models",
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert models.status_code == 200
