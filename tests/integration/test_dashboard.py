"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright's Python
API; nothing downloads a browser) against a real server and worker."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack
from tests.support.dashboard_server import serve

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"

if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
    pytest.skip("needs Debian's chromium (apt-get install -y chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def page(smol_stack: Stack) -> Iterator[object]:
    with serve(smol_stack.url) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.goto(base + "/")
            tab.wait_for_selector("#conn.live", timeout=20_000)
            yield tab
        finally:
            browser.close()


def row(page: object, request_id: str) -> str:
    return f'#requests tbody tr[data-id="{request_id}"]'


def test_dashboard_live(page: object, smol_stack: Stack) -> None:
    p = page  # playwright's Page (untyped here: the module is imported lazily)
    rid = smol_stack.producer.submit("Write a long story about a lighthouse keeper.", max_tokens=200, ignore_eos=True)

    # The request appears, and its text grows once clicked.
    p.wait_for_selector(row(p, rid), timeout=20_000)  # type: ignore[attr-defined]
    p.click(row(p, rid))  # type: ignore[attr-defined]
    p.wait_for_function("document.querySelector('#stream-text').textContent.length > 5", timeout=60_000)  # type: ignore[attr-defined]
    first = len(p.text_content("#stream-text") or "")  # type: ignore[attr-defined]
    p.wait_for_function(f"document.querySelector('#stream-text').textContent.length > {first + 10}", timeout=60_000)  # type: ignore[attr-defined]
    p.wait_for_selector(f"{row(p, rid)} .status.running", timeout=10_000)  # type: ignore[attr-defined]

    # A cancel clicked on the page ends the request as cancelled (in its row and its stream).
    p.click(f'{row(p, rid)} button[data-cancel="{rid}"]')  # type: ignore[attr-defined]
    p.wait_for_selector(f"{row(p, rid)} .status.cancelled", timeout=30_000)  # type: ignore[attr-defined]
    p.wait_for_selector("#stream-status.cancelled", timeout=30_000)  # type: ignore[attr-defined]
    assert smol_stack.reader.result(rid).finish_reason == "cancelled"

    # A batch's bar reaches 100 %.
    bid = smol_stack.producer.submit_batch([f"Count to {i}:" for i in range(4)], max_tokens=4, ignore_eos=True)
    p.wait_for_selector(f'#batches tr[data-batch="{bid}"]', timeout=20_000)  # type: ignore[attr-defined]
    p.wait_for_function(  # type: ignore[attr-defined]
        f"document.querySelector('#batches tr[data-batch=\"{bid}\"] .pct').textContent.includes('(100 %)')",
        timeout=120_000,
    )
    assert "4 / 4" in (p.text_content(f'#batches tr[data-batch="{bid}"] .pct') or "")  # type: ignore[attr-defined]

    # A worker row from the heartbeats, and something on the page to look at.
    assert "SmolLM2" in (p.text_content("#workers tbody") or "")  # type: ignore[attr-defined]
    smol_stack.producer.submit("Tell me about the sea.", max_tokens=120, ignore_eos=True)
    time.sleep(3)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    p.screenshot(path=str(SCREENSHOT), full_page=True)  # type: ignore[attr-defined]


def test_dashboard_with_api_keys(smol_stack: Stack) -> None:
    """TOKENRELAY_API_KEYS set: the page asks for a key once, then its feeds (EventSource,
    which cannot send headers: ?api_key=) and its cancel button (a bearer header) work."""
    from tests.support.gateway_process import gateway_process

    keys = {"TOKENRELAY_API_KEYS": "k1,k2"}
    with gateway_process(smol_stack.url, env=keys) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            p = browser.new_page()
            p.goto(base + "/")
            p.wait_for_selector("#key-form:not([hidden])", timeout=20_000)
            assert p.text_content("#conn") == "API key needed"
            p.fill("#key", "wrong")
            p.click("#key-form button")
            p.wait_for_function("document.querySelector('#conn').textContent === 'wrong API key'", timeout=20_000)
            p.fill("#key", "k2")
            p.click("#key-form button")
            p.wait_for_selector("#conn.live", timeout=20_000)

            rid = smol_stack.producer.submit("Tell me about keys.", max_tokens=200, ignore_eos=True)
            p.wait_for_selector(row(p, rid), timeout=20_000)
            p.click(row(p, rid))
            p.wait_for_function("document.querySelector('#stream-text').textContent.length > 5", timeout=60_000)
            p.click(f'{row(p, rid)} button[data-cancel="{rid}"]')
            p.wait_for_selector("#stream-status.cancelled", timeout=30_000)
            assert smol_stack.reader.result(rid).finish_reason == "cancelled"

            # A link with the key in its fragment connects at once, and the key leaves the address bar.
            fresh = browser.new_page()
            fresh.goto(base + "/#key=k1")
            fresh.wait_for_selector("#conn.live", timeout=20_000)
            assert "k1" not in fresh.url
        finally:
            browser.close()
