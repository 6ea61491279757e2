"""End to end: imports with real `conveyor worker` subprocesses (prefork) and a relay: a 100k-row
CSV with 1% bad rows, a worker SIGKILLed mid-import, and a cancel mid-import."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.support.imports import (
    STAGING_TABLES_SQL,
    count_records_sql,
    create_dataset,
    generate_csv,
    staging_table,
    upload,
)
from tests.support.ops import get_op, op_path, query, wait_done

pytestmark = pytest.mark.e2e

ROWS = 100_000


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(x) for x in out.split()]


def _worker(stack: Any, chunk_rows: int) -> Any:
    return stack.worker(
        queues="imports", concurrency=2, env={"CONVEYOR_IMPORTS__CHUNK_ROWS": str(chunk_rows)}
    )


async def _wait_progress(client: Any, name: str, minimum: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    op: dict[str, Any] = {}
    while time.monotonic() < deadline:
        op = await get_op(client, name)
        if op["done"] or op["metadata"]["progress"]["done"] >= minimum:
            return op
        await asyncio.sleep(0.05)
    raise AssertionError(f"no progress past {minimum}: {op}")


async def _count(database_url: str, sql: str, **params: Any) -> int:
    return int((await query(database_url, sql, **params))[0][0])


async def _row_errors(database_url: str, import_id: str) -> int:
    return await _count(
        database_url,
        "SELECT count(*) FROM imports.row_errors WHERE import_id = CAST(:i AS uuid)",
        i=import_id,
    )


async def test_100k_row_csv_with_1_percent_bad_rows(stack, database_url):
    _worker(stack, 5000)
    _worker(stack, 5000)
    stack.relay()
    dataset = await create_dataset(stack.client)
    generated = generate_csv(ROWS, bad_every=100)
    response = await upload(stack.client, dataset["id"], generated.data)
    assert response.status_code == 200, response.text
    done = await wait_done(stack.client, response.json()["name"], timeout=180)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    result = done["response"]
    assert (result["rows_total"], result["rows_accepted"], result["rows_rejected"]) == (
        ROWS,
        ROWS - ROWS // 100,
        ROWS // 100,
    )
    assert await _count(
        database_url,
        count_records_sql(dataset["id"]),
    ) == len(generated.expected)

    errors = await stack.client.get(result["errors_uri"])
    rows = list(csv.reader(io.StringIO(errors.text)))[1:]
    assert [int(r[0]) for r in rows] == generated.bad_lines

    want = sorted(
        k for k, v in generated.expected.items() if v["amount"] > 990 and v["country"] == "DE"
    )
    got: list[str] = []
    token = ""
    while True:
        page = (
            await stack.client.get(
                f"/v1/datasets/{dataset['id']}/records",
                params={
                    "filter": 'amount > 990 AND country = "DE"',
                    "page_size": 100,
                    "page_token": token,
                },
            )
        ).json()
        got += [r["key"] for r in page["records"]]
        token = page["next_page_token"]
        if not token:
            break
    assert got == want and len(want) > 100


async def test_sigkill_of_a_worker_mid_import_still_completes_with_exact_counts(
    stack, database_url
):
    victim = _worker(stack, 500)
    _worker(stack, 500)
    stack.relay()
    dataset = await create_dataset(stack.client)
    generated = generate_csv(ROWS, bad_every=100)
    op = (await upload(stack.client, dataset["id"], generated.data)).json()
    seen = await _wait_progress(stack.client, op["name"], 5000)
    assert not seen["done"], "the import finished before the kill; make it longer"
    for pid in [*_children(victim.popen.pid), victim.popen.pid]:
        os.kill(pid, signal.SIGKILL)

    done = await wait_done(stack.client, op["name"], timeout=240)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    # The victim's chunk messages died with it: the sweeper re-dispatched imports.run, whose
    # second attempt sent the chunks not DONE again.
    assert done["metadata"]["attempt"] >= 2, done
    result = done["response"]
    assert (result["rows_total"], result["rows_accepted"], result["rows_rejected"]) == (
        ROWS,
        ROWS - ROWS // 100,
        ROWS // 100,
    )
    assert await _count(
        database_url,
        count_records_sql(dataset["id"]),
    ) == len(generated.expected)
    import_id = result["import"].rsplit("/", 1)[1]
    assert await _row_errors(database_url, import_id) == ROWS // 100, (
        "each chunk's row errors are recorded once"
    )
    assert (
        await _count(
            database_url,
            "SELECT count(*) FROM imports.staged_records WHERE import_id = CAST(:i AS uuid)",
            i=import_id,
        )
        == 0
    )
    assert (
        await _count(
            database_url,
            STAGING_TABLES_SQL,
            n=staging_table(import_id),
        )
        == 0
    ), "the import's staging table is dropped"


async def test_sigkill_inside_a_one_chunk_import_still_completes_exactly_once(stack, database_url):
    # chunk_rows = ROWS: one chunk, which imports.run processes and finalizes itself (no
    # fan-out). The kill lands after the split counted the rows, while that chunk runs.
    victim = _worker(stack, ROWS)
    stack.relay()
    dataset = await create_dataset(stack.client)
    generated = generate_csv(ROWS, bad_every=100)
    op = (await upload(stack.client, dataset["id"], generated.data)).json()
    deadline = time.monotonic() + 60
    seen = await get_op(stack.client, op["name"])
    while not seen["done"] and not seen["metadata"]["progress"].get("total"):
        assert time.monotonic() < deadline, f"the split never finished: {seen}"
        await asyncio.sleep(0.02)
        seen = await get_op(stack.client, op["name"])
    assert not seen["done"], "the import finished before the kill; make it longer"
    for pid in [*_children(victim.popen.pid), victim.popen.pid]:
        os.kill(pid, signal.SIGKILL)
    successor = _worker(stack, ROWS)

    done = await wait_done(stack.client, op["name"], timeout=240)
    assert done["metadata"]["state"] == "SUCCEEDED", done
    assert done["metadata"]["attempt"] >= 2, done  # the kill hit a running attempt
    result = done["response"]
    assert (result["rows_total"], result["rows_accepted"], result["rows_rejected"]) == (
        ROWS,
        ROWS - ROWS // 100,
        ROWS // 100,
    )
    assert await _count(database_url, count_records_sql(dataset["id"])) == len(generated.expected)
    import_id = result["import"].rsplit("/", 1)[1]
    chunks = await query(
        database_url,
        "SELECT chunk_no FROM imports.import_chunks WHERE import_id = CAST(:i AS uuid)",
        i=import_id,
    )
    assert [c.chunk_no for c in chunks] == [0]
    for worker in (victim, successor):  # no fan-out: the run processed the chunk itself
        assert "imports.process_chunk[" not in worker.log()
    assert await _row_errors(database_url, import_id) == ROWS // 100, (
        "the chunk's row errors are recorded once"
    )


async def test_cancel_mid_import_leaves_no_records(stack, database_url):
    worker = _worker(stack, 500)
    stack.relay()
    dataset = await create_dataset(stack.client)
    op = (await upload(stack.client, dataset["id"], generate_csv(ROWS).data)).json()
    seen = await _wait_progress(stack.client, op["name"], 2000)
    assert not seen["done"], "the import finished before the cancel; make it longer"
    cancel = await stack.client.post(f"/v1/operations/{op_path(op['name'])}:cancel")
    assert cancel.status_code == 200, cancel.text
    done = await wait_done(stack.client, op["name"], timeout=60)
    assert done["metadata"]["state"] == "CANCELLED", done
    import_id = done["metadata"]["target"].rsplit("/", 1)[1]
    item = (await stack.client.get(f"/v1/{done['metadata']['target']}")).json()
    assert item["state"] == "CANCELLED"
    # Chunk tasks still queued see the cancel and write nothing. Positive control: every chunk
    # task has run (the queue is empty and the worker reports one finished task per chunk).
    chunks = await _count(
        database_url,
        "SELECT count(*) FROM imports.import_chunks WHERE import_id = CAST(:i AS uuid)",
        i=import_id,
    )
    assert chunks > 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finished = len(re.findall(r"imports\.process_chunk\[[^\]]+\] succeeded", worker.log()))
        if stack.redis.llen("imports") == 0 and finished >= chunks:
            break
        await asyncio.sleep(0.2)
    assert stack.redis.llen("imports") == 0 and finished >= chunks, (finished, chunks)
    assert (
        await _count(
            database_url,
            count_records_sql(dataset["id"]),
        )
        == 0
    )
    assert (
        await _count(
            database_url,
            "SELECT count(*) FROM imports.staged_records WHERE import_id = CAST(:i AS uuid)",
            i=import_id,
        )
        == 0
    )
    assert (
        await _count(
            database_url,
            STAGING_TABLES_SQL,
            n=staging_table(import_id),
        )
        == 0
    ), "the import's staging table is dropped"
    listed = (await stack.client.get(f"/v1/datasets/{dataset['id']}/records")).json()
    assert listed["records"] == []
