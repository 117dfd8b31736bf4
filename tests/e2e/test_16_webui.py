"""Open WebUI on the local deploy (`make install WEBUI=1`), after test_15 added the
embedding model: in a real browser (tests/e2e/webui.py) the admin signs in, every model
of the deploy is listed, LLF's server answers a question, and a question about an
uploaded document is answered from it, the document embedded by LLF's own embedding
server; sign-up is refused. Screenshots go to tests/e2e/artifacts/webui/. The same
through the test hosts' gateway is in test_95_lab.py; the playbook's second run there
checks that a deploy with Open WebUI changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import record_figure
from tests.e2e import webui
from tests.e2e.conftest import (
    EMBED_MODEL,
    MODEL,
    MODEL_CPUS,
    SUPERVISORCTL,
    TWO_MODELS,
    Deployment,
    Harness,
    recap,
    served_total,
)
from tests.e2e.models import embed_url

pytestmark = pytest.mark.e2e

URL = "http://127.0.0.1:8080"
ADMIN_EMAIL = "admin@localhost"
CONFIG = Path("/etc/llf/webui")
ADMIN_PASSWORD_FILE = CONFIG / "admin-password"


@pytest.fixture(scope="module")
def password(harness: Harness, deployment: Deployment) -> Iterator[str]:
    """make install WEBUI=1 on top of the session's deploy (both models): Open WebUI on loopback."""
    # from the controller's wheelhouse, as for hosts without internet: the lab's offline
    # gateway host (test_95_lab.py) then installs from the same wheels without a second download
    args = {"llf_server_model_cpus": MODEL_CPUS, "llf_webui_install_from": "wheelhouse"}
    result = harness.make("install", TWO_MODELS[0], "WEBUI=1", f"ARGS=-e '{json.dumps(args)}'", timeout=1800)
    assert result.returncode == 0, f"make install WEBUI=1 failed:\n{result.output[-6000:]}"
    assert recap(result.output)["failed"] == 0
    record_figure(f"make install WEBUI=1 on a deployed machine (Open WebUI's wheels fetched, installed, started): "
                  f"{result.seconds:.1f} s")
    assert f"Web UI:       {URL}/" in result.output
    yield ADMIN_PASSWORD_FILE.read_text(encoding="utf-8").strip()


def embeddings_served() -> float:
    """The embedding server's vllm:request_success_total."""
    return served_total("127.0.0.1", urlsplit(embed_url()).port or 0)


def test_offline_settings_secrets_and_memory(password: str) -> None:
    assert requests.get(f"{URL}/health", timeout=10).status_code == 200
    for secret in (ADMIN_PASSWORD_FILE, CONFIG / "secrets.env"):
        assert oct(secret.stat().st_mode & 0o777) == "0o600", secret
    settings = (CONFIG / "webui.env").read_text(encoding="utf-8")
    # the inventory stays the source of truth; nothing fetched; no key in this readable file
    for line in ("ENABLE_PERSISTENT_CONFIG='false'", "OFFLINE_MODE='true'", "ENABLE_SIGNUP='false'",
                 "RAG_EMBEDDING_ENGINE='openai'", f"RAG_EMBEDDING_MODEL='{EMBED_MODEL}'"):
        assert line in settings.splitlines(), line
    assert "OPENAI_API_KEY" not in settings and "SECRET" not in settings
    # its data in LLF's data directory, never inside the installed package
    assert Path("/var/lib/llf/webui/webui.db").exists()
    assert not list(Path("/opt/llf/webui").glob("*/lib/python3*/site-packages/open_webui/data/webui.db"))
    # its own unprivileged user
    ps = subprocess.run(["ps", "-o", "rss=", "-u", "llf-webui"], capture_output=True, text=True, check=False)
    kib = sum(int(value) for value in ps.stdout.split())
    assert kib > 0, "no process of the user llf-webui"
    record_figure(f"Open WebUI memory (RSS of its processes): {kib / 1024:.0f} MiB")


def test_restart_until_it_answers(password: str) -> None:
    """Seconds from a restart to /health answering (the README's start time)."""
    command = (["systemctl", "restart", "llf-webui"] if os.path.exists("/run/systemd/system")
               else [*SUPERVISORCTL, "restart", "llf-webui"])
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    while time.monotonic() - started < 180:
        try:
            if requests.get(f"{URL}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    else:
        pytest.fail("Open WebUI did not answer /health within 180 s of a restart")
    record_figure(f"Open WebUI restart until /health answers: {time.monotonic() - started:.1f} s")


def test_signup_is_refused(password: str) -> None:
    response = requests.post(f"{URL}/api/v1/auths/signup", timeout=30,
                             json={"name": "Mallory", "email": "mallory@example.org", "password": "a-password-1234"})
    assert response.status_code in (401, 403), response.text
    assert webui.sign_up_offered(URL) == 0
    # a wrong password is refused too
    wrong = requests.post(f"{URL}/api/v1/auths/signin", json={"email": ADMIN_EMAIL, "password": "wrong-password"},
                          timeout=30)
    assert wrong.status_code in (400, 401, 403), wrong.text


def test_in_the_browser_the_admin_chats_and_asks_about_a_document(password: str, tmp_path: Path) -> None:
    with webui.signed_in(URL, ADMIN_EMAIL, password, "local") as page:
        assert sorted(webui.models_offered(page)) == sorted([MODEL, EMBED_MODEL])
        answer = webui.ask(page, "What is the capital of France?")
        page.screenshot(path=str(webui.ARTIFACTS / "local-03-capital.png"))
        assert "Paris" in answer, answer
        webui.new_chat(page, URL)
        before = embeddings_served()
        started = time.monotonic()
        webui.upload(page, tmp_path)
        # the document is embedded by LLF's embedding server (Open WebUI has no model of its own)
        while embeddings_served() <= before:
            assert time.monotonic() - started < 60, "the document did not reach LLF's embedding server in 60 s"
            time.sleep(0.5)
        embedded = time.monotonic() - started
        answer = webui.ask(page, webui.FACT_QUESTION)
        page.screenshot(path=str(webui.ARTIFACTS / "local-04-document.png"))
        assert webui.FACT_ANSWER in answer, answer
        record_figure(f"Open WebUI, local: document embedded by LLF's server in {embedded:.1f} s, "
                      f"answered from it {time.monotonic() - started:.1f} s after the upload")
