"""Unit: report periods, event contracts -> deltas, and file rendering (no I/O)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid

import pytest

from domains.reports.events import (
    DatasetDelta,
    EndpointDelta,
    MalformedEvent,
    parse_envelope,
    to_delta,
)
from domains.reports.model import (
    DATASET_COLUMNS,
    Period,
    Report,
    ReportFormat,
    ReportType,
    Table,
    render,
)
from domains.shared.errors import InvalidArgument
from tests.support.reports import NOON, delivery, import_completed, import_failed

TODAY = dt.date(2026, 11, 25)


def test_relative_periods_resolve_against_today():
    assert Period.resolve("yesterday", TODAY, max_days=1) == Period(
        dt.date(2026, 11, 24), dt.date(2026, 11, 24), "yesterday"
    )
    assert Period.resolve("today", TODAY, max_days=1).start_date == TODAY


def test_custom_period_is_inclusive_and_bounded():
    period = Period.resolve(
        {"start_date": "2026-11-01", "end_date": "2026-11-30"}, TODAY, max_days=30
    )
    assert (period.days, period.label) == (30, "custom")
    assert period.end_time - period.start_time == dt.timedelta(days=30)
    with pytest.raises(InvalidArgument, match="at most 29"):
        Period.resolve({"start_date": "2026-11-01", "end_date": "2026-11-30"}, TODAY, max_days=29)
    with pytest.raises(InvalidArgument, match="unknown field"):
        Period.resolve(
            {"start_date": "2026-11-01", "end_date": "2026-11-02", "tz": "x"}, TODAY, max_days=5
        )


def test_contract_events_map_to_deltas_on_their_utc_day():
    completed = to_delta(import_completed("t", "ds", 7, 3))
    assert completed == DatasetDelta(
        tenant="t",
        dataset_id="ds",
        dataset="datasets/ds",
        day=NOON.date(),
        imports_completed=1,
        rows_total=10,
        rows_accepted=7,
        rows_rejected=3,
    )
    assert to_delta(import_failed("t", "ds")) == DatasetDelta(
        "t", "ds", "datasets/ds", NOON.date(), imports_failed=1
    )
    ok = to_delta(delivery("t", "ep", latency_ms=12.5))
    assert isinstance(ok, EndpointDelta) and (ok.succeeded, ok.latency_ms) == (1, 12.5)
    assert to_delta(delivery("t", "ep", "Failed")) == EndpointDelta(
        "t", "ep", "endpoints/ep", NOON.date(), failed=1
    )
    assert to_delta(delivery("t", "ep", "Dead")) == EndpointDelta(
        "t", "ep", "endpoints/ep", NOON.date(), dead=1
    )


def test_envelope_round_trip_and_naive_time_is_utc():
    event = import_completed("t", "ds", 1, 0)
    envelope = event.to_dict()
    assert parse_envelope(envelope) == event
    envelope["time"] = "2026-11-24T23:59:00"
    assert parse_envelope(envelope).time.tzinfo is dt.UTC


@pytest.mark.parametrize(
    ("field", "value"),
    [("rows_accepted", "12"), ("rows_rejected", True), ("dataset_id", None), ("rows_total", -1)],
)
def test_contract_violations_are_malformed(field, value):
    event = import_completed("t", "ds", 1, 0)
    envelope = event.to_dict()
    envelope["data"][field] = value
    with pytest.raises(MalformedEvent, match=field):
        to_delta(parse_envelope(envelope))


def _report(fmt: ReportFormat) -> Report:
    return Report(
        id=uuid.uuid4(),
        tenant="t",
        type=ReportType.DATASET_DAILY,
        format=fmt,
        period_label="custom",
        start_date=dt.date(2026, 11, 1),
        end_date=dt.date(2026, 11, 2),
        operation_id=uuid.uuid4(),
        create_time=NOON,
    )


def test_csv_neutralises_spreadsheet_formulas_and_keeps_numbers():
    rows = [
        {"day": "2026-11-01", "dataset_id": "d", "dataset": '=HYPERLINK("x")', "rows_accepted": 5},
        {
            "day": "2026-11-02",
            "dataset_id": "e",
            "dataset": "plain, with comma",
            "rows_accepted": 0,
        },
    ]
    content = render(_report(ReportFormat.CSV), Table(DATASET_COLUMNS, rows), NOON).decode()
    parsed = list(csv.DictReader(io.StringIO(content)))
    assert parsed[0]["dataset"].startswith("'=")
    assert parsed[1]["dataset"] == "plain, with comma"
    assert parsed[0]["rows_accepted"] == "5"
    assert parsed[0]["imports_failed"] == ""  # missing value -> empty cell


def test_json_document_names_report_period_and_totals():
    report = _report(ReportFormat.JSON)
    assert report.file_name == "dataset_daily_2026-11-01_2026-11-02.json"
    document = json.loads(render(report, Table(["day"], [{"day": "2026-11-01"}], {"x": 1}), NOON))
    assert document["report"] == report.name
    assert document["period"] == {
        "label": "custom",
        "start_date": "2026-11-01",
        "end_date": "2026-11-02",
    }
    assert document["totals"] == {"x": 1}


def test_dataset_reports_name_the_dataset_by_its_display_name() -> None:
    from domains.imports import events as import_events
    from domains.imports.model import Import, ImportState
    from domains.shared.events import IntegrationEvent

    item = Import(
        id=uuid.uuid4(),
        dataset_id=uuid.uuid4(),
        tenant="default",
        operation_id=uuid.uuid4(),
        state=ImportState.SUCCEEDED,
        format="csv",
        create_time=NOON,
        rows_total=4,
        rows_accepted=3,
        rows_rejected=1,
    )
    completed = import_events.import_completed(item, "operations/imports.x", NOON, "Orders")
    failed = import_events.import_failed(item, "operations/imports.x", "boom", "Orders")
    for built in (completed, failed):
        # Through the envelope, as reports receive it.
        event = parse_envelope(json.loads(json.dumps(built.to_dict())))
        assert isinstance(event, IntegrationEvent)
        delta = to_delta(event)
        assert delta is not None and delta.dataset == "Orders", delta
        assert delta.dataset_id == str(item.dataset_id)
    # An event from before the display name was sent keeps working.
    old = import_events.import_completed(item, "operations/imports.x", NOON)
    assert to_delta(old).dataset == f"datasets/{item.dataset_id}"  # type: ignore[union-attr]
