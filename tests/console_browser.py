"""The console's browser harness for its tests: Debian's Chromium driven by Playwright
(nothing downloads a browser), a signed-in tab whose every request is checked to stay on
Berth's address and whose page errors fail the test, and a screenshot of each test's last
page in ``.artifacts/console/``. The fixtures are imported by the console's test modules."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.local import ROOT
from tests.conftest import Stack

playwright_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, BrowserContext, Page, expect  # noqa: E402

__all__ = [
    "SHOTS",
    "WAIT_MS",
    "Watch",
    "browser",
    "context_for",
    "create",
    "page",
    "shot",
    "try_it",
]

SHOTS = Path(os.environ.get("BERTH_SCREENSHOTS", ROOT / ".artifacts" / "console"))
WAIT_MS = 60_000


def _chromium() -> str:
    found = os.environ.get("BERTH_CHROMIUM") or shutil.which("chromium")
    if not found:
        reason = "chromium is not installed (Debian: chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = _chromium()
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Watch:
    """What a browser context did: requests off Berth's address, errors on its pages."""

    def __init__(self, context: BrowserContext, base: str):
        self.offsite: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []

        def route(r: Any) -> None:
            url = r.request.url
            self.urls.append(url)
            if url.startswith((base, "blob:", "data:")):
                r.continue_()
            else:
                self.offsite.append(url)
                r.abort()

        context.route("**/*", route)

    def page(self, page: Page) -> Page:
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: d.accept())
        return page

    def check(self) -> None:
        assert not self.offsite, f"requests left Berth: {self.offsite}"
        assert not self.errors, self.errors


def context_for(browser: Browser, stack: Stack, token: str | None) -> tuple[BrowserContext, Watch]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=stack.url)
    if token is not None:
        context.add_init_script(f"sessionStorage.setItem('berth.token', {json.dumps(token)})")
    return context, Watch(context, stack.url)


@pytest.fixture
def page(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A signed-in console tab; its screenshot is saved when the test ends."""
    context, watch = context_for(browser, stack, stack.token)
    tab = watch.page(context.new_page())
    try:
        yield tab
        watch.check()
    finally:
        shot(tab, request.node.name)
        context.close()


def shot(tab: Page, label: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):  # a closed page: nothing to keep
        tab.screenshot(path=str(SHOTS / f"{label}.png"), full_page=True)


def try_it(page: Page, field: str, value: str) -> None:
    """Open the endpoint page's playground, fill ``field`` and run it."""
    page.click("button[data-tab=playground]")
    control = page.locator(f"[name={field}]")
    expect(control).to_be_visible(timeout=WAIT_MS)
    control.fill(value)
    page.click("button:has-text('Run')")


def create(stack: Stack, **body: Any) -> None:
    with stack.client() as c:
        resp = c.post("/v1/endpoint", json=body)
    assert resp.status_code == 201, resp.text
