"""Ping rules on the in-memory fakes: create and request-id idempotency, run to SUCCEEDED with
one effect, deliberate transient failures, cancel before start, the attempt cap, tenancy."""

from __future__ import annotations

import pytest

from domains.operations.execution import Skip
from domains.operations.model import State
from domains.operations.service import OperationsService
from domains.platform.pings.service import PingService
from domains.shared.errors import AlreadyExists, InvalidArgument, NotFound, TransientError
from tests.fakes.operations import FakeDatabase
from tests.fakes.platform import FakePlatformUnitOfWork, platform_database


@pytest.fixture
def db() -> FakeDatabase:
    return platform_database()


def make(db: FakeDatabase, max_attempts: int | None = None) -> PingService:
    return PingService(
        lambda: FakePlatformUnitOfWork(db, max_attempts=max_attempts), progress_interval=0
    )


def operations(db: FakeDatabase) -> OperationsService:
    return OperationsService({"platform": lambda: FakePlatformUnitOfWork(db)})


async def test_create_validates_its_inputs(db):
    with pytest.raises(InvalidArgument):
        await make(db).create_ping(steps=0)
    with pytest.raises(InvalidArgument):
        await make(db).create_ping(sleep_seconds=-1)
    assert db.operations == {} and db.state["pings"] == {}


async def test_create_writes_ping_operation_and_task_once_per_request_id(db):
    svc = make(db)
    op = await svc.create_ping(message="hi", request_id="r-1", tenant="t1")
    again = await svc.create_ping(message="hi", request_id="r-1", tenant="t1")

    assert again.id == op.id
    [ping] = db.state["pings"].values()
    assert (ping.operation_id, ping.tenant) == (op.id, "t1")
    assert [m.task_id for m in db.published] == [str(op.id)]
    with pytest.raises(AlreadyExists):
        await svc.create_ping(message="other", request_id="r-1", tenant="t1")


async def test_run_answers_once_and_succeeds(db):
    svc = make(db)
    op = await svc.create_ping(message="hi", steps=3)

    response = await svc.run_ping(op.id, worker="w1")

    assert response["reply"] == "pong: hi" and response["attempt"] == 1
    done = db.operations[op.id]
    assert done.state == State.SUCCEEDED and done.progress.done == 3
    [ping] = db.state["pings"].values()
    assert ping.completions == 1 and len(db.state["ping_effects"]) == 1
    with pytest.raises(Skip):  # a redelivered task
        await svc.run_ping(op.id, worker="w2")
    assert len(db.state["ping_effects"]) == 1


async def test_deliberate_failures_release_the_operation_for_a_retry(db):
    svc = make(db)
    op = await svc.create_ping(fail_attempts=1)

    with pytest.raises(TransientError):
        await svc.run_ping(op.id, worker="w1")
    assert db.operations[op.id].state == State.PENDING

    assert (await svc.run_ping(op.id, worker="w1"))["attempt"] == 2
    assert db.operations[op.id].state == State.SUCCEEDED


async def test_a_ping_cancelled_before_it_starts_is_never_run(db):
    svc = make(db)
    op = await svc.create_ping()

    assert (await operations(db).cancel(op.name)).state == State.CANCELLED
    with pytest.raises(Skip):
        await svc.run_ping(op.id, worker="w1")
    assert db.state["ping_effects"] == []


async def test_the_attempt_cap_fails_a_ping_that_keeps_failing(db):
    svc = make(db, max_attempts=2)
    op = await svc.create_ping(fail_attempts=5)
    for _ in range(2):
        with pytest.raises(TransientError):
            await svc.run_ping(op.id, worker="w1")

    with pytest.raises(Skip):
        await svc.run_ping(op.id, worker="w1")
    failed = db.operations[op.id]
    assert failed.state == State.FAILED
    assert failed.error is not None and "CONVEYOR_MAX_ATTEMPTS=2" in failed.error.message


async def test_pings_are_per_tenant(db):
    svc = make(db)
    op = await svc.create_ping(tenant="t1")
    [ping] = db.state["pings"].values()

    assert (await svc.get_ping(ping.id, tenant="t1")).operation_id == op.id
    with pytest.raises(NotFound):
        await svc.get_ping(ping.id, tenant="t2")
