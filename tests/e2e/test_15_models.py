"""Several models on this machine: `make install MODELS=chat,embedding` adds the
embedding model beside the chat model the session deployed, as its own supervised vLLM
server on its own port and core, without restarting the chat model (its cores are named,
so its share does not change). It runs after the client and `top` tests, which judge the
chat model's latency with the machine to itself (with the embedding server sharing a
core with the chat model's threads, they failed); the load tests then run with both,
and tests/e2e/test_85_model_removal.py takes the embedding model off again."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, record_figure
from tests.e2e.conftest import EMBED_MODEL, MODEL, MODEL_CPUS, TWO_MODELS, Deployment, Harness, recap
from tests.e2e.embeddings import check_embeddings
from tests.e2e.models import EMBED_SERVICE, embed, env_value, program_pid
from tests.e2e.models import embed_url as read_embed_url

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def embed_url(deployment: Deployment, harness: Harness) -> str:
    """The embedding model added to the running deploy; its URL."""
    chat_pid = program_pid("llf-vllm")
    assert chat_pid, "the session's chat model is not running"
    started = time.monotonic()
    added = harness.make("install", *TWO_MODELS, timeout=900)
    assert added.returncode == 0, added.output[-4000:]
    assert recap(added.output)["failed"] == 0
    url = read_embed_url()
    assert embed(url, deployment.server.api_key, ["x"]).status_code == 200
    # adding a model does not restart the others
    assert program_pid("llf-vllm") == chat_pid
    record_figure(f"make install adding the embedding model, until it answers: {time.monotonic() - started:.1f} s")
    return url


def test_each_model_is_its_own_server_on_its_own_port_and_core(deployment: Deployment, embed_url: str) -> None:
    assert program_pid("llf-vllm") and program_pid(EMBED_SERVICE)
    assert embed_url != deployment.server.base_url
    # each engine bound to the cores named for it (the chat model keeps all of them)
    binds = {MODEL: env_value(Path("/etc/llf/vllm.env"), "VLLM_CPU_OMP_THREADS_BIND"),
             EMBED_MODEL: env_value(Path(f"/etc/llf/vllm-{EMBED_MODEL}.env"), "VLLM_CPU_OMP_THREADS_BIND")}
    assert binds == MODEL_CPUS, binds
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
