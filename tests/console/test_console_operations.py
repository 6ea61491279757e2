"""Console, Operations page, in headless chromium: sign in, a ping's bar reaching 100%,
cancelling a long one, and a second tenant seeing none of the first tenant's operations."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.console.conftest import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_sign_in_rejects_a_bad_key_and_shows_the_keys_tenant(browser: Any, console: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(console.url + "/console/login")
    page.fill("input[name=api_key]", "cvk_nope_nope")
    page.click("button[type=submit]")
    assert page.locator("p.error").is_visible()
    console.shot(page, "login")
    cookies = context.cookies()
    assert not any(c["name"] == "conveyor_console" for c in cookies)
    context.close()

    page = sign_in(browser, console)
    assert page.locator("#tenant").inner_text() == "acme"
    [cookie] = [c for c in page.context.cookies() if c["name"] == "conveyor_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert console.key not in cookie["value"]  # signed and encoded, not the key in clear text
    page.context.close()


def test_ping_bar_reaches_100_percent_live(browser: Any, console: Any) -> None:
    page = sign_in(browser, console)
    page.fill("#ping-form input[name=message]", "from the browser")
    page.fill("#ping-form input[name=sleep_seconds]", "2")
    page.fill("#ping-form input[name=steps]", "4")
    page.click("#ping-form button")
    page.wait_for_url(re.compile(r".*/console/operations/platform\..*"))
    bar = page.locator(".big .bar")
    seen = set()
    # Poll what the page shows while the script updates it: it moves through values to 100.
    for _ in range(200):
        seen.add(int(bar.get_attribute("aria-valuenow") or 0))
        if 100 in seen:
            break
        page.wait_for_timeout(100)
    assert 100 in seen, seen
    assert len(seen) >= 2, seen  # it was seen moving, not rendered finished
    page.wait_for_selector("#response")  # the page reloads once done, with the response
    assert "pong: from the browser" in page.locator("#response").inner_text()
    assert page.locator("#state").inner_text() == "SUCCEEDED"
    assert page.locator("#correlation").inner_text() != "-"
    assert int(page.locator("#dispatches").inner_text()) >= 1
    console.shot(page, "operation")
    page.goto(console.url + "/console/operations")
    console.shot(page, "operations")
    page.context.close()


def test_cancel_a_long_ping_from_its_page(browser: Any, console: Any) -> None:
    op = console.client().pings.create("long", sleep_seconds=60, steps=60)
    page = sign_in(browser, console)
    page.goto(f"{console.url}/console/operations/{op.id}")
    page.wait_for_function(
        "document.querySelector('#state').textContent === 'RUNNING'", timeout=30000
    )
    page.click("#cancel")
    page.wait_for_function(
        "document.querySelector('#state').textContent === 'CANCELLED'", timeout=30000
    )
    page.wait_for_selector(".big:not([data-reload-when-done])")  # reloaded once it ended
    assert console.client().operations.get(op.name).state == "CANCELLED"
    # The list filters by state.
    page.goto(console.url + "/console/operations?state=CANCELLED")
    assert page.locator(f"tr[data-name='{op.name}']").count() == 1
    page.goto(console.url + "/console/operations?state=SUCCEEDED")
    assert page.locator(f"tr[data-name='{op.name}']").count() == 0
    page.context.close()


def test_another_tenants_key_sees_none_of_acmes_things(browser: Any, console: Any) -> None:
    cv = console.client()
    acme = cv.pings.create("acme only")
    ds = cv.datasets.create("acme-data", [{"name": "id", "type": "string", "required": True}], "id")
    ep = cv.endpoints.create("http://127.0.0.1:9/acme", ["acme.event"])
    sched = cv.schedules.create("platform.ping", interval_seconds=3600, enabled=False)
    other = console.new_key(tenant="globex")
    page = sign_in(browser, console, other)
    assert page.locator("#tenant").inner_text() == "globex"
    assert page.locator("#operations td.empty").count() == 1
    for path, table in (("datasets", "#datasets"), ("endpoints", "#endpoints")):
        page.goto(f"{console.url}/console/{path}")
        assert page.locator(f"{table} td.empty").count() == 1, path
    page.goto(f"{console.url}/console/schedules")  # system schedules are shown to every tenant
    assert page.locator(f"#schedules tr[data-id='{sched.id}']").count() == 0
    for path in (
        f"operations/{acme.id}",
        f"datasets/{ds.id}",
        f"endpoints/{ep.id}",
        f"schedules/{sched.id}",
    ):
        response = page.goto(f"{console.url}/console/{path}")
        assert response is not None and response.status == 404, path
        assert "NOT_FOUND" in page.locator("h1").inner_text()
    page.context.close()


def test_forms_without_the_csrf_token_are_refused(browser: Any, console: Any) -> None:
    op = console.client().pings.create("keep", sleep_seconds=30, steps=30)
    page = sign_in(browser, console)
    response = page.request.post(
        f"{console.url}/console/operations/{op.id}/cancel", form={"csrf": "forged"}
    )
    assert response.status == 403
    assert console.client().operations.get(op.name).state != "CANCELLED"
    console.client().operations.cancel(op.name)
    page.context.close()


def test_retry_a_failed_operation_from_its_page(browser: Any, console: Any) -> None:
    # task_max_retries=3 in tests: 4 failing attempts end FAILED; the 5th (the Retry) succeeds.
    op = console.client().pings.create("flaky", fail_attempts=4)
    failed = op.wait(timeout=60)
    assert failed.state == "FAILED", failed
    page = sign_in(browser, console)
    page.goto(f"{console.url}/console/operations/{op.id}")
    assert "UNAVAILABLE" in page.locator("#error").inner_text()
    page.click("#retry")
    page.wait_for_selector("#response", timeout=30000)  # reloads when the new attempt ends
    assert page.locator("#state").inner_text() == "SUCCEEDED"
    assert int(page.locator("#attempts").inner_text()) == 5
    page.context.close()
