"""Taking a model off the list: `make install` with the chat model alone after
tests/e2e/test_15_models.py added the embedding model. Its server stops and its files
and supervisor program go; its staged model stays (only `make uninstall PURGE=1`
deletes it); the chat model, which keeps its cores, is not restarted; the endpoints
file no longer lists it."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from llf_client.config import load_endpoints_file
from tests.conftest import record_figure
from tests.e2e.conftest import EMBED_MODEL, MODEL, Deployment, Harness, recap
from tests.e2e.models import EMBED_CONFIG, EMBED_FILES, EMBED_SERVICE, embed, embed_url, program_pid, supervised

pytestmark = pytest.mark.e2e


def test_a_model_taken_off_the_list_stops_alone(deployment: Deployment, harness: Harness) -> None:
    if not EMBED_CONFIG.exists():
        pytest.fail("the embedding model is not deployed: tests/e2e/test_15_models.py adds it")
    url = embed_url()
    chat_pid = program_pid("llf-vllm")
    assert chat_pid and program_pid(EMBED_SERVICE)
    removed = harness.make("install", f"MODEL={MODEL}", timeout=900)
    assert removed.returncode == 0, removed.output[-4000:]
    assert recap(removed.output)["failed"] == 0
    assert program_pid(EMBED_SERVICE) is None
    assert EMBED_SERVICE not in supervised()
    assert [path for path in EMBED_FILES if path.exists()] == []
    with pytest.raises(requests.ConnectionError):
        embed(url, deployment.server.api_key, ["x"])
    assert Path(f"/var/lib/llf/models/{EMBED_MODEL}/llf-lock.json").is_file()
    assert program_pid("llf-vllm") == chat_pid
    assert [entry.model for entry in load_endpoints_file(deployment.endpoints_file)] == [MODEL]
    record_figure(f"make install taking the embedding model off the list: {removed.seconds:.1f} s")
