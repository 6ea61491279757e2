"""Task level: imports.run -> chord of imports.process_chunk -> imports.finalize on a real
in-process worker (real Redis broker and result backend, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import gzip
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.result import AsyncResult

from tests.support.imports import count_records_sql, create_dataset, generate_csv, upload
from tests.support.ops import op_path, query, wait_done


@pytest.fixture
def small_chunks(celery_worker: Any) -> Iterator[None]:
    """The worker splits files into 100-row chunks (many chunks from small files)."""
    from tasks.runtime import runtime

    service = runtime.container.imports
    old = service.policy
    service.policy = dataclasses.replace(old, chunk_rows=100)
    yield
    service.policy = old


def _op_id(op: dict[str, Any]) -> str:
    return op_path(op["name"]).split(".", 1)[1]


async def test_csv_import_upserts_valid_rows_and_lists_row_errors(client, small_chunks):
    dataset = await create_dataset(client)
    generated = generate_csv(1000, bad_every=100)
    response = await upload(client, dataset["id"], generated.data)
    assert response.status_code == 200, response.text
    op = response.json()
    assert op["metadata"]["type"] == "import"
    done = await wait_done(client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    result = done["response"]
    assert (result["rows_total"], result["rows_accepted"], result["rows_rejected"]) == (
        1000,
        990,
        10,
    )
    assert done["metadata"]["progress"]["done"] == done["metadata"]["progress"]["total"] == 1000

    item = (await client.get(f"/v1/{result['import']}")).json()
    assert item["state"] == "SUCCEEDED"
    assert item["rows_accepted"] == 990

    errors = await client.get(result["errors_uri"])
    assert errors.status_code == 200
    assert errors.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(errors.text)))
    assert rows[0] == ["line", "field", "reason", "raw_value"]
    assert [int(r[0]) for r in rows[1:]] == generated.bad_lines
    assert {r[1] for r in rows[1:]} == {"amount"}
    assert {r[3] for r in rows[1:]} == {"not-a-number"}

    listed = await client.get(
        f"/v1/datasets/{dataset['id']}/records",
        params={"filter": 'amount > 900 AND country = "DE"', "page_size": 1000},
    )
    assert listed.status_code == 200, listed.text
    got = {r["key"] for r in listed.json()["records"]}
    want = {k for k, v in generated.expected.items() if v["amount"] > 900 and v["country"] == "DE"}
    assert got == want and got
    record = (await client.get(f"/v1/datasets/{dataset['id']}/records/k00000001")).json()
    assert record["data"]["amount"] == 1.5
    assert record["data"]["paid"] is True
    assert (await client.get(f"/v1/datasets/{dataset['id']}")).json()["record_count"] == 990


async def test_final_counts_and_progress_are_in_celery_under_the_operation_id(
    client, small_chunks, celery_app
):
    dataset = await create_dataset(client)
    op = (await upload(client, dataset["id"], generate_csv(500).data)).json()
    await wait_done(client, op["name"])
    deadline = time.monotonic() + 10
    result = AsyncResult(_op_id(op), app=celery_app)
    while time.monotonic() < deadline and not (
        result.state == "SUCCESS" and "rows_total" in (result.result or {})
    ):
        await asyncio.sleep(0.1)
        result = AsyncResult(_op_id(op), app=celery_app)
    assert result.state == "SUCCESS"
    assert result.result["rows_total"] == 500


async def test_gzip_jsonl_import(client, small_chunks):
    dataset = await create_dataset(
        client,
        fields=[
            {"name": "sku", "type": "string", "required": True},
            {"name": "price", "type": "integer", "required": True},
            {"name": "on_sale", "type": "boolean"},
        ],
        key_field="sku",
    )
    lines = [json.dumps({"sku": f"s{i}", "price": i, "on_sale": i % 2 == 0}) for i in range(250)]
    lines.insert(10, '{"sku": "bad", "price": "cheap"}')
    lines.insert(20, "{not json")
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    op = (await upload(client, dataset["id"], data, filename="items.jsonl.gz")).json()
    done = await wait_done(client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    assert (done["response"]["rows_accepted"], done["response"]["rows_rejected"]) == (250, 2)
    errors = (
        await client.get(done["response"]["errors_uri"], headers={"accept": "application/json"})
    ).json()
    assert [(e["line"], e["field"]) for e in errors["errors"]] == [(11, "price"), (21, "")]
    listed = (
        await client.get(
            f"/v1/datasets/{dataset['id']}/records",
            params={"filter": "price >= 240 on_sale = true"},
        )
    ).json()
    assert sorted(r["key"] for r in listed["records"]) == ["s240", "s242", "s244", "s246", "s248"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "looks like a PNG image"),
        ("id,amount\nk1,1\n".encode("utf-16"), "save it as UTF-8"),
    ],
)
async def test_file_that_is_not_text_is_refused_at_upload_with_what_to_fix(
    client, database_url, data, message
):
    dataset = await create_dataset(client)
    response = await upload(client, dataset["id"], data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert message in error["message"], error
    imports = await query(
        database_url,
        "SELECT count(*) FROM imports.imports WHERE dataset_id = CAST(:d AS uuid)",
        d=dataset["id"],
    )
    assert imports[0][0] == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"k1,1.5,3\nk2,2.5,4\n", "line 1 must be a header"),
        (b"id,amount,colour\nk1,1,red\n", "does not declare: 'colour'"),
        (b"qty,country\n1,DE\n", "lacks required columns id, amount"),
        (b"id,amount\n", "no data rows"),
    ],
)
async def test_unreadable_file_fails_the_operation_with_what_to_fix(
    client, small_chunks, database_url, data, message
):
    dataset = await create_dataset(client)
    response = await upload(client, dataset["id"], data)
    assert response.status_code == 200, response.text
    op = response.json()
    done = await wait_done(client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "FAILED"
    assert message in done["error"]["message"], done["error"]
    target = done["metadata"]["target"]
    item = (await client.get(f"/v1/{target}")).json()
    assert item["state"] == "FAILED"
    assert message in item["error"]
    records = await query(database_url, count_records_sql(dataset["id"]))
    assert records[0][0] == 0


async def test_file_with_no_valid_row_fails_but_keeps_its_row_errors(client, small_chunks):
    dataset = await create_dataset(client)
    data = b"id,amount\nk1,x\nk2,y\n"
    op = (await upload(client, dataset["id"], data)).json()
    done = await wait_done(client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "FAILED"
    assert "no row of the file was valid" in done["error"]["message"]
    errors = await client.get(f"/v1/{done['metadata']['target']}/errors")
    assert len(errors.text.strip().splitlines()) == 3


async def test_same_request_id_and_file_is_one_import_and_new_file_upserts_by_key(
    client, small_chunks, database_url
):
    dataset = await create_dataset(client)
    first = generate_csv(300, bad_every=0)
    a = (await upload(client, dataset["id"], first.data, request_id="imp-1")).json()
    b = (await upload(client, dataset["id"], first.data, request_id="imp-1")).json()
    assert a["name"] == b["name"]
    other = await upload(client, dataset["id"], b"id,amount\nk00000001,5\n", request_id="imp-1")
    assert other.status_code == 409
    await wait_done(client, a["name"])
    # A different file: k00000001 is updated, k99 is new, the rest stays.
    c = (
        await upload(client, dataset["id"], b"id,amount,note\nk00000001,5,updated\nk99,1,new\n")
    ).json()
    done = await wait_done(client, c["name"])
    assert done["metadata"]["state"] == "SUCCEEDED", done
    imports = await query(
        database_url,
        "SELECT count(*) FROM imports.imports WHERE dataset_id = CAST(:d AS uuid)",
        d=dataset["id"],
    )
    assert imports[0][0] == 2
    record = (await client.get(f"/v1/datasets/{dataset['id']}/records/k00000001")).json()
    assert record["data"] == {"id": "k00000001", "amount": 5, "note": "updated"}
    assert (await client.get(f"/v1/datasets/{dataset['id']}")).json()["record_count"] == 301


async def test_completion_and_failure_emit_integration_events_through_the_outbox(
    client, small_chunks, database_url
):
    dataset = await create_dataset(client)
    ok = (await upload(client, dataset["id"], generate_csv(120).data)).json()
    bad = (await upload(client, dataset["id"], b"nope\n1\n")).json()
    await wait_done(client, ok["name"])
    await wait_done(client, bad["name"])
    rows = await query(
        database_url,
        "SELECT kwargs FROM imports.outbox WHERE task_name = 'conveyor.event'"
        " AND kwargs->'event'->'data'->>'dataset_id' = :d",
        d=dataset["id"],
    )
    found = {row[0]["event"]["type"]: row[0]["event"] for row in rows}
    completed = found["imports.ImportCompleted"]["data"]
    assert completed["dataset_display_name"] == "Orders"
    assert set(completed) == {
        "dataset_display_name",
        "dataset_id",
        "dataset",
        "import_id",
        "import",
        "operation",
        "rows_total",
        "rows_accepted",
        "rows_rejected",
        "completed_time",
    }
    assert completed["operation"] == ok["name"]
    assert (completed["rows_total"], completed["rows_accepted"], completed["rows_rejected"]) == (
        120,
        119,
        1,
    )
    failed = found["imports.ImportFailed"]["data"]
    assert set(failed) - {"dataset_display_name"} == {
        "dataset_id",
        "dataset",
        "import_id",
        "import",
        "operation",
        "error",
    }
    assert failed["operation"] == bad["name"]
    assert "header" in failed["error"]


async def test_jsonl_nested_100000_deep_is_an_input_error_not_a_retry_loop(client, small_chunks):
    dataset = await create_dataset(
        client,
        fields=[{"name": "sku", "type": "string", "required": True}],
        key_field="sku",
    )
    deep = "[" * 100_000 + "]" * 100_000
    # A deep row among good ones: that row is rejected, the import succeeds, nothing retried.
    lines = ['{"sku": "a"}', deep, '{"sku": "b"}']
    op = (
        await upload(client, dataset["id"], ("\n".join(lines) + "\n").encode(), filename="d.jsonl")
    ).json()
    done = await wait_done(client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    assert (done["response"]["rows_accepted"], done["response"]["rows_rejected"]) == (2, 1)
    assert done["metadata"]["attempt"] == 1
    errors = (
        await client.get(done["response"]["errors_uri"], headers={"accept": "application/json"})
    ).json()
    assert [(e["line"], e["reason"]) for e in errors["errors"]] == [
        (2, "input nested too deeply to parse")
    ]
    # As the first record: the file fails at once, saying where.
    op = (await upload(client, dataset["id"], (deep + "\n").encode(), filename="d.jsonl")).json()
    done = await wait_done(client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "FAILED", done
    assert "line 1 is nested too deeply" in done["error"]["message"]
    assert done["metadata"]["attempt"] == 1


async def test_duplicate_keys_across_chunks_merged_concurrently_keep_the_last_line(
    client, small_chunks
):
    # 100-row chunks merged two at a time by the finalize: "dup" is in chunks 0, 2 and 4,
    # "twin" in chunks 1 and 3; the last line of each must win, counted once each.
    dataset = await create_dataset(client)
    lines = ["id,amount,qty,country"]
    for i in range(500):
        key, qty = f"k{i}", i
        if i in (5, 250, 470):
            key = "dup"
        elif i in (150, 350):
            key = "twin"
        lines.append(f"{key},{i}.5,{qty},DE")
    op = (await upload(client, dataset["id"], ("\n".join(lines) + "\n").encode())).json()
    done = await wait_done(client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    records = f"/v1/datasets/{dataset['id']}/records"
    assert (await client.get(f"{records}/dup")).json()["data"]["qty"] == 470
    assert (await client.get(f"{records}/twin")).json()["data"]["qty"] == 350
    assert (await client.get(f"/v1/datasets/{dataset['id']}")).json()["record_count"] == 497
    # The filter compares the bigint column: 470 > 99 (as text "470" < "99").
    listed = await client.get(records, params={"filter": "qty > 465", "page_size": 100})
    assert sorted(r["key"] for r in listed.json()["records"]) == [
        "dup", "k466", "k467", "k468", "k469", "k471", "k472", "k473", "k474", "k475",
        "k476", "k477", "k478", "k479", "k480", "k481", "k482", "k483", "k484", "k485",
        "k486", "k487", "k488", "k489", "k490", "k491", "k492", "k493", "k494", "k495",
        "k496", "k497", "k498", "k499",
    ]  # fmt: skip
