"""API level: datasets, imports and records routes through httpx (no worker needed here)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.config.sections.imports import ImportsSettings
from tests.support.imports import (
    FIELDS,
    create_dataset,
    insert_record_sql,
    records_table_sql,
    upload,
)
from tests.support.ops import query


async def test_dataset_create_get_list_patch_delete(client):
    dataset = await create_dataset(client)
    assert dataset["name"] == f"datasets/{dataset['id']}"
    assert dataset["key_field"] == "id" and dataset["record_count"] == 0
    got = await client.get(f"/v1/{dataset['name']}")
    assert got.status_code == 200 and got.json()["fields"][1]["type"] == "number"
    patched = await client.patch(
        f"/v1/datasets/{dataset['id']}",
        json={"display_name": "Sales", "fields": [*FIELDS, {"name": "extra", "type": "string"}]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["display_name"] == "Sales"
    assert patched.json()["fields"][-1]["name"] == "extra"
    names = set()
    token = ""
    while True:
        page = (
            await client.get("/v1/datasets", params={"page_size": 2, "page_token": token})
        ).json()
        names |= {d["name"] for d in page["datasets"]}
        token = page["next_page_token"]
        if not token:
            break
    assert dataset["name"] in names
    assert (await client.delete(f"/v1/datasets/{dataset['id']}")).status_code == 200
    missing = await client.get(f"/v1/datasets/{dataset['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["details"][0]["reason"] == "DATASET_NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"display_name": "x", "fields": [{"name": "a", "type": "string"}], "key_field": "a"},
            "must be required",
        ),
        (
            {
                "display_name": "x",
                "fields": [{"name": "a", "type": "blob", "required": True}],
                "key_field": "a",
            },
            "fields.0.type",
        ),
        (
            {
                "display_name": "x",
                "fields": [{"name": "a", "type": "string", "required": True}],
                "key_field": "b",
            },
            "not a declared field",
        ),
        ({"display_name": "x", "fields": [], "key_field": "a"}, "fields"),
        (
            {
                "display_name": "x",
                "fields": [{"name": "a", "type": "string", "required": True}],
                "key_field": "a",
                "surprise": 1,
            },
            "surprise",
        ),
    ],
)
async def test_bad_dataset_is_a_400_saying_what_to_fix(client, body, message):
    response = await client.post("/v1/datasets", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert message in response.json()["error"]["message"]


async def _insert_record(
    database_url: str, dataset_id: str, key: str, data: dict[str, Any]
) -> None:
    await query(
        database_url,
        insert_record_sql(dataset_id),
        k=key,
        data=json.dumps(data),
        i=str(uuid.uuid4()),
    )


async def test_schema_change_breaking_stored_records_is_failed_precondition(client, database_url):
    dataset = await create_dataset(client)
    await _insert_record(database_url, dataset["id"], "k1", {"id": "k1", "amount": 1})
    response = await client.patch(
        f"/v1/datasets/{dataset['id']}", json={"fields": [f for f in FIELDS if f["name"] != "qty"]}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "FAILED_PRECONDITION"
    assert "field 'qty' is removed" in error["message"]
    assert error["details"][0]["reason"] == "BREAKING_SCHEMA_CHANGE"


async def test_records_filter_on_typed_fields_with_paging(client, database_url):
    dataset = await create_dataset(client)
    for i in range(6):
        await _insert_record(
            database_url,
            dataset["id"],
            f"k{i}",
            {
                "id": f"k{i}",
                "amount": i * 10.5,
                "qty": i,
                "country": "DE" if i % 2 else "FR",
                "paid": i % 3 == 0,
                "ordered_on": f"2026-01-0{i + 1}",
                "created": f"2026-01-0{i + 1}T10:00:00+00:00",
            },
        )
    url = f"/v1/datasets/{dataset['id']}/records"

    async def keys(filter_: str) -> list[str]:
        response = await client.get(url, params={"filter": filter_})
        assert response.status_code == 200, response.text
        return [r["key"] for r in response.json()["records"]]

    assert await keys('amount > 20 AND country = "DE"') == ["k3", "k5"]
    assert await keys("qty <= 1") == ["k0", "k1"]
    assert await keys("paid = true") == ["k0", "k3"]
    assert await keys("ordered_on >= 2026-01-05") == ["k4", "k5"]
    assert await keys('created < "2026-01-02T12:00:00Z"') == ["k0", "k1"]
    assert await keys('id = "k2"') == ["k2"]
    first = (await client.get(url, params={"page_size": 4})).json()
    assert [r["key"] for r in first["records"]] == ["k0", "k1", "k2", "k3"]
    second = (
        await client.get(url, params={"page_size": 4, "page_token": first["next_page_token"]})
    ).json()
    assert [r["key"] for r in second["records"]] == ["k4", "k5"]
    assert second["next_page_token"] == ""
    bad = await client.get(url, params={"filter": "colour = 1"})
    assert bad.status_code == 400
    assert "unknown field" in bad.json()["error"]["message"]
    mistyped = await client.get(url, params={"filter": 'amount > "lots"'})
    assert mistyped.status_code == 400
    assert "must be a number" in mistyped.json()["error"]["message"]
    record = await client.get(f"{url}/k3")
    assert record.status_code == 200 and record.json()["data"]["qty"] == 3
    assert (await client.get(f"{url}/nope")).status_code == 404


async def test_raw_csv_body_is_stored_durably_before_the_2xx(client, api_app):
    dataset = await create_dataset(client)
    data = b"id,amount\nk1,1\n"
    response = await client.post(
        f"/v1/datasets/{dataset['id']}/imports",
        content=data,
        headers={"content-type": "text/csv"},
        params={"request_id": "raw-1"},
    )
    assert response.status_code == 200, response.text
    op = response.json()
    assert op["metadata"]["state"] == "PENDING" and op["metadata"]["type"] == "import"
    service = api_app.state.container.imports
    import_id = uuid.UUID(op["metadata"]["target"].rsplit("/", 1)[1])
    item = await service.get_import("default", uuid.UUID(dataset["id"]), import_id)
    stored = await asyncio.to_thread(pathlib.Path(service.store.path(item.file_path)).read_bytes)
    assert stored == data
    assert item.size_bytes == len(data)
    again = await client.post(
        f"/v1/datasets/{dataset['id']}/imports",
        content=data,
        headers={"content-type": "text/csv"},
        params={"request_id": "raw-1"},
    )
    assert again.json()["name"] == op["name"]
    listed = (await client.get(f"/v1/datasets/{dataset['id']}/imports")).json()
    assert [i["operation"] for i in listed["imports"]] == [op["name"]]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"content": b"x", "headers": {"content-type": "image/png"}}, "UNSUPPORTED_MEDIA_TYPE"),
        ({"data": {"format": "csv"}, "files": {"other": ("a.csv", b"id\n1\n")}}, "NO_FILE"),
        ({"json": {"source_uri": "http://127.0.0.1/x.csv"}}, "UNSAFE_URL"),
        ({"json": {"source_uri": "ftp://example.com/x.csv"}}, "UNSAFE_URL"),
        ({"json": {"nope": 1}}, "INVALID_REQUEST"),
        ({"content": b"", "headers": {"content-type": "text/csv"}}, "EMPTY_FILE"),
        (
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            "INVALID_MULTIPART",
        ),
        # Not text: refused at once rather than accepted and failed by the worker.
        ({"files": {"file": ("orders.xlsx", b"PK\x03\x04" + b"\x00" * 200)}}, "NOT_TEXT"),
        ({"content": b"\x89PNG\r\n\x1a\n", "headers": {"content-type": "text/csv"}}, "NOT_TEXT"),
        ({"files": {"file": ("a.csv", b"id,amount\nk,1\x00\n")}}, "NOT_TEXT"),
    ],
)
async def test_bad_import_requests_are_400s(client, kwargs, reason):
    dataset = await create_dataset(client)
    response = await client.post(f"/v1/datasets/{dataset['id']}/imports", **kwargs)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["reason"] == reason
    if reason == "NOT_TEXT":
        assert "upload a UTF-8 CSV" in response.json()["error"]["message"]
        listed = (await client.get(f"/v1/datasets/{dataset['id']}/imports")).json()
        assert not listed.get("imports"), listed  # nothing was recorded


async def test_import_into_a_missing_dataset_is_404(client):
    response = await upload(client, str(uuid.uuid4()), b"id,amount\nk,1\n")
    assert response.status_code == 404


@pytest.fixture
async def small_cap_client(
    settings, celery_app, tmp_path, auth_headers
) -> AsyncIterator[httpx.AsyncClient]:
    from app.main import create_app

    capped = settings.model_copy(
        update={"imports": ImportsSettings(storage_dir=str(tmp_path), max_upload_bytes=1000)}
    )
    app = create_app(capped, celery=celery_app)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://conveyor.test", headers=auth_headers
    ) as http:
        yield http
    await app.state.container.registry.dispose()


async def test_file_past_the_size_cap_is_413_while_streaming(small_cap_client, tmp_path):
    dataset = await create_dataset(small_cap_client)
    url = f"/v1/datasets/{dataset['id']}/imports"
    big = b"id,amount\n" + b"k,1\n" * 300

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    for response in (
        await upload(small_cap_client, dataset["id"], big),
        await small_cap_client.post(url, content=chunked(), headers={"content-type": "text/csv"}),
        await small_cap_client.post(url, content=big * 100, headers={"content-type": "text/csv"}),
    ):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["status"] == "RESOURCE_EXHAUSTED"
        assert "1000-byte limit" in error["message"]
    assert os.listdir(tmp_path) == [], "partial files are removed"
    small = await upload(small_cap_client, dataset["id"], b"id,amount\nk,1\n")
    assert small.status_code == 200


async def test_another_tenant_sees_nothing_and_scopes_are_enforced(client, settings):
    from tests.conftest import create_api_key

    dataset = await create_dataset(client)
    other = await create_api_key(settings, tenant="other-tenant")
    reader = await create_api_key(settings, scopes=("imports:read",))
    base = f"/v1/datasets/{dataset['id']}"
    as_other = {"authorization": f"Bearer {other}"}
    for method, path in (
        ("GET", base),
        ("PATCH", base),
        ("DELETE", base),
        ("GET", f"{base}/records"),
        ("GET", f"{base}/records/k1"),
        ("GET", f"{base}/imports"),
    ):
        response = await client.request(
            method, path, headers=as_other, json={} if method == "PATCH" else None
        )
        assert response.status_code == 404, (method, path, response.text)
    listed = (await client.get("/v1/datasets", headers=as_other)).json()
    assert dataset["name"] not in {d["name"] for d in listed["datasets"]}
    as_reader = {"authorization": f"Bearer {reader}"}
    assert (await client.get(base, headers=as_reader)).status_code == 200
    denied = await client.post(
        f"{base}/imports",
        content=b"id,amount\nk,1\n",
        headers={**as_reader, "content-type": "text/csv"},
    )
    assert denied.status_code == 403


async def test_encoding_errors_option_is_recorded_and_checked(client):
    dataset = await create_dataset(client)
    url = f"/v1/datasets/{dataset['id']}/imports"
    ok = await client.post(
        url,
        params={"encoding_errors": "reject_row"},
        content=b"id,amount\nk\xff,1\n",
        headers={"content-type": "text/csv"},
    )
    assert ok.status_code == 200, ok.text
    target = ok.json()["metadata"]["target"]
    item = await client.get(f"/v1/{target}")
    assert item.json()["encoding_errors"] == "reject_row"
    form = await client.post(
        url,
        data={"encoding_errors": "ignore"},
        files={"file": ("a.csv", b"id,amount\nk,1\n")},
    )
    assert form.status_code == 400, form.text
    assert "use fail, replace or reject_row" in form.json()["error"]["message"]
    query_ = await client.post(
        url,
        params={"encoding_errors": "ignore"},
        content=b"id,amount\nk,1\n",
        headers={"content-type": "text/csv"},
    )
    assert query_.status_code == 400, query_.text


async def test_an_import_task_carries_its_dataset_and_file_name_for_flower(client, database_url):
    dataset = await create_dataset(client)
    response = await upload(client, dataset["id"], b"order_id,amount\nA-1,1\n", filename="q3.csv")
    assert response.status_code == 200, response.text
    op_id = response.json()["name"].removeprefix("operations/imports.")
    rows = await query(
        database_url,
        "SELECT headers FROM imports.outbox WHERE task_id = :t",
        t=op_id,
    )
    assert rows, "no outbox row for the import"
    display = rows[0][0]["display"]
    assert display["dataset"] == dataset["display_name"] and display["file"] == "q3.csv", display


async def test_records_filter_hits_real_typed_columns_and_out_of_range_values_are_400(
    client, database_url
):
    dataset = await create_dataset(client)
    for i, qty in enumerate([2**62, -5, 9]):
        await _insert_record(
            database_url, dataset["id"], f"k{i}", {"id": f"k{i}", "amount": 1, "qty": qty}
        )
    url = f"/v1/datasets/{dataset['id']}/records"
    # A bigint compared as a number, not as text ("9" > "4611..." as text).
    response = await client.get(url, params={"filter": "qty > 100"})
    assert response.status_code == 200, response.text
    assert [r["key"] for r in response.json()["records"]] == ["k0"]
    assert response.json()["records"][0]["data"]["qty"] == 2**62
    columns = await query(
        database_url,
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped",
        t=records_table_sql(dataset["id"]),
    )
    types = dict(columns)
    assert types["qty"] == "bigint" and types["amount"] == "double precision"
    assert types["ordered_on"] == "date" and types["created"] == "timestamp with time zone"
    for value in (2**63, -(2**63) - 1, 10**30):
        beyond = await client.get(url, params={"filter": f"qty = {value}"})
        assert beyond.status_code == 400, (value, beyond.text)
        assert beyond.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert "out of its range" in beyond.json()["error"]["message"]
    edge = await client.get(url, params={"filter": f"qty < {2**63 - 1}"})
    assert edge.status_code == 200 and len(edge.json()["records"]) == 3


async def test_record_json_is_the_same_as_when_records_were_jsonb(client, database_url):
    dataset = await create_dataset(client)
    data = {
        "id": "k1",
        "amount": 1e20,
        "qty": -3,
        "paid": False,
        "score": 0.1,
        "ordered_on": "0999-01-31",
        "created": "2026-01-02T10:00:00.000100+00:00",
    }
    await _insert_record(database_url, dataset["id"], "k1", data)
    record = (await client.get(f"/v1/datasets/{dataset['id']}/records/k1")).json()
    # jsonb gave 1e20 back as the integer 100000000000000000000, and its own key order.
    assert record["data"] == {**data, "amount": 10**20}
    assert list(record["data"]) == ["id", "qty", "paid", "score", "amount", "created", "ordered_on"]
    assert isinstance(record["data"]["score"], float)


async def test_indexed_fields_get_an_index_and_the_key_always_has_one(client, database_url):
    fields = [dict(f, indexed=True) if f["name"] == "country" else f for f in FIELDS]
    response = await client.post(
        "/v1/datasets", json={"display_name": "Indexed", "fields": fields, "key_field": "id"}
    )
    assert response.status_code == 200, response.text
    dataset = response.json()
    assert next(f for f in dataset["fields"] if f["name"] == "country")["indexed"] is True

    async def indexed_columns() -> list[tuple[str, bool]]:
        rows = await query(
            database_url,
            "SELECT a.attname, i.indisunique FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = CAST(:t AS regclass) ORDER BY 1",
            t=records_table_sql(dataset["id"]),
        )
        return [(r[0], r[1]) for r in rows]

    assert await indexed_columns() == [("$key", True), ("country", False)]
    await _insert_record(database_url, dataset["id"], "k1", {"id": "k1", "amount": 1})
    # With records stored: a new optional indexed field becomes a column with an index, and
    # country stops being indexed.
    changed = [{k: v for k, v in f.items() if k != "indexed"} for f in fields]
    changed.append({"name": "region", "type": "string", "indexed": True})
    patched = await client.patch(f"/v1/datasets/{dataset['id']}", json={"fields": changed})
    assert patched.status_code == 200, patched.text
    assert await indexed_columns() == [("$key", True), ("region", False)]
    record = (await client.get(f"/v1/datasets/{dataset['id']}/records/k1")).json()
    assert record["data"] == {"id": "k1", "amount": 1}
