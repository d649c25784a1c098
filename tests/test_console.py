"""The console in a real browser (tests/console_browser.py: Debian's Chromium, Playwright, every
request checked to stay on Berth's address): endpoints, the playground, jobs, events and
logs, editing and uploads. Signing in, tokens, secrets, public demos and a model's markup
are in tests/test_console_access.py; assets and tunes in tests/test_console_library.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading

import pytest

from berth.local import ROOT
from tests import console_browser
from tests.conftest import Stack, wait_for
from tests.console_browser import WAIT_MS, create, shot, try_it

playwright_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.e2e

# The harness's fixtures, under the names the tests ask for.
browser, page = console_browser.browser, console_browser.page


# -- endpoints ---------------------------------------------------------------------------


def test_the_endpoints_list_follows_changes_without_reloading(
    page: Page, stack: Stack, name: str
) -> None:
    page.goto("/console/")
    expect(page.locator(".live")).to_contain_text("live")
    loads = page.evaluate("performance.getEntriesByType('navigation').length")
    create(stack, name=name, example="echo", min_replicas=1, max_replicas=1)
    row = page.locator(f"tr[data-endpoint='{name}']")
    expect(row.locator(".badge")).to_have_text("running", timeout=WAIT_MS)
    expect(row).to_contain_text("1 ready")

    # A slow request shows as busy and in flight, then goes.
    def call_slowly() -> None:
        with stack.client() as c:
            c.post(f"/e/{name}/infer", json={"prompt": "x", "sleep": 4}, timeout=30)

    slow = threading.Thread(target=call_slowly, daemon=True)
    slow.start()
    expect(row.locator("td[data-col=in_flight]")).to_have_text("1", timeout=WAIT_MS)
    expect(row).to_contain_text("1 busy")
    shot(page, "endpoints-busy")
    slow.join(30)
    expect(row.locator("td[data-col=in_flight]")).to_have_text("0", timeout=WAIT_MS)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == loads


def test_the_endpoints_page_is_light(page: Page, stack: Stack, name: str) -> None:
    """First load of the endpoints page: under 300 KB over the wire (its time is measured by
    bench/console.py)."""
    create(stack, name=name, example="echo", min_replicas=0, max_replicas=1)
    page.goto("/console/")
    expect(page.locator(f"tr[data-endpoint='{name}']")).to_be_visible()
    sizes = page.evaluate(
        """() => performance.getEntriesByType('resource')
            .filter(r => !r.name.includes('/stream'))
            .concat(performance.getEntriesByType('navigation'))
            .map(r => r.encodedBodySize + 300)"""
    )
    assert 0 < sum(sizes) < 300 * 1024, sizes


def test_deploy_an_example_from_the_form_and_hear_it(page: Page, stack: Stack, name: str) -> None:
    page.goto("/console/new")
    page.fill("input[name=name]", name)
    page.select_option("select[name=example]", "tts")
    page.fill("input[name=min_replicas]", "1")
    shot(page, "new-endpoint")
    page.click("form.endpoint-form button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/console/endpoints/{name}")
    expect(page.locator("#replicas .badge")).to_have_text("running", timeout=WAIT_MS)
    with stack.client() as c:
        ep = c.get(f"/v1/endpoint/{name}").json()
    assert ep["example"] == "tts" and ep["min_replicas"] == 1
    assert ep["max_replicas"] == 2  # the example's own default, not the form's

    try_it(page, "text", "Berth speaks. It says a second sentence too.")
    audio = page.locator(".run-output audio")
    expect(audio).to_have_count(1, timeout=WAIT_MS)
    seconds = audio.evaluate(
        """a => new Promise(done => a.readyState >= 1 ? done(a.duration)
            : a.addEventListener('loadedmetadata', () => done(a.duration)))"""
    )
    assert 1.5 < seconds < 15, seconds
    shot(page, "playground-audio")

    # The same inputs, copied as curl, run as pasted.
    page.click(".copy-as button[data-lang=curl]")
    snippet = page.locator(".copy-as pre.snippet")
    expect(snippet).to_contain_text("It says a second sentence too.")
    if shutil.which("curl"):
        done = subprocess.run(
            ["bash", "-c", snippet.inner_text()],
            env={**os.environ, "BERTH_TOKEN": stack.token},
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["output"]["seconds"] > 1.5

    # Streaming: each sentence's sound as it is made.
    page.select_option("select[name=route]", "/speak")
    page.fill("textarea[name=text]", "One. Two. Three.")
    expect(page.locator("input[name=mode][value=stream]")).to_be_checked()
    page.click("button:has-text('Run')")
    expect(page.locator(".run-output ol.chunks audio")).to_have_count(3, timeout=WAIT_MS)
    expect(page.locator(".run-status")).to_contain_text("done: 3 chunks")
    shot(page, "playground-stream")


def _png(width: int, height: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 12):
        draw.line([(i, 0), (width - i, height)], fill=(i % 255, 40, 160), width=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_an_uploaded_image_comes_back_computed(page: Page, stack: Stack, name: str) -> None:
    create(stack, name=name, example="imagefx", min_replicas=1, max_replicas=1)
    page.goto(f"/console/endpoints/{name}#playground")
    file_input = page.locator("input[type=file][name=image]")
    expect(file_input).to_be_visible(timeout=WAIT_MS)
    file_input.set_input_files(
        {"name": "lines.png", "mimeType": "image/png", "buffer": _png(200, 120)}
    )
    expect(page.locator(".preview img")).to_be_visible()
    page.select_option("select[name=effect]", "invert")
    page.click("button:has-text('Run')")
    image = page.locator(".run-output img")
    expect(image).to_have_count(1, timeout=WAIT_MS * 3)  # its first start installs Pillow
    size = image.evaluate(
        """i => new Promise(done => i.complete ? done([i.naturalWidth, i.naturalHeight])
            : i.addEventListener('load', () => done([i.naturalWidth, i.naturalHeight])))"""
    )
    assert size == [200, 120]
    # The picture is the model's: the top-left pixel is the input's, inverted.
    from PIL import Image

    original = Image.open(io.BytesIO(_png(200, 120))).convert("RGB").getpixel((0, 0))
    corner = image.evaluate(
        """i => { const c = document.createElement('canvas'); c.width = 4; c.height = 4;
            const x = c.getContext('2d'); x.drawImage(i, 0, 0);
            return Array.from(x.getImageData(0, 0, 1, 1).data).slice(0, 3); }"""
    )
    assert all(abs(c - (255 - o)) <= 2 for c, o in zip(corner, original, strict=True)), corner
    shot(page, "playground-image")


def test_async_mode_shows_the_job_then_its_output_and_the_jobs_page_lists_it(
    page: Page, stack: Stack, name: str
) -> None:
    create(stack, name=name, example="echo", min_replicas=1, max_replicas=1)
    page.goto(f"/console/endpoints/{name}#playground")
    prompt = page.locator("[name=prompt]")
    expect(prompt).to_be_visible(timeout=WAIT_MS)
    prompt.fill("async hello")
    page.check("input[name=mode][value=async]")
    page.click("button:has-text('Run')")
    expect(page.locator(".run-output dl.job .badge")).to_have_text("completed", timeout=WAIT_MS)
    expect(page.locator(".run-output .output")).to_contain_text("async hello")
    job_id = page.locator(".run-output dl.job code").inner_text()

    page.click("nav >> text=Jobs")
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(row.locator(".badge")).to_have_text("completed")
    row.click()
    page.click("button:has-text('Show the response')")
    expect(page.locator(".job-detail .output")).to_contain_text("async hello")
    shot(page, "jobs")


def test_a_jobs_callback_log_and_sending_it_again(page: Page, stack: Stack, name: str) -> None:
    create(stack, name=name, example="echo", min_replicas=1, max_replicas=1)
    stack.wait_ready(name)
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with stack.client() as c:
            resp = c.post(
                f"/e/{name}/infer",
                json={"prompt": "cb"},
                headers={
                    "X-OctoAI-Async": "1",
                    "X-Berth-Callback-Url": f"http://127.0.0.1:{server.server_port}/hook",
                },
            )
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["response_id"]
        page.goto("/console/jobs")
        row = page.locator(f"tr[data-job='{job_id}']")
        expect(row.locator(".badge").last).to_have_text("delivered", timeout=WAIT_MS)
        row.click()
        log = page.locator(".job-detail .callback-log tbody tr")
        expect(log).to_have_count(1)
        expect(log.first).to_contain_text("204")
        page.click("button:has-text('Send the callback again')")
        expect(page.locator(".job-detail")).to_contain_text("callback sent again")
        expect(log).to_have_count(2, timeout=WAIT_MS)
        assert len(received) == 2 and job_id.encode() in received[1]
        shot(page, "jobs-callback")
    finally:
        server.shutdown()
        server.server_close()


def test_events_and_logs_follow_the_replica(page: Page, stack: Stack, name: str) -> None:
    stack.deploy(name, "probe", min_replicas=1, max_replicas=1)
    page.goto(f"/console/endpoints/{name}")
    page.click("button[data-tab=logs]")
    expect(page.locator("#events")).to_contain_text("replica_ready", timeout=WAIT_MS)
    with stack.client() as c:
        assert c.post(f"/e/{name}/say", json={"text": "hello from the replica"}).status_code == 200
    expect(page.locator("#logs")).to_contain_text("hello from the replica", timeout=WAIT_MS)
    # Charts get points as the recorder samples (once a second here).
    page.click("button[data-tab=overview]")
    expect(page.locator("figure.chart")).to_have_count(4)
    wait_for(
        lambda: (
            len(
                page.locator("figure[data-chart=Replicas] polyline.s1").get_attribute("points")
                or ""
            )
            > 20
            or None
        ),
        30,
        "a replicas line with points",
    )
    shot(page, "endpoint-overview")


def test_editing_an_endpoint_and_errors_next_to_their_fields(
    page: Page, stack: Stack, name: str
) -> None:
    page.goto("/console/new")
    page.fill("input[name=name]", "Not A Name")
    page.click("form.endpoint-form button[type=submit]")
    expect(page.locator("[data-field=name] .field-error")).to_contain_text("DNS label")
    page.fill("input[name=name]", name)
    page.fill("input[name=min_replicas]", "3")
    page.fill("input[name=max_replicas]", "1")
    page.click("form.endpoint-form button[type=submit]")
    expect(page.locator(".endpoint-form .error").last).not_to_be_empty()
    shot(page, "new-endpoint-errors")
    page.fill("input[name=min_replicas]", "0")
    page.click("form.endpoint-form button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/console/endpoints/{name}")

    page.get_by_role("link", name="Edit", exact=True).click()
    page.fill("input[name=max_replicas]", "2")
    page.select_option("select[name=visibility]", "public")
    page.click("form.endpoint-form button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/console/endpoints/{name}")
    expect(page.locator("table.kv")).to_contain_text("0 to 2")
    expect(page.locator("table.kv")).to_contain_text("public")
    expect(page.locator("a:has-text('Public demo page')")).to_be_visible()
    with stack.client() as c:
        ep = c.get(f"/v1/endpoint/{name}").json()
    assert (ep["max_replicas"], ep["visibility"], ep["example"]) == (2, "public", "echo")


def test_a_model_folder_uploaded_from_the_browser(page: Page, stack: Stack, name: str) -> None:
    page.goto("/console/new")
    page.fill("input[name=name]", name)
    page.check("input[name=source][value=folder]")
    page.set_input_files("input[name=folder]", str(ROOT / "tests" / "models" / "probe"))
    page.fill("input[name=min_replicas]", "1")
    page.click("form.endpoint-form button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/console/endpoints/{name}", timeout=WAIT_MS)
    stack.wait_ready(name)
    with stack.client() as c:
        resp = c.post(f"/e/{name}/infer", json={"prompt": "from a folder"})
    assert resp.status_code == 200 and resp.json()["output"]["prompt"] == "from a folder"


def test_an_image_endpoint_with_a_registry_credential_and_a_secret(
    page: Page, stack: Stack, name: str
) -> None:
    key = f"cred-{name[-4:]}"
    secret = f"CONSOLE_{name[-4:].upper()}"
    with stack.client() as c:
        made = c.post(
            "/v1/registry-credential", json={"key": key, "username": "u", "password": "p"}
        )
        assert made.status_code == 201, made.text
        assert c.post("/v1/secret", json={"key": secret, "value": "v"}).status_code == 201
    try:
        page.goto("/console/new")
        page.fill("input[name=name]", name)
        page.check("input[name=source][value=image]")
        page.fill("input[name=image_url]", "registry.test/team/model:1.0")
        page.fill("input[name=port]", "9000")
        page.select_option("select[name=registry_credential]", key)
        page.check(f"input[name=container_secrets][value={secret}]")
        page.click("form.endpoint-form button[type=submit]")
        expect(page).to_have_url(f"{stack.url}/console/endpoints/{name}")
        expect(page.locator("table.kv")).to_contain_text("image: registry.test/team/model:1.0")
        expect(page.locator("table.kv")).to_contain_text(key)
        with stack.client() as c:
            ep = c.get(f"/v1/endpoint/{name}").json()
        assert ep["image_url"] == "registry.test/team/model:1.0" and ep["port"] == 9000
        assert ep["registry_credential"] == key and ep["container_secrets"] == [secret]
    finally:
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{name}")
            c.delete(f"/v1/registry-credential/{key}")
            c.delete(f"/v1/secret/{secret}")


def test_a_queued_job_is_cancelled_from_the_jobs_page(page: Page, stack: Stack, name: str) -> None:
    create(stack, name=name, example="echo", min_replicas=1, max_replicas=1)
    stack.wait_ready(name)
    with stack.client() as c:
        busy = c.post(
            f"/e/{name}/infer", json={"prompt": "a", "sleep": 20}, headers={"X-OctoAI-Async": "1"}
        ).json()["response_id"]
        queued = c.post(
            f"/e/{name}/infer", json={"prompt": "b"}, headers={"X-OctoAI-Async": "1"}
        ).json()["response_id"]
    try:
        page.goto("/console/jobs")
        page.select_option("select[name=endpoint]", name)
        row = page.locator(f"tr[data-job='{queued}']")
        expect(row.locator(".badge")).to_have_text("pending", timeout=WAIT_MS)
        row.click()
        page.click(".job-detail button:has-text('Cancel')")
        expect(row.locator(".badge")).to_have_text("cancelled", timeout=WAIT_MS)
        with stack.client() as c:
            assert c.get(f"/v1/requests/{queued}").json()["status"] == "cancelled"
    finally:
        with stack.client() as c:
            c.delete(f"/v1/requests/{busy}")


def test_the_api_reference_works_offline(page: Page) -> None:
    page.goto("/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=WAIT_MS)
    assert page.locator(".opblock").count() > 30
    expect(page.locator("#swagger-ui")).to_contain_text("/v1/endpoint")
