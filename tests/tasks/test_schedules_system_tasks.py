"""System schedules' tasks on a real worker: fired through the platform outbox, they run the
relay sweep and the purge of old done operations and schedule runs."""

from __future__ import annotations

import asyncio
import pathlib

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
    assert isinstance(outcome["published"], int)
    # The relay run's own count is no oracle: under load the relay task may claim its own
    # message before the API's fast path has marked it sent (grace 0.5 s in tests), so a
    # harmless second run finds nothing left and its 0 may be the result read here. The
    # left-behind message itself reached the broker and ran: its result is under its task id
    # (nothing but a relay run could have published it).
    swept = await result(celery_app, "left-behind")
    assert set(swept) >= {"redispatched", "failed"}, swept
    [row] = await query(
        database_url, "SELECT sent_time FROM platform.outbox WHERE task_id = 'left-behind'"
    )
    assert row.sent_time is not None


OLD = "now() - interval '400 days'"
RECENT = "now() - interval '1 minute'"


async def seed_retention_rows(database_url: str, import_dir: pathlib.Path) -> None:
    """One old and one recent row of every kind retention covers, plus rows that must stay
    however old they are (unsent outbox, unfinished delivery, failed inbox row)."""
    sql = []
    for age, tag in ((OLD, "old"), (RECENT, "new")):
        sql += [
            "INSERT INTO platform.outbox (id, task_name, queue, task_id, created_time,"
            f" available_time, sent_time) VALUES (gen_random_uuid(), 'platform.sweep',"
            f" 'platform', 'sent-{tag}', {age}, {age}, {age})",
            "INSERT INTO webhooks.deliveries (id, tenant, endpoint_id, event_id, event_type,"
            " body, state, create_time, update_time, end_time) VALUES (gen_random_uuid(), 'r',"
            f" '{ENDPOINT}', gen_random_uuid(), 'ended.{tag}', '{{}}', 'SUCCEEDED', {age},"
            f" {age}, {age})",
            "INSERT INTO webhooks.attempts (id, delivery_id, tenant, attempt, time,"
            " duration_ms) SELECT gen_random_uuid(), id, 'r', 1, create_time, 1 FROM"
            f" webhooks.deliveries WHERE event_type = 'ended.{tag}'",
            "INSERT INTO webhooks.received_events (event_id, type, tenant, receive_time,"
            f" deliveries) VALUES (gen_random_uuid(), 'received.{tag}', 'r', {age}, 1)",
            "INSERT INTO reports.applied_events (event_id, type, tenant, outcome, event_time,"
            f" applied_time) VALUES (gen_random_uuid(), 'applied.{tag}', 'r', 'applied', {age},"
            f" {age})",
            "INSERT INTO webhooks.inbox (event_id, consumer, event_type, envelope, state,"
            " received_time, dispatch_time, handled_time) VALUES (gen_random_uuid(),"
            f" 'webhooks', 'handled.{tag}', '{{}}', 'HANDLED', {age}, {age}, {age})",
            "INSERT INTO platform.pings (id, message, sleep_seconds, steps, fail_attempts,"
            f" operation_id, create_time, complete_time) VALUES (gen_random_uuid(), 'ping-{tag}',"
            f" 0, 1, 0, gen_random_uuid(), {age}, {age})",
            "INSERT INTO platform.ping_effects (id, operation_id, attempt, worker, applied_time)"
            f" VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'effect-{tag}', {age})",
            "INSERT INTO reports.delivery_latency_counts (tenant, day, endpoint_id,"
            f" latency_ms, samples) VALUES ('r', ({age})::date, 'latency-{tag}', 5, 2)",
            "INSERT INTO imports.imports (id, dataset_id, tenant, operation_id, state, format,"
            " create_time, file_path, complete_time) VALUES (gen_random_uuid(),"
            f" gen_random_uuid(), 'r', gen_random_uuid(), 'SUCCEEDED', 'csv', {age},"
            f" 'retention-{tag}.csv', {age})",
        ]
        (import_dir / f"retention-{tag}.csv").write_text("id\n1\n")
    sql += [
        # However old, these stay: not yet published, not finished, not handled.
        "INSERT INTO platform.outbox (id, task_name, queue, task_id, created_time,"
        " available_time) VALUES (gen_random_uuid(), 'platform.sweep', 'platform', 'unsent-old',"
        f" {OLD}, now() + interval '1 day')",
        "INSERT INTO webhooks.deliveries (id, tenant, endpoint_id, event_id, event_type, body,"
        " state, create_time, update_time, next_attempt_time) VALUES (gen_random_uuid(), 'r',"
        f" '{ENDPOINT}', gen_random_uuid(), 'pending.old', '{{}}', 'PENDING', {OLD}, {OLD},"
        " now() + interval '1 day')",
        "INSERT INTO webhooks.inbox (event_id, consumer, event_type, envelope, state,"
        " received_time, dispatch_time, error) VALUES (gen_random_uuid(), 'webhooks',"
        f" 'failed.old', '{{}}', 'FAILED', {OLD}, {OLD}, 'gave up')",
    ]
    await query(
        database_url,
        "INSERT INTO webhooks.endpoints (id, tenant, url, event_types, enabled, secret,"
        f" create_time, update_time) VALUES ('{ENDPOINT}', 'r', 'https://example.com/h',"
        " '[]'::jsonb, false, 'x', now(), now())",
    )
    for statement in sql:
        await query(database_url, statement)


ENDPOINT = "01890000-0000-7000-8000-0000000000ee"


def import_files_dir(settings) -> pathlib.Path:
    """The directory the worker's import file store uses (created)."""
    path = pathlib.Path(settings.imports.storage_dir or pathlib.Path(settings.data_dir) / "imports")
    path.resolve().mkdir(parents=True, exist_ok=True)
    return path.resolve()


async def remaining(database_url: str) -> dict[str, list[str]]:
    """What is left of the seeded rows, by kind (tags sorted)."""
    queries = {
        "outbox": "SELECT task_id FROM platform.outbox WHERE task_id LIKE '%sent-%'",
        "deliveries": "SELECT event_type FROM webhooks.deliveries",
        "attempts": "SELECT d.event_type FROM webhooks.attempts a JOIN webhooks.deliveries d"
        " ON d.id = a.delivery_id",
        "orphan_attempts": "SELECT a.id::text FROM webhooks.attempts a LEFT JOIN"
        " webhooks.deliveries d ON d.id = a.delivery_id WHERE d.id IS NULL",
        "received": "SELECT type FROM webhooks.received_events",
        "applied": "SELECT type FROM reports.applied_events",
        "inbox": "SELECT event_type FROM webhooks.inbox",
        "import_files": "SELECT file_path FROM imports.imports WHERE file_path IS NOT NULL",
        "pings": "SELECT message FROM platform.pings",
        "effects": "SELECT worker FROM platform.ping_effects WHERE worker LIKE 'effect-%'",
        "latency_samples": "SELECT endpoint_id FROM reports.delivery_latency_counts"
        " WHERE endpoint_id LIKE 'latency-%'",
        "frozen_latency": "SELECT latency_p50_ms FROM reports.tenant_daily_latency"
        " WHERE tenant = 'r'",
    }
    return {
        kind: sorted(str(row[0]) for row in await query(database_url, sql))
        for kind, sql in queries.items()
    }


async def test_purge_applies_every_retention_setting(
    client, clean_db, database_url, settings, celery_app, celery_worker, operator_headers
):
    import_dir = import_files_dir(settings)
    await seed_retention_rows(database_url, import_dir)
    before = await remaining(database_url)
    assert before["deliveries"] == ["ended.new", "ended.old", "pending.old"]  # control
    assert before["latency_samples"] == ["latency-new", "latency-old"]

    task_id = await fire(client, database_url, "system.purge-done", operator_headers)
    outcome = await result(celery_app, task_id)

    after = await remaining(database_url)
    assert after == {
        "outbox": ["sent-new", "unsent-old"],
        "deliveries": ["ended.new", "pending.old"],
        "attempts": ["ended.new"],
        "orphan_attempts": [],
        "received": ["received.new"],
        "applied": ["applied.new"],
        "inbox": ["failed.old", "handled.new"],
        "import_files": ["retention-new.csv"],
        "pings": ["ping-new"],
        "effects": ["effect-new"],
        "latency_samples": ["latency-new"],
        "frozen_latency": ["5.0"],
    }
    assert not (import_dir / "retention-old.csv").exists()
    assert (import_dir / "retention-new.csv").exists()
    assert outcome["outbox"] >= 1 and outcome["deliveries"] == 1
    assert outcome["received_events"] == 1 and outcome["applied_events"] == 1
    assert outcome["inbox"] == 1 and outcome["import_files"] == 1 and outcome["pings"] == 1
    assert outcome["latency_samples"] == 1
