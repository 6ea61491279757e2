"""Service level: PingService and OperationsService on the real database, without Celery.

The container has no fast-path publisher, so outbox rows stay unsent: nothing reaches a broker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.container import Container
from app.db import EngineRegistry
from domains.operations.execution import Busy, OperationRunner, Skip
from domains.operations.model import State
from domains.operations.service import OperationsService
from domains.platform.pings.service import PingService
from domains.shared.clock import utcnow
from domains.shared.errors import AlreadyExists, InvalidArgument, NotFound, TransientError


@pytest.fixture
async def container(settings: Settings) -> AsyncIterator[Container]:
    registry = EngineRegistry(settings)
    yield Container(settings, registry)
    await registry.dispose()


@pytest.fixture
def pings(container: Container) -> PingService:
    return container.pings


@pytest.fixture
def operations(container: Container) -> OperationsService:
    return container.operations


async def execute(container: Container, sql: str, **params):
    async with container.registry.engine("platform").begin() as conn:
        result = await conn.execute(sa.text(sql), params)
        return result.mappings().all() if result.returns_rows else []


async def outbox_rows(container: Container, op_id: uuid.UUID):
    return await execute(
        container,
        "SELECT id, task_id, task_name, queue, args, sent_time FROM platform.outbox"
        " WHERE operation_id = :id ORDER BY created_time",
        id=op_id,
    )


async def op_rows(container: Container, request_id: str):
    return await execute(
        container, "SELECT id FROM platform.operations WHERE request_id = :r", r=request_id
    )


# ----------------------------------------------------------------------- create


async def test_create_ping_writes_ping_operation_and_outbox_row_in_one_go(pings, container):
    op = await pings.create_ping(message="hi", steps=2)
    assert op.state == State.PENDING
    assert op.dispatch_count == 1
    assert op.dispatch.task_name == "platform.ping"
    assert op.dispatch.args == [str(op.id)]
    ping = await pings.get_ping(uuid.UUID(op.target.removeprefix("pings/")))
    assert ping.operation_id == op.id
    assert ping.completions == 0
    rows = await outbox_rows(container, op.id)
    assert len(rows) == 1
    assert rows[0]["task_id"] == str(op.id)  # the Celery task id is the operation id
    assert rows[0]["queue"] == "platform"
    assert rows[0]["args"] == [str(op.id)]
    assert rows[0]["sent_time"] is None


async def test_create_ping_validates_its_inputs(pings):
    with pytest.raises(InvalidArgument) as info:
        await pings.create_ping(steps=0)
    assert info.value.metadata == {"field": "steps"}


async def test_same_request_id_and_body_returns_the_same_operation(pings, container):
    request_id = f"req-{uuid.uuid4()}"
    first = await pings.create_ping(message="a", request_id=request_id)
    second = await pings.create_ping(message="a", request_id=request_id)
    assert second.id == first.id
    assert len(await op_rows(container, request_id)) == 1
    assert len(await outbox_rows(container, first.id)) == 1


async def test_same_request_id_with_another_body_is_already_exists(pings):
    request_id = f"req-{uuid.uuid4()}"
    first = await pings.create_ping(message="a", request_id=request_id)
    with pytest.raises(AlreadyExists) as info:
        await pings.create_ping(message="b", request_id=request_id)
    assert info.value.reason == "REQUEST_ID_REUSED"
    assert info.value.metadata == {"operation": first.name}


async def test_concurrent_creates_with_one_request_id_make_one_operation(pings, container):
    request_id = f"req-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(pings.create_ping(message="same", request_id=request_id) for _ in range(10))
    )
    assert {op.id for op in results} == {results[0].id}
    assert len(await op_rows(container, request_id)) == 1
    assert len(await outbox_rows(container, results[0].id)) == 1
    pings_rows = await execute(
        container,
        "SELECT count(*) AS n FROM platform.pings WHERE operation_id = :id",
        id=results[0].id,
    )
    assert pings_rows[0]["n"] == 1


# -------------------------------------------------------------------------- run


async def test_run_ping_succeeds_and_answers_once(pings, operations):
    op = await pings.create_ping(message="hello", sleep_seconds=0.05, steps=2)
    response = await pings.run_ping(op.id, worker="w")
    assert response["reply"] == "pong: hello"
    assert response["worker"] == "w"
    assert response["attempt"] == 1
    done = await operations.get(op.name)
    assert done.state == State.SUCCEEDED
    assert done.response == response
    assert done.progress.done == 2
    assert done.progress.total == 2
    ping = await pings.get_ping(uuid.UUID(op.target.removeprefix("pings/")))
    assert ping.completions == 1
    assert ping.worker == "w"
    assert ping.reply == "pong: hello"


async def effect_log(container: Container, op_id: uuid.UUID):
    return await execute(
        container,
        "SELECT attempt, worker, applied_time FROM platform.ping_effects"
        " WHERE operation_id = :id ORDER BY applied_time",
        id=op_id,
    )


async def test_an_instant_ping_writes_what_the_ordinary_path_writes(
    pings, operations, container, monkeypatch
):
    # The same ping twice: once as one statement (run_instant), once the ordinary way (the
    # instant statement disabled: claim, then finish). Every field they write must agree.
    results = {}
    for path in ("instant", "ordinary"):
        if path == "ordinary":

            async def not_instant(*args: Any, **kwargs: Any) -> None:
                return None

            monkeypatch.setattr(pings._runner, "run_instant", not_instant)
        op = await pings.create_ping(message="same")
        response = await pings.run_ping(op.id, worker="w")
        done = await operations.get(op.name)
        ping = await pings.get_ping(uuid.UUID(op.target.removeprefix("pings/")))
        log = await effect_log(container, op.id)
        assert done.state == State.SUCCEEDED and done.done and done.error is None
        assert done.start_time is not None and done.end_time is not None
        assert done.heartbeat_time is not None and done.start_time <= done.end_time
        assert ping.complete_time is not None and ping.complete_time >= done.start_time
        assert [(row["attempt"], row["worker"]) for row in log] == [(1, "w")]
        assert response == done.response
        results[path] = {
            "response": {**response, "ping": response["ping"] == op.target},
            "progress": done.progress.to_dict(),
            "attempt": done.attempt,
            "ping": (ping.reply, ping.worker, ping.completions),
        }
    assert results["instant"] == results["ordinary"]
    assert results["instant"]["response"] == {
        "ping": True,
        "reply": "pong: same",
        "worker": "w",
        "attempt": 1,
    }


async def test_concurrent_runs_of_an_instant_ping_answer_once(pings, operations, container):
    # The effect log is append-only (never deduplicated): two answers would be two rows.
    ops = [await pings.create_ping(message=f"race {i}") for i in range(20)]
    for op in ops:
        results = await asyncio.gather(
            pings.run_ping(op.id, worker="a"),
            pings.run_ping(op.id, worker="b"),
            return_exceptions=True,
        )
        successes = [r for r in results if isinstance(r, dict)]
        assert len(successes) == 1, results
        assert all(isinstance(r, dict | Skip) for r in results), results
        done = await operations.get(op.name)
        assert done.state == State.SUCCEEDED and done.attempt == 1
        log = await effect_log(container, op.id)
        assert [row["attempt"] for row in log] == [1]
        assert [row["worker"] for row in log] == [successes[0]["worker"]]
        ping = await pings.get_ping(uuid.UUID(op.target.removeprefix("pings/")))
        assert ping.completions == 1


async def test_an_instant_ping_takes_over_an_attempt_whose_worker_died(
    pings, operations, container
):
    op = await pings.create_ping(message="orphan")
    # Attempt 1 claimed it and died before answering: RUNNING with its lease long expired.
    await execute(
        container,
        "UPDATE platform.operations SET state = 'RUNNING', attempt = 1,"
        " start_time = now() - interval '1 hour', heartbeat_time = now() - interval '1 hour'"
        " WHERE id = :id",
        id=op.id,
    )
    response = await pings.run_ping(op.id, worker="w")
    assert response["attempt"] == 2
    done = await operations.get(op.name)
    assert done.state == State.SUCCEEDED and done.attempt == 2
    assert [row["attempt"] for row in await effect_log(container, op.id)] == [2]


async def test_an_instant_ping_leaves_a_live_attempt_alone(pings, operations, container):
    op = await pings.create_ping(message="held")
    # Attempt 1 holds a live lease: the instant statement must not take it over.
    await execute(
        container,
        "UPDATE platform.operations SET state = 'RUNNING', attempt = 1, start_time = now(),"
        " heartbeat_time = now() WHERE id = :id",
        id=op.id,
    )
    with pytest.raises(Busy):
        await pings.run_ping(op.id, worker="w")
    held = await operations.get(op.name)
    assert held.state == State.RUNNING and held.attempt == 1
    assert await effect_log(container, op.id) == []


async def test_running_a_done_ping_again_is_skipped(pings):
    op = await pings.create_ping(message="once")
    await pings.run_ping(op.id, worker="w")
    with pytest.raises(Skip) as info:
        await pings.run_ping(op.id, worker="w2")
    assert info.value.operation is not None
    assert info.value.operation.state == State.SUCCEEDED
    ping = await pings.get_ping(uuid.UUID(op.target.removeprefix("pings/")))
    assert ping.completions == 1
    assert ping.worker == "w"


async def test_running_a_deleted_operation_is_not_found(pings):
    with pytest.raises(NotFound):
        await pings.run_ping(uuid.uuid4(), worker="w")


async def test_two_concurrent_runs_of_one_operation_answer_once(pings, operations):
    op = await pings.create_ping(message="race", sleep_seconds=0.3, steps=3)
    results = await asyncio.gather(
        pings.run_ping(op.id, worker="a"),
        pings.run_ping(op.id, worker="b"),
        return_exceptions=True,
    )
    successes = [r for r in results if isinstance(r, dict)]
    others = [r for r in results if not isinstance(r, dict)]
    assert len(successes) == 1, results
    assert len(others) == 1 and isinstance(others[0], Busy | Skip), results
    done = await operations.get(op.name)
    assert done.state == State.SUCCEEDED
    assert done.attempt == 1
    ping = await pings.get_ping(uuid.UUID(op.target.removeprefix("pings/")))
    assert ping.completions == 1


async def test_deliberate_failure_releases_the_operation_for_the_next_attempt(pings, operations):
    op = await pings.create_ping(message="flaky", fail_attempts=1)
    with pytest.raises(TransientError):
        await pings.run_ping(op.id, worker="w")
    released = await operations.get(op.name)
    assert released.state == State.PENDING
    assert released.attempt == 1
    assert "attempt 1 failed" in released.progress.message
    response = await pings.run_ping(op.id, worker="w")
    assert response["attempt"] == 2
    assert (await operations.get(op.name)).state == State.SUCCEEDED


# ----------------------------------------------------------------------- cancel


async def test_cancelling_a_running_ping_stops_it_at_the_next_step(pings, operations):
    op = await pings.create_ping(message="long", sleep_seconds=2, steps=20)
    run = asyncio.create_task(pings.run_ping(op.id, worker="w"))
    await asyncio.sleep(0.3)
    cancelling = await operations.cancel(op.name)
    assert cancelling.state == State.CANCELLING
    started = time.monotonic()
    result = await asyncio.wait_for(run, timeout=2)
    assert time.monotonic() - started < 1.0  # one step is 0.1 s; 1.7 s of work remained
    assert result == {"cancelled": True}
    final = await operations.get(op.name)
    assert final.state == State.CANCELLED
    assert final.done
    assert final.error is not None and final.error.code == 1
    assert 0 < final.progress.done < 20
    ping = await pings.get_ping(uuid.UUID(op.target.removeprefix("pings/")))
    assert ping.completions == 0


async def test_cancelling_a_pending_ping_skips_its_run(pings, operations):
    op = await pings.create_ping(message="never")
    assert (await operations.cancel(op.name)).state == State.CANCELLED
    with pytest.raises(Skip):
        await pings.run_ping(op.id, worker="w")


# ------------------------------------------------------------------------ sweep


async def test_sweep_redispatches_a_running_operation_whose_lease_expired(
    clean_db, container, operations
):
    op = await container.pings.create_ping(message="lost worker")
    # The relay published the first dispatch, then a worker claimed it and died.
    await execute(container, "UPDATE platform.outbox SET sent_time = now()")
    runner = OperationRunner(container.uow_factory("platform"))
    execution = await runner.claim(op.id)
    assert execution.attempt == 1
    await execute(
        container,
        "UPDATE platform.operations SET heartbeat_time = now() - interval '1 hour',"
        " update_time = now() - interval '1 hour' WHERE id = :id",
        id=op.id,
    )

    report = await operations.sweep()

    assert report.redispatched == 1
    assert report.failed == report.cancelled == 0
    swept = await operations.get(op.name)
    assert swept.state == State.PENDING
    assert swept.dispatch_count == op.dispatch_count + 1
    assert swept.attempt == 1
    assert "worker lost" in swept.progress.message
    rows = await outbox_rows(container, op.id)
    assert len(rows) == 2
    assert rows[0]["sent_time"] is not None
    assert rows[1]["sent_time"] is None
    assert rows[1]["task_id"] == str(op.id)
    # The dead attempt can no longer write; the next one takes over.
    assert (await container.pings.run_ping(op.id, worker="w2"))["attempt"] == 2


async def test_sweep_leaves_a_live_running_operation_alone(clean_db, container, operations):
    op = await container.pings.create_ping(message="alive")
    await execute(container, "UPDATE platform.outbox SET sent_time = now()")
    await OperationRunner(container.uow_factory("platform")).claim(op.id)
    report = await operations.sweep()
    assert report.redispatched == 0
    assert (await operations.get(op.name)).state == State.RUNNING
    assert len(await outbox_rows(container, op.id)) == 1


async def test_sweep_does_not_redispatch_while_the_first_dispatch_is_unsent(
    clean_db, container, operations
):
    op = await container.pings.create_ping(message="broker down")
    await execute(
        container,
        "UPDATE platform.operations SET dispatch_time = now() - interval '1 hour' WHERE id = :id",
        id=op.id,
    )
    report = await operations.sweep()
    assert report.redispatched == 0
    assert len(await outbox_rows(container, op.id)) == 1


async def test_sweep_fails_an_operation_out_of_dispatches(clean_db, container, settings):
    op = await container.pings.create_ping(message="nobody home")
    await execute(container, "UPDATE platform.outbox SET sent_time = now() - interval '1 day'")
    await execute(
        container,
        "UPDATE platform.operations SET dispatch_count = :n,"
        " dispatch_time = now() - interval '1 day' WHERE id = :id",
        n=settings.max_dispatches,
        id=op.id,
    )
    report = await container.operations.sweep()
    assert report.failed == 1
    failed = await container.operations.get(op.name)
    assert failed.state == State.FAILED
    assert failed.error is not None
    assert failed.error.status == "DEADLINE_EXCEEDED"
    assert ":retry" in failed.error.message


async def test_sweep_finishes_cancelling_operation_whose_worker_vanished(
    clean_db, container, operations
):
    op = await container.pings.create_ping(message="cancel lost")
    await execute(container, "UPDATE platform.outbox SET sent_time = now()")
    await OperationRunner(container.uow_factory("platform")).claim(op.id)
    await operations.cancel(op.name)
    await execute(
        container,
        "UPDATE platform.operations SET heartbeat_time = now() - interval '1 hour' WHERE id = :id",
        id=op.id,
    )
    report = await operations.sweep()
    assert report.cancelled == 1
    assert (await operations.get(op.name)).state == State.CANCELLED


# ------------------------------------------------------------------------ purge


async def test_purge_done_deletes_only_done_operations_that_ended_before_the_cutoff(
    clean_db, container, operations
):
    old_done = await container.pings.create_ping(message="old")
    await operations.cancel(old_done.name)
    await execute(
        container,
        "UPDATE platform.operations SET end_time = now() - interval '2 days' WHERE id = :id",
        id=old_done.id,
    )
    recent_done = await container.pings.create_ping(message="recent")
    await operations.cancel(recent_done.name)
    pending = await container.pings.create_ping(message="pending")
    await execute(
        container,
        "UPDATE platform.operations SET create_time = now() - interval '3 days' WHERE id = :id",
        id=pending.id,
    )

    deleted = await operations.purge_done(utcnow() - dt.timedelta(days=1))

    assert deleted == 1
    with pytest.raises(NotFound):
        await operations.get(old_done.name)
    assert (await operations.get(recent_done.name)).state == State.CANCELLED
    assert (await operations.get(pending.name)).state == State.PENDING


async def test_claim_past_the_attempt_cap_fails_saying_the_worker_died_and_retry_resets_it(
    clean_db, container, settings
):
    op = await container.pings.create_ping(message="poison")
    cap = settings.max_attempts
    # `cap` attempts started and the last one's worker died (RUNNING, lease long expired).
    await execute(
        container,
        "UPDATE platform.operations SET state = 'RUNNING', attempt = :n,"
        " heartbeat_time = now() - interval '1 hour', start_time = now() - interval '1 hour'"
        " WHERE id = :id",
        n=cap,
        id=op.id,
    )
    with pytest.raises(Skip):
        await container.pings.run_ping(op.id, worker="w")
    failed = await container.operations.get(op.name)
    assert failed.state == State.FAILED
    assert failed.error is not None
    assert failed.error.status == "ABORTED"
    assert "the worker died running this operation" in failed.error.message
    assert f"CONVEYOR_MAX_ATTEMPTS={cap}" in failed.error.message
    assert failed.error.details[0]["reason"] == "ATTEMPTS_EXHAUSTED"
    assert failed.attempt == cap  # the refused claim started nothing

    # :retry grants a fresh budget; the fencing token keeps growing.
    await container.operations.retry(op.name)
    assert (await container.pings.run_ping(op.id, worker="w"))["attempt"] == cap + 1


async def test_claim_below_the_attempt_cap_takes_over_a_dead_attempt(clean_db, container, settings):
    op = await container.pings.create_ping(message="one more")
    await execute(
        container,
        "UPDATE platform.operations SET state = 'RUNNING', attempt = :n,"
        " heartbeat_time = now() - interval '1 hour' WHERE id = :id",
        n=settings.max_attempts - 1,
        id=op.id,
    )
    result = await container.pings.run_ping(op.id, worker="w")
    assert result["attempt"] == settings.max_attempts


async def test_concurrent_submits_are_group_committed_and_a_bad_one_fails_alone(
    container: Container, pings: PingService
) -> None:
    from domains.operations.unit_of_work import group_commit

    committer = group_commit(container.registry.engine("platform"))
    # A tenant of its own keeps these 49 operations out of the other tests' lists.
    tenant = "group-commit"
    first = await pings.create_ping(message="taken", request_id="group-dup", tenant=tenant)

    async def committed(ids: list[uuid.UUID]) -> None:
        # Every created submit's rows are there: the ping, the operation and its outbox row.
        rows = await execute(
            container,
            "SELECT o.id, count(DISTINCT p.id) AS pings, count(DISTINCT x.id) AS outbox"
            " FROM platform.operations o JOIN platform.pings p ON p.operation_id = o.id"
            " JOIN platform.outbox x ON x.operation_id = o.id WHERE o.id = ANY(:ids)"
            " GROUP BY o.id",
            ids=ids,
        )
        assert {r["id"] for r in rows} == set(ids)
        assert all(r["pings"] == 1 and r["outbox"] == 1 for r in rows)

    # 24 concurrent submits: one statement runs at a time, the rest wait and go as groups.
    statements, grouped = committer.statements, committer.grouped
    clean = await asyncio.gather(
        *(pings.create_ping(message=f"g{i}", tenant=tenant) for i in range(24))
    )
    assert len({op.id for op in clean}) == 24
    await committed([op.id for op in clean])
    assert committer.grouped > grouped  # groups formed...
    assert committer.statements - statements < 24  # ...so fewer statements than submits

    # Again, with one submit reusing a request id with another body (ALREADY_EXISTS) and one
    # with the same body (the first operation): their group fails as a whole and is written
    # again one by one, so each gets its own answer and the 22 others are created.
    regrouped = committer.regrouped

    async def submit(i: int):
        if i == 5:
            return await pings.create_ping(
                message="other body", request_id="group-dup", tenant=tenant
            )
        if i == 17:
            return await pings.create_ping(message="taken", request_id="group-dup", tenant=tenant)
        return await pings.create_ping(message=f"group {i}", request_id=f"group-{i}", tenant=tenant)

    results = await asyncio.gather(*(submit(i) for i in range(24)), return_exceptions=True)
    assert committer.regrouped > regrouped  # the fault hit: a group failed
    assert isinstance(results[5], AlreadyExists)
    assert results[17].id == first.id
    created = [r for i, r in enumerate(results) if i not in (5, 17)]
    assert all(not isinstance(r, BaseException) for r in created), created
    assert len({r.id for r in created}) == 22
    await committed([r.id for r in created])


_OWN = {"id", "operation_id", "task_id"}
"""Columns holding a submit's own ids: they differ between any two submits."""


async def _written(container: Container, op_id: uuid.UUID) -> str:
    """Every other column of the submit's operation, ping and outbox rows, with whether it is
    SQL NULL (``to_jsonb`` shows JSON null and SQL NULL alike), its own ids made generic."""
    found: dict[str, Any] = {}
    ping_id = None
    for table, key in (("operations", "id"), ("pings", "operation_id"), ("outbox", "operation_id")):
        columns = [
            r["column_name"]
            for r in await execute(
                container,
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'platform' AND table_name = :t ORDER BY ordinal_position",
                t=table,
            )
        ]
        nulls = ", ".join(f'"{c}" IS NULL AS "null_{c}"' for c in columns)
        rows = await execute(
            container,
            f"SELECT to_jsonb(t) AS j, {nulls} FROM platform.{table} t WHERE {key} = :id",
            id=op_id,
        )
        assert len(rows) == 1, (table, rows)
        if table == "pings":
            ping_id = rows[0]["j"]["id"]
        found[table] = {
            # Of a time, whether it is set (each submit writes its own clock reading).
            c: (None if c.endswith("_time") else rows[0]["j"][c], rows[0][f"null_{c}"])
            for c in columns
            if c not in _OWN
        }
    text = json.dumps(found, sort_keys=True)
    return text.replace(str(op_id), "<operation>").replace(str(ping_id), "<ping>")


async def test_a_grouped_submit_writes_what_a_lone_one_writes(container: Container) -> None:
    from domains.operations.unit_of_work import group_commit

    committer = group_commit(container.registry.engine("platform"))

    def submit(i: int) -> Any:
        # Each submit its own values, so a value written into another submit's row shows.
        return container.pings.create_ping(
            message=f"m{i}", sleep_seconds=i / 10, steps=i + 1, tenant="group-equal"
        )

    lone = [await submit(i) for i in range(12)]  # one at a time: each written alone
    grouped = committer.grouped
    together = await asyncio.gather(*(submit(i) for i in range(12)))
    assert committer.grouped - grouped >= 6  # the positive control: most went in groups
    for i, (alone, in_group) in enumerate(zip(lone, together, strict=True)):
        written = await _written(container, in_group.id)
        assert written == await _written(container, alone.id), i
        assert f'"message": ["m{i}", false]' in written  # its own values, not another's


async def test_only_a_lone_submit_asks_the_fast_path_to_publish_at_once(
    settings: Settings,
) -> None:
    from domains.operations.unit_of_work import group_commit

    handed: list[tuple[str, bool]] = []  # (task id, urgent), in the order handed over

    async def after_commit(domain: str, messages: list[Any], /, *, urgent: bool = False) -> None:
        handed.extend((m.task_id, urgent) for m in messages)

    registry = EngineRegistry(settings)
    try:
        container = Container(settings, registry, after_commit=after_commit)
        pings = container.pings
        committer = group_commit(registry.engine("platform"))
        lone = await pings.create_ping(message="alone", tenant="urgent-flag")
        assert handed == [(str(lone.id), True)]
        handed.clear()
        grouped = committer.grouped
        burst = await asyncio.gather(
            *(pings.create_ping(message=f"b{i}", tenant="urgent-flag") for i in range(16))
        )
        assert committer.grouped > grouped  # the positive control: groups formed
        flags = dict(handed)
        assert set(flags) == {str(op.id) for op in burst}
        # Submits committed in a group are batched as before; the one written alone first
        # (nothing was in flight when it came) may go at once.
        assert sum(not urgent for urgent in flags.values()) >= committer.grouped - grouped
        assert any(urgent for urgent in flags.values())
    finally:
        await registry.dispose()
