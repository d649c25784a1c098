"""Who sees and runs what in the console (a real browser, tests/console_browser.py): signing in
and out, a token that stops working, a new token shown once, write-only secrets and
registry credentials, public and private demo pages, and a model's markup shown as text,
never run."""

from __future__ import annotations

import httpx
import pytest

from tests import console_browser
from tests.conftest import Stack
from tests.console_browser import WAIT_MS, context_for, create, shot, try_it

playwright_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

pytestmark = pytest.mark.e2e

# The harness's fixtures, under the names the tests ask for.
browser, page = console_browser.browser, console_browser.page


# -- signing in --------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_a_right_one_signs_in(browser: Browser, stack: Stack) -> None:
    context, watch = context_for(browser, stack, None)
    tab = watch.page(context.new_page())
    try:
        tab.goto("/console/jobs")
        expect(tab).to_have_url(f"{stack.url}/console/signin")
        tab.fill("input[name=token]", "berth_not-a-real-token")
        tab.click("button[type=submit]")
        expect(tab.get_by_role("alert")).to_contain_text("refused")
        assert tab.evaluate("sessionStorage.getItem('berth.token')") is None
        shot(tab, "signin-refused")

        tab.fill("input[name=token]", stack.token)
        tab.click("button[type=submit]")
        expect(tab).to_have_url(f"{stack.url}/console/jobs")  # where it was going
        expect(tab.locator("h1")).to_have_text("Jobs")
        assert tab.evaluate("document.cookie") == ""
        assert not [u for u in watch.urls if stack.token in u], "the token went into a URL"

        tab.click("button.signout")
        expect(tab).to_have_url(f"{stack.url}/console/signin")
        assert tab.evaluate("sessionStorage.getItem('berth.token')") is None
        watch.check()
    finally:
        context.close()


def test_a_token_that_stops_working_sends_the_tab_to_sign_in(
    browser: Browser, stack: Stack
) -> None:
    with stack.client() as c:
        made = c.post("/v1/tokens", json={"name": "short-lived", "scopes": ["admin"]}).json()
    context, watch = context_for(browser, stack, made["token"])
    tab = watch.page(context.new_page())
    try:
        tab.goto("/console/tokens")
        expect(tab.locator("#tokens")).to_contain_text("short-lived")
        with stack.client() as c:
            assert c.delete(f"/v1/tokens/{made['id']}").status_code == 200
        tab.goto("/console/secrets")
        expect(tab).to_have_url(f"{stack.url}/console/signin", timeout=WAIT_MS)
        expect(tab.get_by_role("alert")).to_contain_text("sign in again")
        watch.check()
    finally:
        context.close()


# -- untrusted output --------------------------------------------------------------------


def test_markup_from_a_model_is_shown_as_text_never_run(
    page: Page, stack: Stack, name: str
) -> None:
    stack.deploy(
        name, "markup", min_replicas=1, max_replicas=1, description="<img src=x onerror=alert(1)>"
    )
    stack.wait_ready(name)
    page.goto(f"/console/endpoints/{name}")
    expect(page.locator("table.kv")).to_contain_text("<img src=x onerror=alert(1)>")
    try_it(page, "prompt", "<script>window.__xss='prompt'</script><b>bold</b>")
    out = page.locator(".run-output .output")
    expect(out).to_contain_text("<script>window.__xss='script'</script>", timeout=WAIT_MS)
    expect(out).to_contain_text("<img src=x onerror=")
    page.locator(".run-output details.raw summary").click()

    page.select_option("select[name=route]", "/chunks")
    page.click("button:has-text('Run')")
    expect(page.locator(".run-output .streamed")).to_contain_text(
        "<iframe srcdoc=", timeout=WAIT_MS
    )

    assert page.evaluate("window.__xss") is None
    for tag in ("script", "iframe", "svg", "b", "img[src=x]", "a[href^=javascript]"):
        count = page.locator(f"#main .run-output {tag}").count()
        assert count == 0, f"a <{tag}> from the model is in the page"
    # The page's policy stops what slips through: a model string given to innerHTML throws.
    blocked = page.evaluate(
        """() => { try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return false; }
            catch (e) { return e.name; } }"""
    )
    assert blocked == "TypeError"
    shot(page, "xss")


# -- tokens, secrets, registry credentials -----------------------------------------------


def test_a_new_token_is_shown_once_and_works(page: Page, stack: Stack) -> None:
    page.goto("/console/tokens")
    page.fill("input[name=name]", "from-the-console")
    page.click("button:has-text('Create token')")
    secret = page.locator("#new-token")
    expect(secret).to_be_visible()
    value = secret.inner_text()
    shot(page, "token-once")
    with httpx.Client(base_url=stack.url, timeout=10) as c:
        ok = c.get("/v1/requests/nope", headers={"Authorization": f"Bearer {value}"})
        assert ok.status_code == 404  # a valid (inference) token: the job is just not there
    expect(page.locator("#tokens")).to_contain_text("from-the-console")
    page.reload()
    expect(page.locator("#tokens")).to_contain_text("from-the-console")
    assert value not in page.content()
    page.locator("tr[data-token='from-the-console'] button:has-text('Delete')").click()
    expect(page.locator("tr[data-token='from-the-console']")).to_have_count(0)


def test_secrets_and_credentials_are_write_only(page: Page, stack: Stack) -> None:
    page.goto("/console/secrets")
    page.fill("input[name=key]", "CONSOLE_SECRET")
    page.fill("input[name=value]", "hunter2-value")
    page.click("button:has-text('Save')")
    expect(page.locator("tr[data-key=CONSOLE_SECRET]")).to_be_visible()
    page.fill("input[name=key]", "9bad")
    page.fill("input[name=value]", "x")
    page.click("button:has-text('Save')")
    expect(page.locator("[data-field=key] .field-error")).to_contain_text("environment variable")
    page.reload()
    assert "hunter2-value" not in page.content()
    shot(page, "secrets")

    page.goto("/console/credentials")
    page.fill("input[name=key]", "console-registry")
    page.fill("input[name=username]", "robot")
    page.fill("input[name=password]", "registry-password-value")
    page.click("button:has-text('Save')")
    row = page.locator("tr[data-key=console-registry]")
    expect(row).to_contain_text("robot")
    assert "registry-password-value" not in page.content()
    row.locator("button:has-text('Delete')").click()
    expect(row).to_have_count(0)
    page.goto("/console/secrets")
    page.locator("tr[data-key=CONSOLE_SECRET] button:has-text('Delete')").click()
    expect(page.locator("tr[data-key=CONSOLE_SECRET]")).to_have_count(0)
    with stack.client() as c:
        assert "CONSOLE_SECRET" not in c.get("/v1/secrets").json()


# -- public demo pages, and the API reference --------------------------------------------


def test_a_public_demo_needs_no_token_and_a_private_one_says_so(
    browser: Browser, stack: Stack, name: str
) -> None:
    create(stack, name=name, example="echo", min_replicas=1, max_replicas=1, visibility="public")
    private = f"{name[:50]}-p"
    create(stack, name=private, example="echo", min_replicas=0, max_replicas=1)
    context, watch = context_for(browser, stack, None)
    tab = watch.page(context.new_page())
    try:
        tab.goto(f"/demo/{name}")
        prompt = tab.locator("[name=prompt]")
        expect(prompt).to_be_visible(timeout=WAIT_MS)
        prompt.fill("from anyone")
        tab.click("button:has-text('Run')")
        expect(tab.locator(".run-output .output")).to_contain_text("from anyone", timeout=WAIT_MS)
        assert tab.locator(".copy-as").count() == 0
        shot(tab, "demo")
        tab.goto(f"/demo/{private}")
        expect(tab.locator("#main .error")).to_contain_text("not public", timeout=WAIT_MS)
        watch.check()
    finally:
        context.close()
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{private}")
