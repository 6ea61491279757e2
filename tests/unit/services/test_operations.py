"""Operations rules on the in-memory fakes: idempotent create, get/list/cancel/delete/retry,
the runner's claim/finish/lease/attempt-cap rules, and the sweeper."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from domains.operations import service as operations_service
from domains.operations.execution import Busy, Cancelled, LeaseLost, OperationRunner, Skip
from domains.operations.model import DispatchSpec, Operation, State
from domains.operations.service import OperationsService
from domains.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from domains.shared.query import Condition
from tests.fakes.operations import FakeDatabase, FakeUnitOfWork

DOMAIN = "demo"


class Boom(Exception):
    """A failure inside a transaction."""


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


def factory(db: FakeDatabase, max_attempts: int | None = None):
    return lambda: FakeUnitOfWork(db, domain=DOMAIN, max_attempts=max_attempts)


async def create(
    db: FakeDatabase,
    *,
    request_id: str | None = None,
    body: str = "a",
    tenant: str = "default",
    fail: bool = False,
) -> Operation:
    async def build(uow) -> Operation:
        if fail:
            raise Boom("the domain rows could not be written")
        return operations_service.new_operation(
            domain=DOMAIN,
            type_="demo.Work",
            target=f"items/{body}",
            dispatch=DispatchSpec(task_name="demo.work", queue=DOMAIN),
            request_id=request_id,
            request_hash=operations_service.request_fingerprint({"body": body}),
            tenant=tenant,
        )

    return await operations_service.create_idempotently(
        factory(db),
        request_id=request_id,
        request_hash=operations_service.request_fingerprint({"body": body}),
        build=build,
        tenant=tenant,
    )


def service(db: FakeDatabase, **kwargs) -> OperationsService:
    return OperationsService({DOMAIN: factory(db)}, **kwargs)


def age(db: FakeDatabase, op_id: uuid.UUID, **changes) -> None:
    # Moves a committed operation's clock fields into the past (what time passing does).
    op = db.operations[op_id]
    db.operations[op_id] = dataclasses.replace(op, **changes)


async def test_create_writes_the_operation_and_its_task_in_one_commit(db):
    op = await create(db)

    assert db.operations[op.id].state == State.PENDING
    assert db.commits == 1
    [message] = db.published
    assert (message.task_name, message.task_id, message.operation_id) == (
        "demo.work",
        str(op.id),
        op.id,
    )
    assert db.operations[op.id].dispatch_count == 1


async def test_a_failed_create_leaves_nothing_behind(db):
    with pytest.raises(Boom):
        await create(db, fail=True)

    assert db.operations == {}
    assert db.outbox == []
    assert db.commits == 0


async def test_a_retried_request_id_returns_the_first_operation(db):
    first = await create(db, request_id="r-1")
    again = await create(db, request_id="r-1")

    assert again.id == first.id
    assert len(db.operations) == 1
    assert len(db.outbox) == 1


async def test_a_request_id_reused_with_another_body_is_already_exists(db):
    await create(db, request_id="r-1", body="a")

    with pytest.raises(AlreadyExists) as err:
        await create(db, request_id="r-1", body="b")
    assert err.value.reason == "REQUEST_ID_REUSED"


async def test_request_ids_are_per_tenant(db):
    mine = await create(db, request_id="r-1", tenant="t1")
    theirs = await create(db, request_id="r-1", tenant="t2")

    assert mine.id != theirs.id


async def test_get_hides_other_tenants_and_rejects_malformed_names(db):
    op = await create(db, tenant="t1")
    svc = service(db)

    assert (await svc.get(op.name, tenant="t1")).id == op.id
    with pytest.raises(NotFound):
        await svc.get(op.name, tenant="t2")
    with pytest.raises(InvalidArgument):
        await svc.get("operations/nonsense")
    with pytest.raises(NotFound):
        await svc.get(f"operations/elsewhere.{op.id}")


async def test_list_filters_by_state_and_pages_in_creation_order(db):
    ops = [await create(db) for _ in range(3)]
    svc = service(db)
    await svc.cancel(ops[1].name)

    pending = await svc.list(
        [Condition("metadata.state", "=", "PENDING")], page_size=10, after=None
    )
    assert [o.id for o in pending.operations] == [ops[0].id, ops[2].id]

    first = await svc.list([], page_size=2, after=None)
    second = await svc.list([], page_size=2, after=first.last)
    assert [o.id for o in first.operations + second.operations] == [o.id for o in ops]

    with pytest.raises(InvalidArgument):
        await svc.list([Condition("metadata.colour", "=", "red")], page_size=10, after=None)


async def test_cancel_pending_ends_it_and_cancel_done_is_refused(db):
    op = await create(db)
    svc = service(db)

    cancelled = await svc.cancel(op.name)
    assert cancelled.state == State.CANCELLED
    assert db.operations[op.id].state == State.CANCELLED
    with pytest.raises(FailedPrecondition) as err:
        await svc.cancel(op.name)
    assert err.value.reason == "OPERATION_DONE"


async def test_cancel_running_asks_the_worker_to_stop_at_its_checkpoint(db):
    op = await create(db)
    runner = OperationRunner(factory(db), progress_interval=0)
    execution = await runner.claim(op.id)

    assert (await service(db).cancel(op.name)).state == State.CANCELLING
    with pytest.raises(Cancelled):
        await execution.checkpoint(1, 10)
    assert (await runner.cancelled(execution)).state == State.CANCELLED


async def test_delete_only_done_operations(db):
    op = await create(db)
    svc = service(db)

    with pytest.raises(FailedPrecondition) as err:
        await svc.delete(op.name)
    assert err.value.reason == "OPERATION_NOT_DONE"
    await svc.cancel(op.name)
    await svc.delete(op.name)
    assert op.id not in db.operations


async def test_retry_only_failed_operations_and_dispatches_again(db):
    op = await create(db)
    svc = service(db)
    with pytest.raises(FailedPrecondition):
        await svc.retry(op.name)

    runner = OperationRunner(factory(db))
    await runner.fail(op.id, operations_service.OperationError(status="INTERNAL", message="x"))
    retried = await svc.retry(op.name)

    assert retried.state == State.PENDING
    assert [m.operation_id for m in db.published] == [op.id, op.id]


async def test_claim_takes_the_slow_path_on_the_fake_and_starts_attempt_one(db):
    op = await create(db)
    runner = OperationRunner(factory(db))

    execution = await runner.claim(op.id)

    assert execution.attempt == 1
    assert execution.target_row is None  # the fused claim did not match
    assert db.operations[op.id].state == State.RUNNING


async def test_a_second_claim_while_the_lease_is_live_is_busy(db):
    op = await create(db)
    runner = OperationRunner(factory(db))
    await runner.claim(op.id)

    with pytest.raises(Busy):
        await runner.claim(op.id)


async def test_an_expired_lease_lets_another_attempt_take_over_and_fences_the_first(db):
    op = await create(db)
    runner = OperationRunner(factory(db))
    first = await runner.claim(op.id)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    age(db, op.id, heartbeat_time=long_ago, start_time=long_ago)

    second = await runner.claim(op.id)

    assert second.attempt == 2
    with pytest.raises(LeaseLost):
        await runner.finish(first, lambda uow, op: _response())
    done = await runner.finish(second, lambda uow, op: _response())
    assert done.state == State.SUCCEEDED and done.response == {"ok": True}


async def _response() -> dict[str, bool]:
    return {"ok": True}


async def test_finish_fused_does_not_match_on_the_fake(db):
    op = await create(db)
    runner = OperationRunner(factory(db))
    execution = await runner.claim(op.id)

    assert await runner.finish_fused(execution, {"ok": True}) is None
    assert db.operations[op.id].state == State.RUNNING


async def test_a_claim_of_a_cancelling_operation_ends_it_cancelled(db):
    op = await create(db)
    runner = OperationRunner(factory(db))
    await runner.claim(op.id)
    await service(db).cancel(op.name)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    age(db, op.id, heartbeat_time=long_ago)

    with pytest.raises(Skip):
        await runner.claim(op.id)
    assert db.operations[op.id].state == State.CANCELLED


async def test_the_attempt_cap_fails_a_poison_pill_with_a_reason(db):
    op = await create(db)
    runner = OperationRunner(factory(db, max_attempts=2))
    for _ in range(2):
        execution = await runner.claim(op.id)
        await runner.release(execution, "worker crashed")

    with pytest.raises(Skip):
        await runner.claim(op.id)
    failed = db.operations[op.id]
    assert failed.state == State.FAILED
    assert failed.error is not None
    assert failed.error.details[0]["reason"] == "ATTEMPTS_EXHAUSTED"


async def test_a_done_operation_is_skipped_and_a_missing_one_not_found(db):
    op = await create(db)
    await service(db).cancel(op.name)
    runner = OperationRunner(factory(db))

    with pytest.raises(Skip):
        await runner.claim(op.id)
    with pytest.raises(NotFound):
        await runner.claim(uuid.uuid4())


async def test_checkpoints_write_progress_only_while_the_attempt_owns_it(db):
    op = await create(db)
    runner = OperationRunner(factory(db), progress_interval=0)
    execution = await runner.claim(op.id)

    await execution.checkpoint(3, 10, "working")
    assert db.operations[op.id].progress.done == 3

    await runner.release(execution, "transient")
    with pytest.raises(LeaseLost):
        await execution.checkpoint(4, 10)


async def test_sweep_redispatches_a_lost_pending_operation_then_fails_it(db):
    op = await create(db)
    svc = service(db, max_dispatches=2)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)

    # The relay published the first message long ago and the broker lost it.
    for message in db.outbox:
        message.sent_time = long_ago
    age(db, op.id, dispatch_time=long_ago, create_time=long_ago)
    report = await svc.sweep()
    assert report.redispatched == 1
    assert db.operations[op.id].dispatch_count == 2

    for message in db.outbox:
        message.sent_time = long_ago
    age(db, op.id, dispatch_time=long_ago)
    report = await svc.sweep()
    assert report.failed == 1
    failed = db.operations[op.id]
    assert failed.state == State.FAILED
    assert failed.error is not None and failed.error.status == "DEADLINE_EXCEEDED"


async def test_sweep_leaves_an_operation_whose_message_is_still_unsent(db):
    op = await create(db)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    age(db, op.id, dispatch_time=long_ago, create_time=long_ago)

    report = await service(db).sweep()

    assert report.redispatched == 0
    assert db.operations[op.id].dispatch_count == 1
