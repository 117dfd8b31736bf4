"""Open WebUI driven in a real browser: Debian's chromium, headless, through Playwright
for Python pointed at it (nothing downloaded at run time; `make browser` installs the
package). The local test (test_16_webui.py) and the lab's (test_95_lab.py) share these
steps: sign in, ask, upload a document and ask about it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts" / "webui"
# a fact no model knows: only the uploaded document can tell it
FACT_FILE = "zorblat.txt"
FACT = "The Zorblat festival is held every year in the town of Quillmere on the 17th of Brumaire."
FACT_QUESTION = "According to the document, in which town is the Zorblat festival held?"
FACT_ANSWER = "Quillmere"
# the default is 30 s; a reply on two shared cores can take longer
TIMEOUT_MS = 120_000


@contextmanager
def signed_in(url: str, email: str, password: str, shots: str) -> Iterator[Any]:
    """A page of Open WebUI at `url`, signed in; screenshots named `shots`-NN-*.png."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # the lab gateway's certificate is its own CA's: the tests check the TLS with
            # that CA separately (requests), the browser is told to accept it
            page = browser.new_page(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
            page.set_default_timeout(60_000)
            page.goto(f"{url}/auth")
            page.wait_for_selector("input[type=email]")
            page.screenshot(path=str(ARTIFACTS / f"{shots}-01-sign-in.png"))
            page.fill("input[type=email]", email)
            page.fill("input[type=password]", password)
            page.keyboard.press("Enter")
            page.wait_for_selector("#chat-input")
            # the "What's new" dialog, shown once per user
            dismiss = page.get_by_role("button", name=re.compile("okay, let's go", re.I))
            try:
                dismiss.first.wait_for(timeout=3_000)
                dismiss.first.click()
            except Exception:  # noqa: BLE001 - playwright's TimeoutError: no dialog this time
                pass
            page.screenshot(path=str(ARTIFACTS / f"{shots}-02-signed-in.png"))
            yield page
        finally:
            browser.close()


def sign_up_offered(url: str) -> int:
    """How many "sign up" links the sign-in page shows, in a fresh browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(ignore_https_errors=True)
            page.goto(f"{url}/auth")
            page.wait_for_selector("input[type=email]")
            return int(page.get_by_text(re.compile("sign up", re.I)).count())
        finally:
            browser.close()


def models_offered(page: Any) -> list[str]:
    """The models the page's model picker lists."""
    page.get_by_role("button", name=re.compile("^Selected model", re.I)).first.click()
    options = page.get_by_role("option")
    options.first.wait_for()
    names = [str(option.inner_text()).strip() for option in options.all()]
    page.keyboard.press("Escape")
    return names


def new_chat(page: Any, url: str) -> None:
    page.goto(f"{url}/")
    page.wait_for_selector("#chat-input")


def ask(page: Any, question: str) -> str:
    """Type a question, wait for the reply to finish streaming, return its text."""
    replies = page.locator("#response-content-container")
    before = replies.count()
    box = page.locator("#chat-input")
    box.click()
    box.fill(question)
    page.keyboard.press("Enter")
    # the Stop button shows while the reply streams
    stop = page.locator("button[aria-label='Stop']")
    stop.wait_for(state="attached", timeout=TIMEOUT_MS)
    stop.wait_for(state="detached", timeout=TIMEOUT_MS)
    replies.nth(before).wait_for()
    return str(replies.nth(before).inner_text())


def upload(page: Any, folder: Path) -> None:
    """Attach a text file stating the made-up fact to the next message."""
    document = folder / FACT_FILE
    document.write_text(FACT + "\n", encoding="utf-8")
    page.locator("input[type=file]").first.set_input_files(str(document))
    page.wait_for_selector(f"text={FACT_FILE}")
