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


def test_list_is_newest_first_and_filters_by_domain_and_type(browser: Any, console: Any) -> None:
    cv = console.client()
    first = cv.pings.create("oldest of three")
    ep = cv.endpoints.create("http://127.0.0.1:9/ops-filter", ["ops.filter"])
    replay = cv.endpoints.replay(ep.name, "2020-01-01T00:00:00Z")  # webhooks.replay
    last = cv.pings.create("newest of three")
    for op in (first, replay, last):
        assert op.wait(timeout=60).state == "SUCCEEDED", op
    mine = {first.name, replay.name, last.name}

    page = sign_in(browser, console)

    def rows() -> list[tuple[str, str, str]]:
        """(name, "domain.type", created) of each row shown, top to bottom."""
        cells = page.locator("#operations tbody tr[data-name]").evaluate_all(
            "rs => rs.map(r => [r.dataset.name, r.cells[1].textContent, r.cells[5].textContent])"
        )
        return [(name, kind.strip(), created.strip()) for name, kind, created in cells]

    def filter_by(domain: str, type_: str) -> list[tuple[str, str, str]]:
        page.fill("form.filters input[name=domain]", domain)
        page.fill("form.filters input[name=type]", type_)
        page.click("form.filters:not(#ping-form) button")
        page.wait_for_load_state()
        assert page.locator("input[name=domain]").input_value() == domain  # the filter is kept
        assert page.locator("input[name=type]").input_value() == type_
        return rows()

    # Newest first: these three are the newest operations, in reverse order of creation, and the
    # Created column never goes up down the page.
    shown = rows()
    assert [name for name, _, _ in shown[:3]] == [last.name, replay.name, first.name], shown
    created = [c for _, _, c in shown]
    assert created == sorted(created, reverse=True), created
    kinds = {kind for _, kind, _ in shown}
    assert {"platform.ping", "webhooks.replay"} <= kinds  # unfiltered: both domains and types

    by_domain = filter_by("webhooks", "")
    assert by_domain and {kind.split(".")[0] for _, kind, _ in by_domain} == {"webhooks"}
    assert {name for name, _, _ in by_domain} & mine == {replay.name}
    assert page.url.endswith("domain=webhooks&type=&state=")

    by_domain = filter_by("platform", "")
    assert by_domain and {kind.split(".")[0] for _, kind, _ in by_domain} == {"platform"}
    assert {name for name, _, _ in by_domain} & mine == {first.name, last.name}
    assert [n for n, _, _ in by_domain if n in mine] == [last.name, first.name]  # newest first

    by_type = filter_by("", "replay")
    assert by_type and {kind for _, kind, _ in by_type} == {"webhooks.replay"}
    assert {name for name, _, _ in by_type} & mine == {replay.name}

    by_type = filter_by("", "ping")
    assert by_type and {kind for _, kind, _ in by_type} == {"platform.ping"}
    assert {name for name, _, _ in by_type} & mine == {first.name, last.name}

    assert filter_by("platform", "replay") == []  # both filters apply together
    assert "match the filter" in page.locator("#operations td.empty").inner_text()
    page.context.close()
