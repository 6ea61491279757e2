"""Console, System page: queue depths, workers alive per queue, outbox backlog, beat leader; only
for all-scopes keys (it describes the whole platform)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.conftest import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_system_page_shows_queues_workers_outbox_and_beat(browser: Any, console: Any) -> None:
    page = sign_in(browser, console)
    page.goto(console.url + "/console/system")
    for queue in ("platform", "imports", "webhooks"):  # the test worker consumes these three
        assert page.locator(f"#queues tr[data-queue='{queue}'] .workers").inner_text() == "1"
    assert page.locator("#queues tr[data-queue='reports'] .workers").inner_text() == "0"
    assert "platform+imports+webhooks" in page.locator("#workers").inner_text()
    assert page.locator("#outbox tr[data-domain='platform'] .unsent").inner_text().isdigit()
    assert "No leader" in page.locator("#beat-leader").inner_text()  # no beat in this test
    console.shot(page, "system")
    page.context.close()

    limited = console.new_key(tenant="acme", scopes=("operations:read",))
    page = sign_in(browser, console, limited)
    response = page.goto(console.url + "/console/system")
    assert response is not None and response.status == 403
    assert "PERMISSION_DENIED" in page.locator("h1").inner_text()
    page.context.close()
