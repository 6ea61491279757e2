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
