"""DRAFT (issue 12): Open WebUI on the local deploy (`make install WEBUI=1`), driven in a
real browser: Debian's chromium, headless, through Playwright for Python pointed at it
(nothing downloaded at run time). The admin signs in, picks the model, asks a question
that LLF's server answers, uploads a document whose made-up fact only LLF's embedding
model can retrieve, and sign-up is refused. Screenshots go to tests/e2e/artifacts/webui/.

Skipped unless LLF_TEST_WEBUI=1: it has not run yet (the lead finishes it). The same
through the gateway of the test hosts belongs in test_95_lab.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO, record_figure
from tests.e2e.conftest import INSTALL_MODELS, MODEL, Deployment, Harness, recap

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("LLF_TEST_WEBUI") != "1", reason="draft: set LLF_TEST_WEBUI=1 to run it"),
]

URL = "http://127.0.0.1:8080"
ADMIN_EMAIL = "admin@localhost"
ADMIN_PASSWORD_FILE = Path("/etc/llf/webui/admin-password")
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts" / "webui"
# a fact no model knows: only the uploaded document can tell it
FACT_FILE = "zorblat.txt"
FACT = "The Zorblat festival is held every year in the town of Quillmere on the 17th of Brumaire."
# small models answer better at temperature 0 with a system prompt (ENVIRONMENT.md)
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
def webui(harness: Harness, deployment: Deployment) -> Iterator[str]:
    """make install WEBUI=1 on top of the session's deploy: Open WebUI on loopback."""
    result = harness.make("install", INSTALL_MODELS, "WEBUI=1")
    assert result.returncode == 0, f"make install WEBUI=1 failed:\n{result.output[-6000:]}"
    record_figure(f"make install WEBUI=1 on a deployed machine: {result.seconds:.1f} s")
    assert f"Web UI:       {URL}/" in result.output
    again = harness.make("install", INSTALL_MODELS, "WEBUI=1")
    assert again.returncode == 0 and recap(again.output)["changed"] == 0, again.output[-4000:]
    yield ADMIN_PASSWORD_FILE.read_text().strip()


def test_offline_settings_and_resources(webui: str) -> None:
    assert requests.get(f"{URL}/health", timeout=10).status_code == 200
    assert oct(ADMIN_PASSWORD_FILE.stat().st_mode & 0o777) == "0o600"
    assert oct(Path("/etc/llf/webui/secrets.env").stat().st_mode & 0o777) == "0o600"
    # its data in LLF's data directory, never inside the installed package
    assert Path("/var/lib/llf/webui/webui.db").exists()
    assert not list(Path("/opt/llf/webui").glob("*/lib/python3*/site-packages/open_webui/data/webui.db"))
    # memory of its processes (RSS, KiB), for the README's figures
    rss = subprocess.run(["ps", "-o", "rss=", "-u", "llf-webui"], capture_output=True, text=True, check=False)
    kib = sum(int(value) for value in rss.stdout.split())
    assert kib > 0
    record_figure(f"Open WebUI idle memory (RSS): {kib / 1024:.0f} MiB")


def test_restart_time(webui: str) -> None:
    """Seconds from a restart to /health answering (the README's start time)."""
    if os.path.exists("/run/systemd/system"):
        command = ["systemctl", "restart", "llf-webui"]
    else:
        command = ["/opt/llf/supervisor/bin/supervisorctl", "-c", "/etc/llf/supervisord.conf", "restart", "llf-webui"]
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
    record_figure(f"Open WebUI restart to /health: {time.monotonic() - started:.1f} s")


def api_token(password: str) -> str:
    response = requests.post(f"{URL}/api/v1/auths/signin", json={"email": ADMIN_EMAIL, "password": password},
                             timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def test_every_model_of_the_deploy_is_listed(webui: str) -> None:
    models = requests.get(f"{URL}/api/models", headers={"Authorization": f"Bearer {api_token(webui)}"}, timeout=60)
    assert MODEL in {model["id"] for model in models.json()["data"]}


def test_signup_is_refused(webui: str) -> None:
    response = requests.post(f"{URL}/api/v1/auths/signup", timeout=30,
                             json={"name": "Mallory", "email": "mallory@example.org", "password": "a-password-1234"})
    assert response.status_code in (401, 403), response.text


# --- in the browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(webui: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{URL}/auth")
        page.screenshot(path=str(ARTIFACTS / "01-sign-in.png"))
        # the sign-in page offers no sign-up link when sign-up is off
        assert page.get_by_text(re.compile("sign up", re.I)).count() == 0
        page.fill("input[type=email]", ADMIN_EMAIL)
        page.fill("input[type=password]", webui)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/(c/.*)?$"))
        # the "What's new" dialog after the first sign-in
        dismiss = page.get_by_role("button", name=re.compile("okay|let's go|close", re.I))
        if dismiss.count() > 0:
            dismiss.first.click()
        page.screenshot(path=str(ARTIFACTS / "02-signed-in.png"))
        yield page
        browser.close()


def choose_model(page: Any) -> None:
    page.get_by_role("button", name=re.compile("select a model", re.I)).first.click()
    page.get_by_role("option", name=re.compile(re.escape(MODEL))).first.click()


def ask(page: Any, question: str) -> str:
    """Type a question in the page, wait for the reply to finish, return the reply's text."""
    box = page.locator("#chat-input")
    box.click()
    box.fill(question)
    page.keyboard.press("Enter")
    # the stop button shows while the reply streams
    page.wait_for_selector("button[aria-label='Stop']", state="detached", timeout=180_000)
    replies = page.locator("#response-content-container")
    return str(replies.last.inner_text())


def test_the_admin_asks_and_llfs_server_answers(page: Any) -> None:
    page.goto(f"{URL}/")
    choose_model(page)
    answer = ask(page, f"{SYSTEM} What is the capital of France?")
    page.screenshot(path=str(ARTIFACTS / "03-capital.png"), full_page=True)
    assert "Paris" in answer, answer


def test_a_question_about_an_uploaded_document_is_answered_from_it(page: Any, tmp_path: Path) -> None:
    document = tmp_path / FACT_FILE
    document.write_text(FACT + "\n")
    page.goto(f"{URL}/")
    choose_model(page)
    page.locator("input[type=file]").first.set_input_files(str(document))
    page.wait_for_selector(f"text={FACT_FILE}")
    answer = ask(page, "According to the document, in which town is the Zorblat festival held?")
    page.screenshot(path=str(ARTIFACTS / "04-document.png"), full_page=True)
    assert "Quillmere" in answer, answer
