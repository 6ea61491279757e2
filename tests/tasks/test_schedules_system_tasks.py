"""System schedules' tasks on a real worker: fired through the platform outbox, they run the
relay sweep and the purge of old done operations and schedule runs."""

from __future__ import annotations

import asyncio

from tests.support.ops import query


async def fire(client, database_url, schedule_id: str, operator_headers) -> str:
    await client.get("/v1/schedules")  # the system schedules exist once the API is used
    # System schedules are the operator's to run (a tenant key gets 403).
    response = await client.post(f"/v1/schedules/{schedule_id}:run", headers=operator_headers)
    assert response.status_code == 200, response.text
    [row] = await query(
        database_url,
        "SELECT task_id FROM platform.outbox WHERE task_id LIKE :p ORDER BY created_time DESC"
        " LIMIT 1",
        p=f"schedule:{schedule_id}:%",
    )
    return row.task_id


async def result(celery_app, task_id: str) -> dict:
    return await asyncio.to_thread(celery_app.AsyncResult(task_id).get, timeout=30)


async def test_purge_deletes_old_done_operations_and_runs(
    client, clean_db, database_url, celery_app, celery_worker, operator_headers
):
    await query(
        database_url,
        "INSERT INTO platform.schedule_runs (schedule_id, fire_time, tenant, workflow, args,"
        " state, create_time, fired_by) VALUES ('old', now() - interval '400 days', 'default',"
        " 'platform.ping', '{}', 'STARTED', now() - interval '400 days', 'test')",
    )
    task_id = await fire(client, database_url, "system.purge-done", operator_headers)
    outcome = await result(celery_app, task_id)
    assert outcome["schedule_runs"] >= 1 and "operations" in outcome
    assert (
        await query(database_url, "SELECT 1 FROM platform.schedule_runs WHERE schedule_id = 'old'")
        == []
    )


async def test_relay_sweep_publishes_left_behind_outbox_rows(
    client, clean_db, database_url, celery_app, celery_worker, operator_headers
):
    # A row the fast path never published (say its process crashed after the commit).
    await query(
        database_url,
        "INSERT INTO platform.outbox (id, task_name, queue, task_id, created_time, available_time)"
        " VALUES (gen_random_uuid(), 'platform.sweep', 'platform', 'left-behind',"
        " now() - interval '10 seconds', now() - interval '10 seconds')",
    )
    task_id = await fire(client, database_url, "system.outbox-relay", operator_headers)
    outcome = await result(celery_app, task_id)
    assert outcome["published"] >= 1
    [row] = await query(
        database_url, "SELECT sent_time FROM platform.outbox WHERE task_id = 'left-behind'"
    )
    assert row.sent_time is not None
