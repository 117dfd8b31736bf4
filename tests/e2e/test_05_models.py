"""Several models on this machine: the one local deploy serves the chat model and the
embedding model, each as its own supervised vLLM server on its own port and core.
Taking a model off the list stops and removes only its server (its staged files stay);
putting it back starts it without restarting the other. (A model whose share of the
cores changes restarts: the removal keeps the chat model on its core by naming it.)"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, record_figure
from tests.e2e.conftest import EMBED_MODEL, INSTALL_MODELS, MODEL, Deployment, Harness, recap
from tests.e2e.embeddings import check_embeddings

pytestmark = pytest.mark.e2e

SUPERVISORCTL = ["/opt/llf/supervisor/bin/supervisorctl", "-c", "/etc/llf/supervisord.conf"]
EMBED_SERVICE = f"llf-vllm-{EMBED_MODEL}"
EMBED_FILES = [Path(f"/etc/llf/vllm-{EMBED_MODEL}.yaml"), Path(f"/etc/llf/vllm-{EMBED_MODEL}.env"),
               Path(f"/opt/llf/bin/{EMBED_SERVICE}")]


def program_pid(name: str) -> int | None:
    status = subprocess.run([*SUPERVISORCTL, "status", name], capture_output=True, text=True, check=False).stdout
    return int(status.split("pid ")[1].split(",")[0]) if "RUNNING" in status else None


def env_value(path: Path, name: str) -> str:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(name + "=")]
    return lines[0].split("=", 1)[1].strip("'") if lines else ""


def embed(url: str, key: str | None, texts: list[str]) -> requests.Response:
    return requests.post(f"{url}/embeddings", json={"model": EMBED_MODEL, "input": texts},
                         headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)


@pytest.fixture(scope="module")
def embed_url(deployment: Deployment) -> str:
    config = Path(f"/etc/llf/vllm-{EMBED_MODEL}.yaml").read_text(encoding="utf-8")
    port = [line.split(":")[1].strip() for line in config.splitlines() if line.startswith("port:")][0]
    return f"http://127.0.0.1:{port}/v1"


def test_each_model_is_its_own_server_on_its_own_port_and_core(deployment: Deployment, embed_url: str) -> None:
    assert program_pid("llf-vllm") and program_pid(EMBED_SERVICE)
    assert embed_url != deployment.server.base_url
    # a share of the two cores each, not both on core 0
    binds = {env_value(Path("/etc/llf/vllm.env"), "VLLM_CPU_OMP_THREADS_BIND"),
             env_value(Path(f"/etc/llf/vllm-{EMBED_MODEL}.env"), "VLLM_CPU_OMP_THREADS_BIND")}
    assert binds == {"0", "1"}, binds
    key = deployment.server.api_key
    listed = requests.get(f"{embed_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    assert [model["id"] for model in listed["data"]] == [EMBED_MODEL]
    vectors = embed(embed_url, key, ["What is the capital of France?"]).json()["data"]
    assert len(vectors[0]["embedding"]) == 384
    # the key is checked on this server too
    assert embed(embed_url, "wrong-key", ["x"]).status_code == 401


def test_embeddings_agree_with_sentence_transformers(deployment: Deployment, embed_url: str) -> None:
    """The served vectors are the model's: sentence-transformers' own, from the same staged
    directory, within 1e-3 cosine; similar sentences score higher than unrelated ones."""
    figures = check_embeddings(embed_url, deployment.server.api_key, EMBED_MODEL,
                               f"/var/lib/llf/models/{EMBED_MODEL}/model", dimensions=384)
    record_figure(f"embeddings: {figures.dimensions} dims, max deviation from sentence-transformers "
                  f"{figures.max_deviation:.2e}, similar {figures.similar:.3f} vs unrelated {figures.unrelated:.3f}")


def test_the_client_lists_embeds_and_smokes_every_model(deployment: Deployment, harness: Harness) -> None:
    """llf-client reads the deploy's per-model entries: models with their kind and context,
    embed on the embedding model (similar texts closer), smoke of every model."""

    def client(*args: str) -> dict:
        proc = subprocess.run([str(REPO / "llf_venv" / "bin" / "llf-client"), *args, "--json"], env=harness.env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return json.loads(proc.stdout)

    rows = [row for endpoint in client("models")["endpoints"] for row in endpoint["models"]]
    kinds = {row["id"]: (row["kind"], row["max_model_len"]) for row in rows}
    assert kinds == {MODEL: ("chat", 4096), EMBED_MODEL: ("embedding", 256)}, rows
    result = client("embed", "a cat sat on the mat", "a kitten sat on the rug", "quarterly tax report")
    assert result["model"] == EMBED_MODEL
    assert [item["dimensions"] for item in result["embeddings"]] == [384, 384, 384]
    similar, unrelated = result["similarity"][0][1], result["similarity"][0][2]
    assert similar > unrelated, result["similarity"]
    smoke = json.dumps(client("smoke"))
    assert EMBED_MODEL in smoke and MODEL in smoke


def test_a_model_taken_off_the_list_stops_alone_and_comes_back_alone(
    deployment: Deployment, harness: Harness, embed_url: str
) -> None:
    chat_pid = program_pid("llf-vllm")
    # alone, the chat model would get both cores back (a restart): it keeps core 0
    keep_core = "ARGS=-e '" + json.dumps({"llf_server_model_cpus": {MODEL: "0"}}) + "'"
    removed = harness.make("install", f"MODELS={MODEL}", keep_core, timeout=900)
    assert removed.returncode == 0, removed.output[-4000:]
    assert program_pid(EMBED_SERVICE) is None
    assert EMBED_SERVICE not in subprocess.run([*SUPERVISORCTL, "status"], capture_output=True, text=True,
                                               check=False).stdout
    assert [path for path in EMBED_FILES if path.exists()] == []
    with pytest.raises(requests.ConnectionError):
        embed(embed_url, deployment.server.api_key, ["x"])
    # the staged model stays (deleted only by make uninstall PURGE=1), the chat server was not restarted
    assert Path(f"/var/lib/llf/models/{EMBED_MODEL}/llf-lock.json").is_file()
    assert program_pid("llf-vllm") == chat_pid
    record_figure(f"make install taking the embedding model off the list: {removed.seconds:.1f} s")

    started = time.monotonic()
    added = harness.make("install", INSTALL_MODELS, timeout=900)
    assert added.returncode == 0, added.output[-4000:]
    assert embed(embed_url, deployment.server.api_key, ["x"]).status_code == 200
    assert program_pid("llf-vllm") == chat_pid
    assert recap(added.output)["failed"] == 0
    record_figure(f"make install putting it back, until it answers: {time.monotonic() - started:.1f} s")
