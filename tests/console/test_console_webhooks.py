"""Console, Webhooks page: endpoints with breaker state, deliveries by state, attempts, retrying
a DEAD delivery, rotating the secret."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.conftest import sign_in
from tests.support.webhooks import ERROR, OK, Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def wait_state(cv: Any, endpoint: str, state: str, timeout: float = 60) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(cv.deliveries.list(endpoint, f"state = {state}"))
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(
        f"no {state} delivery within {timeout}s: {list(cv.deliveries.list(endpoint))}"
    )


def test_retry_a_dead_delivery_and_rotate_the_secret(browser: Any, console: Any) -> None:
    cv = console.client()
    with Receiver() as receiver:
        receiver.set_default("/hook", ERROR)
        ep = cv.endpoints.create(receiver.url("/hook"), ["order.paid"], description="shop")
        cv.events.publish("order.paid", {"order": 1})
        [dead] = wait_state(cv, ep.name, "DEAD")  # one attempt, then DEAD (empty retry schedule)

        page = sign_in(browser, console)
        page.goto(console.url + "/console/endpoints")
        assert page.locator("#endpoints tbody tr", has_text=ep.url).count() == 1
        page.click(f"text={ep.url}")
        page.select_option("#delivery-filter select", "DEAD")
        page.click("#delivery-filter button")
        assert page.locator(f"#deliveries tr[data-id='{dead.id}']").count() == 1
        page.select_option("#delivery-filter select", "SUCCEEDED")
        page.click("#delivery-filter button")
        assert page.locator("#deliveries td.empty").count() == 1
        page.select_option("#delivery-filter select", "DEAD")
        page.click("#delivery-filter button")
        console.shot(page, "endpoint")
        page.click(f"#deliveries tr[data-id='{dead.id}'] a")
        assert page.locator("#attempts tbody tr").count() == 1, page.content()[:1500]
        assert "500" in page.locator("#attempts tbody tr").inner_text()
        assert "boom" in page.locator("#attempts tbody tr").inner_text()  # response snippet

        receiver.set_default("/hook", OK)
        page.click("#retry")
        page.wait_for_url(f"**/deliveries/{dead.id}")
        [done] = wait_state(cv, ep.name, "SUCCEEDED")
        assert done.id == dead.id and done.attempts == 2
        assert receiver.count("/hook") == 2
        page.reload()
        assert page.locator("#state").inner_text() == "SUCCEEDED"
        assert page.locator("#attempts tbody tr").count() == 2
        console.shot(page, "delivery")

        page.goto(f"{console.url}/console/endpoints/{ep.id}")
        page.click("#rotate button")
        secret = page.locator("#new-secret code").inner_text()
        assert secret.startswith("whsec_") and secret != ep.secret
        page.goto(f"{console.url}/console/endpoints/{ep.id}")
        page.fill("#replay input[name=since]", "2020-01-01T00:00")
        page.click("#replay button")
        page.wait_for_url("**/console/operations/webhooks.*")
        assert "webhooks." in page.locator("h1").inner_text()
        page.goto(console.url + "/console/endpoints")
        console.shot(page, "endpoints")
        page.context.close()


def test_replay_sends_a_dead_delivery_again(browser: Any, console: Any) -> None:
    cv = console.client()
    with Receiver() as receiver:
        receiver.set_default("/replay", ERROR)
        ep = cv.endpoints.create(receiver.url("/replay"), ["order.refunded"])
        cv.events.publish("order.refunded", {"order": 7})
        [dead] = wait_state(cv, ep.name, "DEAD")
        [sent] = receiver.received("/replay")

        receiver.set_default("/replay", OK)
        page = sign_in(browser, console)
        page.goto(f"{console.url}/console/endpoints/{ep.id}")
        page.fill("#replay input[name=since]", "2020-01-01T00:00")
        page.click("#replay button")
        page.wait_for_url("**/console/operations/webhooks.*")
        assert "webhooks.replay" in page.locator("h1").inner_text()
        page.wait_for_selector("#response", timeout=30000)  # reloads once the replay ended
        assert page.locator("#state").inner_text() == "SUCCEEDED"
        assert '"replayed": 1' in page.locator("#response").inner_text()

        # The receiver got the same event a second time, and the delivery ended SUCCEEDED.
        again = receiver.wait_for("/replay", 2)[1]
        assert again.body == sent.body
        [done] = wait_state(cv, ep.name, "SUCCEEDED")
        assert done.id == dead.id and done.attempts == 2
        assert receiver.count("/replay") == 2

        page.goto(f"{console.url}/console/endpoints/{ep.id}?state=SUCCEEDED")
        row = page.locator(f"#deliveries tr[data-id='{dead.id}']")
        assert row.count() == 1
        assert row.locator("td").nth(3).inner_text().strip() == "2"  # Attempts
        assert row.locator("td").nth(4).inner_text().strip() == "200"  # Last status
        row.locator("a").click()
        assert page.locator("#state").inner_text() == "SUCCEEDED"
        attempts = page.locator("#attempts tbody tr")
        assert attempts.count() == 2
        assert "500" in attempts.nth(0).inner_text()
        assert "200" in attempts.nth(1).inner_text()
        page.context.close()


def test_endpoint_pages_show_the_breaker_state(browser: Any, console: Any) -> None:
    import time

    cv = console.client()
    threshold = console.settings.webhooks.breaker_failure_threshold
    with Receiver() as receiver:
        receiver.set_default("/breaker", ERROR)
        ep = cv.endpoints.create(receiver.url("/breaker"), ["stock.low"], description="breaker")
        page = sign_in(browser, console)

        def shown() -> tuple[str, str, str]:
            """The breaker as the list page and the endpoint page show it."""
            page.goto(console.url + "/console/endpoints")
            row = page.locator("#endpoints tbody tr", has_text=ep.url)
            listed = row.locator("[data-breaker]").inner_text().strip()
            failures = row.locator("td").nth(4).inner_text().strip()
            page.goto(f"{console.url}/console/endpoints/{ep.id}")
            return listed, failures, page.locator("#breaker").inner_text().strip()

        assert shown() == ("CLOSED", "0", "CLOSED")
        assert "open until" not in page.locator("#breaker").locator("..").inner_text()

        for n in range(threshold):  # one attempt each (no retries): `threshold` failures in a row
            cv.events.publish("stock.low", {"n": n})
        deadline = time.monotonic() + 60
        while cv.endpoints.get(ep.name).breaker.state != "OPEN":
            assert time.monotonic() < deadline, cv.endpoints.get(ep.name)
            time.sleep(0.3)
        assert receiver.count("/breaker") == threshold

        assert shown() == ("OPEN", str(threshold), "OPEN")
        cell = page.locator("#breaker").locator("..").inner_text()
        assert f"{threshold} failures in a row" in cell
        assert "open until 20" in cell
        assert "open" in (page.locator("#breaker").get_attribute("class") or "").split()
        page.context.close()
