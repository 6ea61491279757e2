"""Reports rules on the in-memory fakes: events applied once per event id, the dataset-day
projection, report create/get/list rules, generation and download."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from domains.operations.model import OperationError, State
from domains.reports.model import ReportStatus
from domains.reports.service import ReportsService
from domains.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from domains.shared.events import IntegrationEvent
from domains.shared.query import Condition
from tests.fakes.operations import FakeDatabase
from tests.fakes.reports import FakeReportsUnitOfWork, reports_database

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
TODAY = {"start_date": "2026-03-10", "end_date": "2026-03-10"}


@pytest.fixture
def db() -> FakeDatabase:
    return reports_database()


def make(db: FakeDatabase) -> ReportsService:
    return ReportsService(lambda: FakeReportsUnitOfWork(db), progress_interval=0, clock=lambda: NOW)


def completed(tenant: str = "t1", accepted: int = 8, rejected: int = 2, **extra) -> dict:
    return IntegrationEvent(
        type="imports.ImportCompleted",
        data={
            "dataset_id": "ds-1",
            "dataset": "orders",
            "rows_accepted": accepted,
            "rows_rejected": rejected,
            **extra,
        },
        source="imports",
        tenant=tenant,
        time=NOW,
    ).to_dict()


async def test_an_event_is_applied_once_per_event_id(db):
    svc = make(db)
    envelope = completed()

    first = await svc.handle_event(envelope)
    again = await svc.handle_event(envelope)

    assert (first.outcome, again.outcome) == ("applied", "duplicate")
    [row] = await svc.dataset_days("t1", svc.resolve_period(TODAY))
    assert (row["imports_completed"], row["rows_accepted"], row["rows_total"]) == (1, 8, 10)


async def test_events_of_one_dataset_day_add_up_per_tenant(db):
    svc = make(db)
    await svc.handle_event(completed(accepted=8, rejected=2))
    await svc.handle_event(completed(accepted=5, rejected=0))
    await svc.handle_event(completed(tenant="t2", accepted=100))
    failed = IntegrationEvent(
        type="imports.ImportFailed",
        data={"dataset_id": "ds-1", "dataset": "orders"},
        source="imports",
        tenant="t1",
        time=NOW,
    ).to_dict()
    await svc.handle_event(failed)

    [row] = await svc.dataset_days("t1", svc.resolve_period(TODAY))
    assert row == {
        "day": "2026-03-10",
        "dataset_id": "ds-1",
        "dataset": "orders",
        "imports_completed": 2,
        "imports_failed": 1,
        "rows_total": 15,
        "rows_accepted": 13,
        "rows_rejected": 2,
    }


async def test_an_untallied_event_type_is_recorded_and_ignored(db):
    svc = make(db)
    envelope = IntegrationEvent(type="orders.Created", data={}, source="x", tenant="t1").to_dict()

    assert (await svc.handle_event(envelope)).outcome == "ignored"
    assert (await svc.handle_event(envelope)).outcome == "duplicate"
    assert db.state["dataset_daily"] == {}


async def test_create_report_validates_and_is_idempotent_per_request_id(db):
    svc = make(db)
    with pytest.raises(InvalidArgument):
        await svc.create_report(tenant="t1", type="nonsense", period="today")
    with pytest.raises(InvalidArgument):
        await svc.create_report(tenant="t1", type="dataset_daily", period="today", format="xls")

    op = await svc.create_report(tenant="t1", type="dataset_daily", period="today", request_id="r")
    again = await svc.create_report(
        tenant="t1", type="dataset_daily", period="today", request_id="r"
    )
    assert again.id == op.id
    assert len(db.state["reports"]) == 1
    with pytest.raises(AlreadyExists):
        await svc.create_report(tenant="t1", type="digest", period="today", request_id="r")


async def test_reports_are_per_tenant_and_listed_with_their_operation_state(db):
    svc = make(db)
    await svc.create_report(tenant="t1", type="dataset_daily", period="today")
    await svc.create_report(tenant="t1", type="digest", period="today", format="json")
    await svc.create_report(tenant="t2", type="dataset_daily", period="today")

    page = await svc.list_reports(tenant="t1", conditions=[Condition("format", "=", "json")])
    [report] = page.reports
    assert report.operation_state == State.PENDING.value
    with pytest.raises(NotFound):
        await svc.get_report(report.id, tenant="t2")
    with pytest.raises(InvalidArgument):
        await svc.list_reports(tenant="t1", conditions=[Condition("colour", "=", "red")])


async def test_generate_stores_the_file_and_download_returns_it(db):
    svc = make(db)
    await svc.handle_event(completed())
    op = await svc.create_report(tenant="t1", type="dataset_daily", period="today")
    report_id = uuid.UUID(op.target.removeprefix("reports/"))
    with pytest.raises(FailedPrecondition):  # not generated yet
        await svc.download(report_id, tenant="t1")

    response = await svc.run_generate(op.id)

    assert response["row_count"] == 1
    assert db.operations[op.id].state == State.SUCCEEDED
    report, file = await svc.download(report_id, tenant="t1")
    assert report.status == ReportStatus.SUCCEEDED
    assert b"orders" in file.content and file.sha256 == response["sha256"]


async def test_a_failed_generation_is_recorded_on_the_report(db):
    svc = make(db)
    op = await svc.create_report(tenant="t1", type="dataset_daily", period="today")
    report_id = uuid.UUID(op.target.removeprefix("reports/"))

    await svc.fail_operation(op.id, OperationError(status="INTERNAL", message="disk on fire"))

    report = await svc.get_report(report_id, tenant="t1")
    assert report.status == ReportStatus.FAILED and report.error == "disk on fire"
    assert db.operations[op.id].state == State.FAILED
