"""Task level: the platform.ping adapter on an in-process worker (real broker, real database)."""

from __future__ import annotations

import asyncio
import time

from celery.result import AsyncResult

from tests.support.ops import op_path, query, wait_state


async def test_task_id_is_the_operation_id(client, celery_worker, celery_app, result_mirror):
    op = (await client.post("/v1/pings", json={"message": "id"})).json()
    op_id = op_path(op["name"]).split(".", 1)[1]
    await wait_state(client, op["name"], {"SUCCEEDED"})
    result = AsyncResult(op_id, app=celery_app)
    assert result.get(timeout=10)["reply"] == "pong: id"


async def test_a_ping_writes_to_the_result_backend_only_with_the_mirror(
    client, celery_worker, celery_app, monkeypatch
):
    backend = celery_app.backend

    async def ping(message: str) -> tuple[str, dict]:
        op = (await client.post("/v1/pings", json={"message": message, "steps": 2})).json()
        done = await wait_state(client, op["name"], {"SUCCEEDED"})
        return op_path(op["name"]).split(".", 1)[1], done

    async def stored(op_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if backend.get(backend.get_key_for_task(op_id)) is not None:
                return True
            await asyncio.sleep(0.05)
        return False

    quiet_id, done = await ping("quiet")  # the default: CONVEYOR_RESULT_MIRROR off
    assert done["response"]["reply"] == "pong: quiet"  # PostgreSQL holds the outcome
    monkeypatch.setattr(celery_app.tasks["platform.ping"], "ignore_result", False)
    kept_id, _ = await ping("kept")
    # Positive control: the same worker and backend do store a result when the task keeps one
    # (and the quiet ping finished a whole job earlier, so its store would be there by now).
    assert await stored(kept_id, timeout=10)
    assert not await stored(quiet_id, timeout=0.5)
    assert AsyncResult(quiet_id, app=celery_app).state == "PENDING"  # Celery's "unknown"


async def test_progress_is_mirrored_in_celery_state_for_flower(
    client, celery_worker, celery_app, result_mirror
):
    op = (
        await client.post("/v1/pings", json={"message": "slow", "sleep_seconds": 3, "steps": 6})
    ).json()
    op_id = op_path(op["name"]).split(".", 1)[1]
    deadline = time.monotonic() + 20
    seen = None
    while time.monotonic() < deadline:
        result = AsyncResult(op_id, app=celery_app)
        if result.state == "PROGRESS":
            seen = result.info
            break
        await asyncio.sleep(0.05)
    assert seen is not None, "PROGRESS state never seen"
    assert seen["total"] == 6
    assert seen["operation"] == op["name"]
    api_view = (await client.get(f"/v1/operations/{op_path(op['name'])}")).json()
    assert api_view["metadata"]["progress"]["total"] == 6
    await wait_state(client, op["name"], {"SUCCEEDED"})


async def test_transient_failures_retry_with_backoff_then_succeed(
    client, celery_worker, database_url
):
    # Two deliberate transient failures, within task_max_retries=3 of the test settings.
    op = (await client.post("/v1/pings", json={"message": "flaky", "fail_attempts": 2})).json()
    done = await wait_state(client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=60)
    assert done["metadata"]["state"] == "SUCCEEDED"
    assert done["metadata"]["attempt"] == 3
    op_id = op_path(op["name"]).split(".", 1)[1]
    rows = await query(
        database_url,
        "SELECT completions FROM platform.pings WHERE operation_id = CAST(:id AS uuid)",
        id=op_id,
    )
    assert rows[0][0] == 1


async def test_exhausted_retries_fail_the_operation_and_retry_starts_again(client, celery_worker):
    op = (await client.post("/v1/pings", json={"message": "doomed", "fail_attempts": 5})).json()
    failed = await wait_state(client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=60)
    assert failed["metadata"]["state"] == "FAILED"
    assert failed["error"]["status"] == "UNAVAILABLE"
    assert "gave up after 4 attempts" in failed["error"]["message"]
    # Dead letter kept: a new attempt through :retry; attempts 5 fails, 6 succeeds.
    response = await client.post(f"/v1/operations/{op_path(op['name'])}:retry")
    assert response.status_code == 200
    assert response.json()["metadata"]["state"] == "PENDING"
    done = await wait_state(client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=60)
    assert done["metadata"]["state"] == "SUCCEEDED", done


async def test_redelivered_task_for_done_operation_does_nothing(
    client, celery_worker, celery_app, database_url, result_mirror
):
    op = (await client.post("/v1/pings", json={"message": "twice"})).json()
    await wait_state(client, op["name"], {"SUCCEEDED"})
    op_id = op_path(op["name"]).split(".", 1)[1]
    # A redelivery (same task, new message).
    result = celery_app.send_task("platform.ping", args=[op_id], queue="platform")
    assert result.get(timeout=20)["skipped"].endswith("already SUCCEEDED")
    rows = await query(
        database_url,
        "SELECT completions FROM platform.pings WHERE operation_id = CAST(:id AS uuid)",
        id=op_id,
    )
    assert rows[0][0] == 1
