"""Console, Schedules page: next run, pause/resume, Run now and how the run's operation ended."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.conftest import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_pause_resume_and_run_now_shows_the_outcome(browser: Any, console: Any) -> None:
    cv = console.client()
    sched = cv.schedules.create(
        "platform.ping", interval_seconds=3600, args={"message": "tick"}, display_name="hourly"
    )
    page = sign_in(browser, console)
    page.goto(console.url + "/console/schedules")
    page.click("text=hourly")
    assert page.locator("#state").inner_text() == "ACTIVE"
    assert page.locator("#next-run").inner_text().startswith("20")
    page.click("#pause")
    assert page.locator("#state").inner_text() == "PAUSED"
    assert cv.schedules.get(sched.name).enabled is False
    page.click("#resume")
    assert page.locator("#state").inner_text() == "ACTIVE"
    assert cv.schedules.get(sched.name).enabled is True

    page.click("#run-now")
    [run] = cv.schedules.runs(sched.name)
    assert run.manual and run.operation
    cv.operations.wait(run.operation, timeout=60)
    page.reload()
    assert page.locator("#runs tbody tr").count() == 1
    assert "SUCCEEDED" in page.locator("#runs td.outcome").inner_text()
    console.shot(page, "schedule")
    page.goto(console.url + "/console/schedules")
    console.shot(page, "schedules")
    page.context.close()
