"""The console's asset library and fine-tuning pages in a real browser (Debian's Chromium,
driven by Playwright): an upload with its progress and a refusal with its reason, and a
tune started from the page that runs to its end. Fixtures from tests/console_browser.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import console_browser
from tests.conftest import Stack, file_asset
from tests.console_browser import WAIT_MS, shot

playwright_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.e2e

# The harness's fixtures, under the names the tests ask for.
browser, page = console_browser.browser, console_browser.page


def test_an_asset_uploaded_and_a_tune_run_from_the_console(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    tag = os.urandom(3).hex()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"a": "A ship in the harbour", "b": "A boat at the dock", "label": 1}\n'
        '{"a": "A ship in the harbour", "b": "Two eggs and flour", "label": 0}\n'
    )
    page.goto("/console/assets")
    page.set_input_files("input[name=file]", str(pairs))
    page.fill("input[name=name]", f"pairs-{tag}")
    page.fill("input[name=file_format]", "jsonl")
    page.click("button:has-text('Upload')")
    row = page.locator(f"tr[data-asset='pairs-{tag}']")
    expect(row).to_contain_text("ready", timeout=WAIT_MS)
    # Content that is not its format: refused, with the reason beside the form.
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\xff" * 64)
    page.set_input_files("input[name=file]", str(bad))
    page.fill("input[name=name]", f"bad-{tag}")
    page.select_option("select[name=asset_type]", "lora")
    page.fill("input[name=file_format]", "safetensors")
    page.click("button:has-text('Upload')")
    expect(page.locator("form .error")).to_contain_text("safetensors", timeout=WAIT_MS)
    shot(page, "assets")

    page.goto("/console/tunes")
    page.fill("input[name=name]", f"console-tune-{tag}")
    files = page.locator("select[name=files]")
    expect(files.locator("option", has_text=f"pairs-{tag}")).to_have_count(1, timeout=WAIT_MS)
    files.select_option(label=f"pairs-{tag}")
    page.fill("input[name=steps]", "30")
    page.click("button:has-text('Start tuning')")
    tune = page.locator(f"tr[data-tune='console-tune-{tag}']")
    expect(tune).to_contain_text("succeeded", timeout=WAIT_MS * 3)
    expect(tune.locator("code")).to_have_count(1)
    shot(page, "tunes")
    with stack.client() as c:
        lora = c.get("/v1/tunes", params={"name": f"console-tune-{tag}"}).json()["data"][0]
        assert (
            c.get(f"/v1/assets/{lora['output_lora_ids'][0]}").json()["asset"]["asset_type"]
            == "lora"
        )


def test_the_tune_form_offers_each_engine_s_own_files_and_says_why_one_cannot_run(
    page: Page, stack: Stack
) -> None:
    """Choosing Stable Diffusion XL lists pictures, not pairs; on a Berth whose operator
    gave no SDXL weights, starting one shows the server's reason beside the form."""
    tag = os.urandom(3).hex()
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # the signature is what the check reads
    with stack.client() as c:
        file_asset(c, f"pic-{tag}.png", "png", png)
        file_asset(c, f"pairs-{tag}", "jsonl", b'{"a": "x", "b": "y", "label": 1}\n')
    page.goto("/console/tunes")
    files = page.locator("select[name=files]")
    expect(files.locator("option", has_text=f"pairs-{tag}")).to_have_count(1, timeout=WAIT_MS)
    expect(files.locator("option", has_text=f"pic-{tag}")).to_have_count(0)
    page.select_option("select[name=engine]", "image/stable-diffusion-xl-v1-0")
    expect(files.locator("option", has_text=f"pic-{tag}")).to_have_count(1)
    expect(files.locator("option", has_text=f"pairs-{tag}")).to_have_count(0)
    expect(page.locator("input[name=steps]")).to_have_value("500")
    page.fill("input[name=name]", f"sdxl-{tag}")
    files.select_option(label=f"pic-{tag}.png")
    page.fill("input[name=trigger_words]", "berthy")
    page.click("button:has-text('Start tuning')")
    expect(page.locator("form .error")).to_contain_text("BERTH_TRAINERS", timeout=WAIT_MS)
    shot(page, "tunes-sdxl-refused")
    with stack.client() as c:
        assert c.get("/v1/tunes", params={"name": f"sdxl-{tag}"}).json()["data"] == []
