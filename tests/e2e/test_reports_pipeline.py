"""End to end: `conveyor relay` fans integration events out of the imports and webhooks outboxes
to a `conveyor worker --queues reports` prefork subprocess, which tallies each event once (each
is published twice) and generates the report the API asked for."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from app.container import Container
from app.db import EngineRegistry
from tests.support.ops import wait_done
from tests.support.reports import delivery, emit, import_completed, import_failed, wait_applied

pytestmark = pytest.mark.e2e

DAY = dt.datetime(2024, 2, 29, 8, 0, tzinfo=dt.UTC)  # a day no other test writes


async def test_relay_and_reports_worker_processes_tally_once_and_serve_the_report(
    stack, database_url
):
    worker = stack.worker(queues="reports", concurrency=2, pool="prefork")
    stack.relay()
    events = [
        import_completed("default", "e2e-ds", 120, 4, time=DAY),
        import_completed("default", "e2e-ds", 30, 0, time=DAY + dt.timedelta(hours=3)),
        import_failed("default", "e2e-ds", time=DAY),
        import_completed("default", "e2e-other", 5, 5, time=DAY),
        delivery("default", "e2e-ep", latency_ms=80.0, time=DAY),
        delivery("default", "e2e-ep", "Dead", time=DAY),
    ]
    registry = EngineRegistry(stack.settings)
    try:
        await emit(Container(stack.settings, registry), events, copies=2)
    finally:
        await registry.dispose()
    await wait_applied(database_url, [e.id for e in events], timeout=60)

    day = DAY.date().isoformat()
    response = await stack.client.post(
        "/v1/reports",
        json={"type": "dataset_daily", "period": {"start_date": day, "end_date": day}},
    )
    assert response.status_code == 200, response.text
    op = response.json()
    done = await wait_done(stack.client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    download = await stack.client.get(done["response"]["download_uri"])
    assert download.status_code == 200
    rows = {r["dataset_id"]: r for r in csv.DictReader(io.StringIO(download.text))}
    assert set(rows) == {"e2e-ds", "e2e-other"}
    ds = rows["e2e-ds"]
    assert (ds["imports_completed"], ds["imports_failed"]) == ("2", "1")
    assert (ds["rows_accepted"], ds["rows_rejected"], ds["rows_total"]) == ("150", "4", "154")
    assert rows["e2e-other"]["rows_rejected"] == "5"
    log = worker.log()
    assert "ForkPoolWorker" in log
    assert "Traceback" not in log
