"""Service level: the reports projections, report requests and generation on the real database,
without Celery (the container has no fast-path publisher, so nothing reaches a broker)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from app.config import Settings
from app.container import Container
from app.db import EngineRegistry
from app.workflows import StartContext, registry
from domains.operations.model import State
from domains.reports.events import MalformedEvent
from domains.reports.model import Period
from domains.reports.service import ReportsPolicy, ReportsService
from domains.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from domains.shared.events import IntegrationEvent
from tests.support.ops import query
from tests.support.reports import NOON, delivery, import_completed, import_failed, new_tenant

DAY = NOON.date()
ONE_DAY = Period(DAY, DAY)


@pytest.fixture
async def container(settings: Settings) -> AsyncIterator[Container]:
    registry_ = EngineRegistry(settings)
    yield Container(settings, registry_)
    await registry_.dispose()


@pytest.fixture
def reports(container: Container) -> ReportsService:
    return container.reports


def fixed_clock_service(container: Container, now: dt.datetime, **policy) -> ReportsService:
    return ReportsService(
        container.uow_factory("reports"),  # type: ignore[arg-type]
        policy=ReportsPolicy(**policy),
        progress_interval=0,
        clock=lambda: now,
    )


# ------------------------------------------------------------------ projections


async def test_import_events_are_tallied_per_dataset_and_day(reports):
    tenant = new_tenant()
    events = [
        import_completed(tenant, "ds1", 100, 3),
        import_completed(tenant, "ds1", 50, 0),
        import_failed(tenant, "ds1"),
        import_completed(tenant, "ds2", 7, 1),
    ]
    for event in events:
        assert (await reports.handle_event(event.to_dict())).outcome == "applied"
    rows = await reports.dataset_days(tenant, ONE_DAY)
    assert rows == [
        {
            "day": "2026-11-24",
            "dataset_id": "ds1",
            "dataset": "datasets/ds1",
            "imports_completed": 2,
            "imports_failed": 1,
            "rows_total": 153,
            "rows_accepted": 150,
            "rows_rejected": 3,
        },
        {
            "day": "2026-11-24",
            "dataset_id": "ds2",
            "dataset": "datasets/ds2",
            "imports_completed": 1,
            "imports_failed": 0,
            "rows_total": 8,
            "rows_accepted": 7,
            "rows_rejected": 1,
        },
    ]


async def test_datasets_are_named_by_their_display_name_when_the_event_carries_it(reports):
    tenant = new_tenant()
    named = import_completed(tenant, "ds-named", 5, 0, display_name="Quarterly orders")
    older = import_completed(tenant, "ds-older", 2, 0)  # an event from before the field
    for event in (named, older):
        assert (await reports.handle_event(event.to_dict())).outcome == "applied"
    rows = {r["dataset_id"]: r["dataset"] for r in await reports.dataset_days(tenant, ONE_DAY)}
    assert rows == {"ds-named": "Quarterly orders", "ds-older": "datasets/ds-older"}


async def test_an_event_applied_twice_counts_once(reports, database_url):
    tenant = new_tenant()
    event = import_completed(tenant, "ds", 10, 2)
    first = await reports.handle_event(event.to_dict())
    second = await reports.handle_event(event.to_dict())
    assert (first.outcome, second.outcome) == ("applied", "duplicate")
    [row] = await reports.dataset_days(tenant, ONE_DAY)
    assert (row["imports_completed"], row["rows_accepted"], row["rows_rejected"]) == (1, 10, 2)
    rows = await query(
        database_url,
        "SELECT outcome FROM reports.applied_events WHERE event_id = :id",
        id=event.id,
    )
    assert [r[0] for r in rows] == ["applied"]


async def test_concurrent_deliveries_of_one_event_apply_it_once(reports):
    tenant = new_tenant()
    event = delivery(tenant, "ep", latency_ms=42.0)
    results = await asyncio.gather(*(reports.handle_event(event.to_dict()) for _ in range(8)))
    assert sorted(r.outcome for r in results) == ["applied"] + ["duplicate"] * 7
    [row] = await reports.endpoint_days(tenant, ONE_DAY)
    assert row["deliveries_succeeded"] == 1
    assert row["latency_p50_ms"] == 42.0


async def test_delivery_outcomes_and_latency_percentiles_per_endpoint_and_day(reports):
    tenant = new_tenant()
    events = [delivery(tenant, "ep1", latency_ms=float(ms)) for ms in range(10, 101, 10)]
    events += [delivery(tenant, "ep1", "Failed"), delivery(tenant, "ep1", "Failed")]
    events += [delivery(tenant, "ep1", "Dead"), delivery(tenant, "ep2", "Dead")]
    for event in events:
        await reports.handle_event(event.to_dict())
    rows = await reports.endpoint_days(tenant, ONE_DAY)
    assert [r["endpoint_id"] for r in rows] == ["ep1", "ep2"]
    ep1, ep2 = rows
    assert (ep1["deliveries_succeeded"], ep1["deliveries_failed"], ep1["deliveries_dead"]) == (
        10,
        2,
        1,
    )
    # percentile_cont interpolates linearly: p50 of 10..100 is 55, p95 is 95.5.
    assert ep1["latency_p50_ms"] == pytest.approx(55.0)
    assert ep1["latency_p95_ms"] == pytest.approx(95.5)
    assert (ep2["deliveries_dead"], ep2["latency_p50_ms"]) == (1, None)


async def test_retention_folds_old_latency_samples_into_the_same_percentiles(reports, database_url):
    tenant = new_tenant()
    next_noon = NOON + dt.timedelta(days=1)
    events = [delivery(tenant, "ep1", latency_ms=float(ms)) for ms in range(10, 101, 10)]
    events += [delivery(tenant, "ep2", latency_ms=7.0), delivery(tenant, "ep2", "Dead")]
    # The next day is not due yet: the positive control that compaction is by day.
    events += [delivery(tenant, "ep1", latency_ms=5.0, time=next_noon)]
    for event in events:
        await reports.handle_event(event.to_dict())
    two_days = Period(DAY, DAY + dt.timedelta(days=1))
    endpoints = await reports.endpoint_days(tenant, two_days)
    digest = await reports.digest_days(tenant, two_days)
    assert endpoints[0]["latency_p50_ms"] == pytest.approx(55.0)

    deleted = await reports.compact_latencies(DAY + dt.timedelta(days=1))

    assert deleted >= 11  # histogram rows; other tests' tenants may have some on that day too
    samples = (
        "SELECT day, sum(samples) FROM reports.delivery_latency_counts WHERE tenant = :t"
        " GROUP BY day"
    )
    assert await query(database_url, samples, t=tenant) == [(DAY + dt.timedelta(days=1), 1)]
    assert await reports.endpoint_days(tenant, two_days) == endpoints
    assert await reports.digest_days(tenant, two_days) == digest
    frozen = await query(
        database_url,
        "SELECT latency_p50_ms FROM reports.tenant_daily_latency WHERE tenant = :t",
        t=tenant,
    )
    assert frozen == [(pytest.approx(digest[0]["latency_p50_ms"]),)]
    # A late sample of a compacted day does not change its frozen figures.
    await reports.handle_event(delivery(tenant, "ep1", latency_ms=1000.0).to_dict())
    assert await reports.endpoint_days(tenant, two_days) == [
        {**endpoints[0], "deliveries_succeeded": 11},
        *endpoints[1:],
    ]
    assert await reports.compact_latencies(DAY + dt.timedelta(days=1)) >= 1
    assert await reports.digest_days(tenant, two_days) == [
        {**digest[0], "deliveries_succeeded": digest[0]["deliveries_succeeded"] + 1},
        digest[1],
    ]


async def test_events_count_on_the_utc_day_of_their_time(reports):
    tenant = new_tenant()
    late = dt.datetime(2026, 11, 24, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    await reports.handle_event(import_completed(tenant, "ds", 1, 0, time=late).to_dict())
    await reports.handle_event(import_completed(tenant, "ds", 2, 0, time=NOON).to_dict())
    rows = await reports.dataset_days(tenant, Period(DAY, DAY + dt.timedelta(days=1)))
    assert [(r["day"], r["rows_accepted"]) for r in rows] == [
        ("2026-11-24", 2),
        ("2026-11-25", 1),
    ]


async def test_unknown_event_types_are_ignored_but_recorded(reports, database_url):
    tenant = new_tenant()
    event = IntegrationEvent(
        type="imports.DatasetCreated", source="imports", tenant=tenant, data={"dataset_id": "d"}
    )
    assert (await reports.handle_event(event.to_dict())).outcome == "ignored"
    assert (await reports.handle_event(event.to_dict())).outcome == "duplicate"
    assert await reports.dataset_days(tenant, Period(event.time.date(), event.time.date())) == []


@pytest.mark.parametrize(
    "envelope",
    [
        {"type": "imports.ImportCompleted", "time": NOON.isoformat(), "data": {}},  # no id
        {"id": "nope", "type": "imports.ImportCompleted", "time": NOON.isoformat()},
        "not an object",
    ],
)
async def test_malformed_envelopes_are_refused(reports, envelope):
    with pytest.raises(MalformedEvent):
        await reports.handle_event(envelope)


async def test_event_missing_a_contract_field_is_refused_and_not_recorded(reports, database_url):
    tenant = new_tenant()
    event = import_completed(tenant, "ds", 1, 0)
    envelope = event.to_dict()
    envelope["data"]["rows_accepted"] = -1
    with pytest.raises(MalformedEvent, match="rows_accepted"):
        await reports.handle_event(envelope)
    rows = await query(
        database_url,
        "SELECT count(*) FROM reports.applied_events WHERE event_id = :id",
        id=event.id,
    )
    assert rows[0][0] == 0


async def test_projections_are_per_tenant(reports):
    a, b = new_tenant(), new_tenant()
    await reports.handle_event(import_completed(a, "ds", 5, 0).to_dict())
    await reports.handle_event(import_completed(b, "ds", 9, 0).to_dict())
    [row_a] = await reports.dataset_days(a, ONE_DAY)
    [row_b] = await reports.dataset_days(b, ONE_DAY)
    assert (row_a["rows_accepted"], row_b["rows_accepted"]) == (5, 9)


async def test_digest_has_one_row_per_day_with_zeros_on_quiet_days(reports):
    tenant = new_tenant()
    for event in [
        import_completed(tenant, "ds1", 10, 1),
        import_completed(tenant, "ds2", 20, 2),
        import_failed(tenant, "ds2"),
        delivery(tenant, "ep1", latency_ms=10.0),
        delivery(tenant, "ep2", latency_ms=30.0),
        delivery(tenant, "ep2", "Dead"),
    ]:
        await reports.handle_event(event.to_dict())
    rows = await reports.digest_days(tenant, Period(DAY, DAY + dt.timedelta(days=1)))
    assert rows[0] == {
        "day": "2026-11-24",
        "imports_completed": 2,
        "imports_failed": 1,
        "rows_accepted": 30,
        "rows_rejected": 3,
        "deliveries_succeeded": 2,
        "deliveries_failed": 0,
        "deliveries_dead": 1,
        "latency_p50_ms": pytest.approx(20.0),
        "latency_p95_ms": pytest.approx(29.0),
    }
    assert rows[1]["day"] == "2026-11-25"
    assert rows[1]["imports_completed"] == 0
    assert rows[1]["latency_p50_ms"] is None


# ------------------------------------------------------------------ reports


async def test_create_report_resolves_yesterday_and_writes_report_operation_and_outbox(
    container, database_url
):
    service = fixed_clock_service(container, dt.datetime(2026, 11, 25, 0, 5, tzinfo=dt.UTC))
    tenant = new_tenant()
    op = await service.create_report(tenant=tenant, type="digest", period="yesterday")
    assert (op.domain, op.type, op.state, op.tenant) == (
        "reports",
        "generate",
        State.PENDING,
        tenant,
    )
    assert op.dispatch.task_name == "reports.generate"
    assert op.dispatch.args == [str(op.id)]
    report = await service.get_report(uuid.UUID(op.target.removeprefix("reports/")), tenant=tenant)
    assert report.period.to_dict() == {
        "label": "yesterday",
        "start_date": "2026-11-24",
        "end_date": "2026-11-24",
    }
    assert (report.state, report.format.value, report.operation_id) == ("PENDING", "csv", op.id)
    rows = await query(
        database_url,
        "SELECT task_name, queue, task_id FROM reports.outbox WHERE operation_id = :id",
        id=op.id,
    )
    assert [tuple(r) for r in rows] == [("reports.generate", "reports", str(op.id))]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"type": "weekly"}, "INVALID_REPORT_TYPE"),
        ({"format": "xlsx"}, "INVALID_REPORT_FORMAT"),
        ({"period": "last_week"}, "INVALID_PERIOD"),
        ({"period": {"start_date": "2026-11-24", "end_date": "2026-11-01"}}, "INVALID_PERIOD"),
        ({"period": {"start_date": "2026-02-30", "end_date": "2026-03-01"}}, "INVALID_PERIOD"),
        ({"period": {"start_date": "2026-11-01"}}, "INVALID_PERIOD"),
        ({"period": {"start_date": "2024-01-01", "end_date": "2026-11-01"}}, "PERIOD_TOO_LONG"),
    ],
)
async def test_create_report_refuses_bad_input_saying_why(reports, kwargs, reason):
    args = {"type": "digest", "period": "yesterday", "format": "csv", **kwargs}
    with pytest.raises(InvalidArgument) as info:
        await reports.create_report(tenant="default", **args)
    assert info.value.reason == reason
    assert info.value.message


async def test_request_id_makes_create_idempotent(reports):
    tenant = new_tenant()
    first = await reports.create_report(
        tenant=tenant, type="digest", period="today", request_id="r1"
    )
    again = await reports.create_report(
        tenant=tenant, type="digest", period="today", request_id="r1"
    )
    assert again.id == first.id
    with pytest.raises(AlreadyExists):
        await reports.create_report(
            tenant=tenant, type="digest", period="today", format="json", request_id="r1"
        )
    # Request ids are per tenant.
    other = await reports.create_report(
        tenant=new_tenant(), type="digest", period="today", request_id="r1"
    )
    assert other.id != first.id


async def test_reports_are_tenant_isolated(reports):
    a, b = new_tenant(), new_tenant()
    op_a = await reports.create_report(tenant=a, type="digest", period="today")
    await reports.create_report(tenant=b, type="digest", period="today")
    report_id = uuid.UUID(op_a.target.removeprefix("reports/"))
    with pytest.raises(NotFound):
        await reports.get_report(report_id, tenant=b)
    with pytest.raises(NotFound):
        await reports.download(report_id, tenant=b)
    page = await reports.list_reports(tenant=a)
    assert [r.id for r in page.reports] == [report_id]


async def test_list_pages_in_creation_order(reports):
    tenant = new_tenant()
    ops = [
        await reports.create_report(tenant=tenant, type="digest", period="today") for _ in range(3)
    ]
    first = await reports.list_reports(tenant=tenant, page_size=2)
    assert len(first.reports) == 2 and first.last_id is not None
    rest = await reports.list_reports(tenant=tenant, page_size=2, after=first.last)
    assert rest.last_id is None
    assert [r.operation_id for r in first.reports + rest.reports] == [op.id for op in ops]


async def test_download_before_generation_is_failed_precondition(reports):
    tenant = new_tenant()
    op = await reports.create_report(tenant=tenant, type="digest", period="today")
    with pytest.raises(FailedPrecondition) as info:
        await reports.download(uuid.UUID(op.target.removeprefix("reports/")), tenant=tenant)
    assert info.value.reason == "REPORT_NOT_READY"
    assert op.name in info.value.message


async def test_report_whose_unfinished_operation_was_deleted_is_unknown(reports, database_url):
    tenant = new_tenant()
    op = await reports.create_report(tenant=tenant, type="digest", period="today")
    await query(database_url, "DELETE FROM reports.operations WHERE id = :id", id=op.id)
    report_id = uuid.UUID(op.target.removeprefix("reports/"))
    assert (await reports.get_report(report_id, tenant=tenant)).state == "UNKNOWN"
    with pytest.raises(FailedPrecondition) as info:
        await reports.download(report_id, tenant=tenant)
    assert info.value.reason == "REPORT_FAILED"


async def test_generate_stores_the_file_once_and_succeeds_the_operation(container, database_url):
    service = fixed_clock_service(container, dt.datetime(2026, 11, 25, 6, tzinfo=dt.UTC))
    tenant = new_tenant()
    for event in [import_completed(tenant, "ds1", 10, 1), import_completed(tenant, "ds2", 5, 0)]:
        await service.handle_event(event.to_dict())
    op = await service.create_report(tenant=tenant, type="dataset_daily", period="yesterday")
    response = await service.run_generate(op.id)
    report_id = uuid.UUID(op.target.removeprefix("reports/"))
    assert response["report"] == f"reports/{report_id}"
    assert response["row_count"] == 2
    report, file = await service.download(report_id, tenant=tenant)
    assert report.state == "SUCCEEDED"
    assert report.size_bytes == len(file.content) == response["size_bytes"]
    assert file.file_name == "dataset_daily_2026-11-24.csv"
    assert file.content_type.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(file.content.decode())))
    assert [(r["dataset_id"], r["rows_accepted"], r["rows_rejected"]) for r in rows] == [
        ("ds1", "10", "1"),
        ("ds2", "5", "0"),
    ]
    # A redelivered task for the done operation does nothing.
    from domains.operations.execution import Skip

    with pytest.raises(Skip):
        await service.run_generate(op.id)
    count = await query(
        database_url,
        "SELECT count(*) FROM reports.report_files WHERE report_id = :id",
        id=report_id,
    )
    assert count[0][0] == 1


async def test_generate_json_endpoint_report(container):
    service = fixed_clock_service(container, dt.datetime(2026, 11, 25, 6, tzinfo=dt.UTC))
    tenant = new_tenant()
    for ms in (100.0, 200.0):
        await service.handle_event(delivery(tenant, "ep", latency_ms=ms).to_dict())
    await service.handle_event(delivery(tenant, "ep", "Failed").to_dict())
    op = await service.create_report(
        tenant=tenant,
        type="endpoint_daily",
        period={"start_date": "2026-11-24", "end_date": "2026-11-24"},
        format="json",
    )
    await service.run_generate(op.id)
    _, file = await service.download(uuid.UUID(op.target.removeprefix("reports/")), tenant=tenant)
    document = json.loads(file.content)
    assert document["type"] == "endpoint_daily"
    assert document["period"]["label"] == "custom"
    [row] = document["rows"]
    assert (row["deliveries_succeeded"], row["deliveries_failed"]) == (2, 1)
    assert row["latency_p50_ms"] == pytest.approx(150.0)
    assert document["totals"]["deliveries_succeeded"] == 2


async def test_too_large_report_fails_permanently_and_marks_the_report(container):
    from domains.operations.model import OperationError
    from domains.shared.errors import PermanentError

    service = fixed_clock_service(
        container, dt.datetime(2026, 11, 25, 6, tzinfo=dt.UTC), max_report_bytes=10
    )
    tenant = new_tenant()
    op = await service.create_report(tenant=tenant, type="digest", period="yesterday")
    with pytest.raises(PermanentError) as info:
        await service.run_generate(op.id)
    # What the task adapter does with a permanent error:
    await service.fail_operation(op.id, OperationError(info.value.code, info.value.message))
    report = await service.get_report(uuid.UUID(op.target.removeprefix("reports/")), tenant=tenant)
    assert report.state == "FAILED"
    assert "over the limit" in (report.error or "")
    with pytest.raises(FailedPrecondition) as denied:
        await service.download(report.id, tenant=tenant)
    assert denied.value.reason == "REPORT_FAILED"


# ------------------------------------------------------------------ workflow


async def test_generate_workflow_accepts_the_default_digest_schedule_args(container):
    workflow = registry()["reports.generate"]
    args = workflow.input_model.model_validate(
        {"type": "digest", "period": "yesterday", "format": "csv"}
    )
    tenant = new_tenant()
    op = await workflow.start(
        container, args, StartContext(tenant=tenant, request_id="schedule:digest:2026-11-25")
    )
    assert (op.domain, op.type, op.tenant) == ("reports", "generate", tenant)
    again = await workflow.start(
        container, args, StartContext(tenant=tenant, request_id="schedule:digest:2026-11-25")
    )
    assert again.id == op.id  # one run per schedule slot
    custom = workflow.input_model.model_validate(
        {"type": "dataset_daily", "period": {"start_date": "2026-11-01", "end_date": "2026-11-02"}}
    )
    op2 = await workflow.start(container, custom, StartContext(tenant=tenant))
    report = await container.reports.get_report(
        uuid.UUID(op2.target.removeprefix("reports/")), tenant=tenant
    )
    assert (report.start_date, report.end_date) == (dt.date(2026, 11, 1), dt.date(2026, 11, 2))
    with pytest.raises(ValueError):
        workflow.input_model.model_validate({"type": "digest", "period": "yesterday", "x": 1})
