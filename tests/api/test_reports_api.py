"""API level: /v1/reports through the real API, database, broker and an in-process worker."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from domains.shared.clock import utcnow
from tests.support.ops import wait_done
from tests.support.reports import delivery, import_completed, import_failed


def report_id_of(op: dict) -> str:
    return op["metadata"]["target"].removeprefix("reports/")


async def seed_today(api_app, events) -> None:
    service = api_app.state.container.reports
    for event in events:
        await service.handle_event(event.to_dict())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"period": "yesterday"}, "type"),
        ({"type": "weekly"}, "type"),
        ({"type": "digest", "format": "xlsx"}, "format"),
        ({"type": "digest", "period": "last_week"}, "period"),
        ({"type": "digest", "period": {"start_date": "2026-11-24"}}, "end_date"),
        (
            {"type": "digest", "period": {"start_date": "2026-13-01", "end_date": "2026-12-01"}},
            "start_date",
        ),
        (
            {"type": "digest", "period": {"start_date": "2026-11-24", "end_date": "2026-11-01"}},
            "end_date",
        ),
        ({"type": "digest", "colour": "red"}, "colour"),
        ({"type": "digest", "request_id": ""}, "request_id"),
    ],
)
async def test_create_report_rejects_bad_input_with_aip193_error(client, body, field):
    response = await client.post("/v1/reports", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert field in error["message"] or field in json.dumps(error["details"])


async def test_too_long_period_is_invalid_argument_saying_the_limit(client):
    response = await client.post(
        "/v1/reports",
        json={"type": "digest", "period": {"start_date": "2020-01-01", "end_date": "2026-01-01"}},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"][0]["reason"] == "PERIOD_TOO_LONG"
    assert "at most 366" in error["message"]


async def test_get_and_download_unknown_or_malformed_report(client):
    unknown = uuid.uuid4()
    for path in (f"/v1/reports/{unknown}", f"/v1/reports/{unknown}:download"):
        response = await client.get(path)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["details"][0]["reason"] == "REPORT_NOT_FOUND"
    response = await client.get("/v1/reports/nope:download")
    assert response.status_code == 400
    assert "not a valid UUID" in response.json()["error"]["message"]


async def test_create_generate_get_and_download_csv(client, api_app, celery_worker):
    # default tenant: seed today's projections, then ask for today's digest as CSV.
    now = utcnow()
    before = await client.post(
        "/v1/reports", json={"type": "digest", "period": "today", "format": "json"}
    )
    await wait_done(client, before.json()["name"])
    _, baseline = await _download_json(client, report_id_of(before.json()))
    await seed_today(
        api_app,
        [
            import_completed("default", "api-ds", 40, 2, time=now),
            import_failed("default", "api-ds", time=now),
            delivery("default", "api-ep", latency_ms=20.0, time=now),
            delivery("default", "api-ep", "Dead", time=now),
        ],
    )
    response = await client.post(
        "/v1/reports",
        json={
            "type": "digest",
            "period": "today",
            "format": "csv",
            "request_id": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 200, response.text
    op = response.json()
    assert op["name"].startswith("operations/reports.")
    assert op["metadata"]["type"] == "generate"
    assert op["metadata"]["state"] == "PENDING"
    done = await wait_done(client, op["name"])
    assert done["metadata"]["state"] == "SUCCEEDED", done
    report_id = report_id_of(op)
    assert done["response"]["download_uri"] == f"/v1/reports/{report_id}:download"

    report = (await client.get(f"/v1/reports/{report_id}")).json()
    assert report["state"] == "SUCCEEDED"
    assert report["type"] == "digest"
    assert report["format"] == "csv"
    assert report["operation"] == op["name"]
    assert report["period"]["label"] == "today"
    assert report["period"]["start_date"] == now.date().isoformat()
    assert report["row_count"] == 1

    download = await client.get(report["download_uri"])
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert (
        download.headers["content-disposition"]
        == f'attachment; filename="digest_{now.date().isoformat()}.csv"'
    )
    assert int(report["size_bytes"]) == len(download.content)
    [row] = list(csv.DictReader(io.StringIO(download.text)))
    base = baseline["rows"][0]
    assert int(row["imports_completed"]) == base["imports_completed"] + 1
    assert int(row["imports_failed"]) == base["imports_failed"] + 1
    assert int(row["rows_accepted"]) == base["rows_accepted"] + 40
    assert int(row["rows_rejected"]) == base["rows_rejected"] + 2
    assert int(row["deliveries_succeeded"]) == base["deliveries_succeeded"] + 1
    assert int(row["deliveries_dead"]) == base["deliveries_dead"] + 1


async def _download_json(client, report_id: str) -> tuple[dict, dict]:
    response = await client.get(f"/v1/reports/{report_id}:download")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return dict(response.headers), response.json()


async def test_download_json_dataset_report(client, api_app, celery_worker):
    now = utcnow()
    dataset = f"json-{uuid.uuid4().hex[:6]}"
    await seed_today(api_app, [import_completed("default", dataset, 9, 1, time=now)])
    op = (
        await client.post(
            "/v1/reports", json={"type": "dataset_daily", "period": "today", "format": "json"}
        )
    ).json()
    await wait_done(client, op["name"])
    headers, document = await _download_json(client, report_id_of(op))
    assert headers["content-disposition"].endswith('.json"')
    assert document["report"] == f"reports/{report_id_of(op)}"
    mine = [r for r in document["rows"] if r["dataset_id"] == dataset]
    assert mine == [
        {
            "day": now.date().isoformat(),
            "dataset_id": dataset,
            "dataset": f"datasets/{dataset}",
            "imports_completed": 1,
            "imports_failed": 0,
            "rows_total": 10,
            "rows_accepted": 9,
            "rows_rejected": 1,
        }
    ]


async def test_download_before_the_file_exists_is_failed_precondition(client, settings):
    # Requested through a container without a publisher: nothing reaches a worker, so the
    # report stays PENDING until it is cancelled.
    from app.container import Container
    from app.db import EngineRegistry

    registry = EngineRegistry(settings)
    try:
        service = Container(settings, registry).reports
        op = await service.create_report(tenant="default", type="digest", period="today")
    finally:
        await registry.dispose()
    report_id = op.target.removeprefix("reports/")
    response = await client.get(f"/v1/reports/{report_id}:download")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "FAILED_PRECONDITION"
    assert error["details"][0]["reason"] == "REPORT_NOT_READY"
    assert op.name in error["message"]

    cancel = await client.post(f"/v1/operations/reports.{op.id}:cancel")
    assert cancel.status_code == 200, cancel.text
    report = (await client.get(f"/v1/reports/{report_id}")).json()
    assert report["state"] == "CANCELLED"
    assert report["download_uri"] is None
    response = await client.get(f"/v1/reports/{report_id}:download")
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "REPORT_FAILED"


async def test_request_id_returns_the_same_operation(client):
    body = {"type": "endpoint_daily", "period": "yesterday", "request_id": str(uuid.uuid4())}
    first = (await client.post("/v1/reports", json=body)).json()
    again = (await client.post("/v1/reports", json=body)).json()
    assert again["name"] == first["name"]
    conflict = await client.post("/v1/reports", json={**body, "format": "json"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["status"] == "ALREADY_EXISTS"


async def test_list_reports_pages_and_filters(client):
    created = []
    for _ in range(3):
        op = (
            await client.post("/v1/reports", json={"type": "endpoint_daily", "format": "json"})
        ).json()
        created.append(report_id_of(op))
    seen: list[str] = []
    token = ""
    flt = 'type = "endpoint_daily" AND format = "json"'
    for _ in range(50):
        params = {"page_size": 2, "filter": flt}
        if token:
            params["page_token"] = token
        response = await client.get("/v1/reports", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["reports"]) <= 2
        assert all(r["type"] == "endpoint_daily" and r["format"] == "json" for r in body["reports"])
        seen += [r["name"].removeprefix("reports/") for r in body["reports"]]
        token = body["next_page_token"]
        if not token:
            break
    assert seen[-3:] == created
    assert len(seen) == len(set(seen))

    # A token is bound to its filter; unknown fields say which are filterable.
    first = (await client.get("/v1/reports", params={"page_size": 1, "filter": flt})).json()
    mismatch = await client.get(
        "/v1/reports", params={"page_token": first["next_page_token"], "filter": 'type = "digest"'}
    )
    assert mismatch.status_code == 400
    future = await client.get(
        "/v1/reports", params={"filter": 'create_time > "2999-01-01T00:00:00Z"'}
    )
    assert future.status_code == 200
    assert future.json() == {"reports": [], "next_page_token": ""}
    bad = await client.get("/v1/reports", params={"filter": 'state = "SUCCEEDED"'})
    assert bad.status_code == 400
    assert "type" in bad.json()["error"]["message"]


async def test_reports_are_isolated_between_tenants_and_need_their_scope(api_app, client, settings):
    import httpx

    from tests.conftest import create_api_key

    mine = (await client.post("/v1/reports", json={"type": "digest"})).json()
    report_id = report_id_of(mine)
    other_key = await create_api_key(settings, tenant="reports-other", scopes=("reports:read",))
    transport = httpx.ASGITransport(app=api_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://conveyor.test",
        headers={"authorization": f"Bearer {other_key}"},
    ) as other:
        for path in (f"/v1/reports/{report_id}", f"/v1/reports/{report_id}:download"):
            response = await other.get(path)
            assert response.status_code == 404, response.text
        listed = (await other.get("/v1/reports")).json()
        assert all(r["name"] != f"reports/{report_id}" for r in listed["reports"])
        denied = await other.post("/v1/reports", json={"type": "digest"})
        assert denied.status_code == 403
        assert denied.json()["error"]["status"] == "PERMISSION_DENIED"
