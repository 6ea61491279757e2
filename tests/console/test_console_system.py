"""Console, System page: queue depths, workers alive per queue, outbox backlog, beat leader; only
for all-scopes keys (it describes the whole platform)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from tests.conftest import Proc, run_async
from tests.console.conftest import sign_in
from tests.support.ops import query

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


def test_system_page_shows_real_queue_depths_and_outbox_backlog(browser: Any, console: Any) -> None:
    import redis

    # Nothing consumes the reports queue here: messages put on it stay there.
    broker = redis.Redis.from_url(str(console.settings.broker_url))
    marker = f"console-test-{uuid.uuid4()}"
    # A reports outbox row the relay leaves alone for a day, written two minutes ago.
    database_url = console.settings.database_for("reports")
    row_id = uuid.uuid4()
    page = sign_in(browser, console)

    def shown() -> tuple[str, str, str, str]:
        page.goto(console.url + "/console/system")
        queue = page.locator("#queues tr[data-queue='reports']")
        outbox = page.locator("#outbox tr[data-domain='reports']")
        return (
            queue.locator(".waiting").inner_text().strip(),
            page.locator("#queues tr[data-queue='platform'] .waiting").inner_text().strip(),
            outbox.locator(".unsent").inner_text().strip(),
            outbox.locator("td").nth(2).inner_text().strip(),
        )

    try:
        waiting, platform_waiting, unsent, age = shown()
        assert waiting.isdigit() and platform_waiting.isdigit(), (waiting, platform_waiting)
        assert unsent.isdigit(), unsent
        broker.rpush("reports", *[f"{marker}-{i}" for i in range(3)])
        run_async(
            query(
                database_url,
                "INSERT INTO reports.outbox (id, task_name, queue, task_id, created_time,"
                " available_time) VALUES (:id, 'reports.console_test', 'reports', :task,"
                " now() - interval '120 seconds', now() + interval '1 day')",
                id=row_id,
                task=str(row_id),
            )
        )
        now_waiting, _, now_unsent, now_age = shown()
        assert int(now_waiting) == int(waiting) + 3
        assert int(now_unsent) == int(unsent) + 1
        match = re.fullmatch(r"(\d+(?:\.\d)?) s ago", now_age)
        assert match, now_age
        assert float(match.group(1)) >= 119.5  # the oldest unsent row's age, not a placeholder
        if unsent == "0":
            assert age == "-"  # no backlog, no age
            assert float(match.group(1)) < 600  # this row's age
    finally:
        for i in range(3):
            broker.lrem("reports", 0, f"{marker}-{i}")
        broker.close()
        run_async(query(database_url, "DELETE FROM reports.outbox WHERE id = :id", id=row_id))
    after = shown()
    assert (after[0], after[2]) == (waiting, unsent)  # back to where it was
    page.context.close()


def test_system_page_shows_the_beat_leader_while_a_beat_runs(browser: Any, console: Any) -> None:
    name = f"console-beat-{uuid.uuid4().hex[:6]}"
    env = {**console.env, "CONVEYOR_SCHEDULES__LEASE_SECONDS": "3"}  # lapses soon after it stops
    page = sign_in(browser, console)
    beat = Proc(["beat", "--name", name], env, console.shots / f"{name}.log")

    def leader() -> str:
        page.goto(console.url + "/console/system")
        return page.locator("#beat-leader").inner_text()

    try:
        beat.wait_for_log(f"beat {name} started", timeout=60)
        deadline = time.monotonic() + 30
        while name not in leader():
            assert time.monotonic() < deadline, leader()
            page.wait_for_timeout(300)
        assert leader().startswith(f"Leader: {name}")
        assert "lease until 20" in leader()
        node = page.locator("#beats tbody tr", has_text=name)
        assert node.count() == 1
        assert node.locator("td").nth(1).inner_text().strip() == "yes"
    finally:
        beat.stop()
    # Once the beat is gone and its lease lapsed, the page says no beat leads.
    deadline = time.monotonic() + 30
    while "No leader" not in leader():
        assert time.monotonic() < deadline, leader()
        page.wait_for_timeout(500)
    page.context.close()
