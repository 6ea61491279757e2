"""Service level: ImportsService on the real database, driven step by step without Celery
(run -> chunks -> finalize), to pin down once-only effects, resume, stale callbacks and cancel.

The container has no fast-path publisher: outbox rows stay unsent, nothing reaches a broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import http.server
import pathlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.config.sections.imports import ImportsSettings
from app.container import Container
from app.db import EngineRegistry
from app.workflows import StartContext, registry
from domains.imports.model import FieldDef
from domains.imports.repository import SqlImportsRepository
from domains.imports.service import ImportsService
from domains.imports.storage import FileWriter
from domains.operations.model import State
from domains.shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermanentError,
    TransientError,
)
from tests.support.imports import (
    STAGING_TABLES_SQL,
    count_records_sql,
    generate_csv,
    staging_table,
)

FIELDS = [
    FieldDef("id", "string", required=True),
    FieldDef("amount", "number", required=True),
    FieldDef("country", "enum", values=("DE", "FR", "US", "GB")),
]


@pytest.fixture
async def container(settings: Settings, tmp_path: Any) -> AsyncIterator[Container]:
    section = ImportsSettings(storage_dir=str(tmp_path), chunk_rows=50)
    registry_ = EngineRegistry(settings.model_copy(update={"imports": section}))
    yield Container(registry_.settings, registry_)
    await registry_.dispose()


@pytest.fixture
def imports(container: Container) -> ImportsService:
    return container.imports


async def execute(container: Container, sql: str, **params: Any) -> list[Any]:
    async with container.registry.engine("imports").begin() as conn:
        result = await conn.execute(sa.text(sql), params)
        return list(result.all()) if result.returns_rows else []


async def stored(imports: ImportsService, data: bytes) -> Any:
    writer = imports.store.writer()
    writer.write(data)
    return await writer.commit()


async def new_import(
    imports: ImportsService, data: bytes, *, tenant: str = "t1"
) -> tuple[uuid.UUID, uuid.UUID]:
    dataset = await imports.create_dataset(
        tenant=tenant, display_name="d", fields=FIELDS, key_field="id"
    )
    op = await imports.create_import(
        tenant=tenant, dataset_id=dataset.id, stored=await stored(imports, data)
    )
    return dataset.id, op.id


async def count_records(container: Container, dataset_id: uuid.UUID) -> int:
    rows = await execute(container, count_records_sql(dataset_id))
    return int(rows[0][0])


def fan_out(imports: ImportsService) -> None:
    """Every import fans out, one chunk too (no run that processes its only chunk itself):
    for the tests that drive run, chunks and finalize step by step."""
    imports.policy = dataclasses.replace(imports.policy, inline_single_chunk=False)


def per_chunk_staging(imports: ImportsService) -> None:
    """Stages each chunk in its own table and merges chunk by chunk, as into a dataset that
    holds records (not the direct load into an empty one)."""
    imports.policy = dataclasses.replace(imports.policy, direct_load=False)


async def test_dataset_crud_is_per_tenant(imports: ImportsService):
    dataset = await imports.create_dataset(
        tenant="t1", display_name="Orders", fields=FIELDS, key_field="id"
    )
    assert (await imports.get_dataset("t1", dataset.id)).display_name == "Orders"
    with pytest.raises(NotFound):
        await imports.get_dataset("t2", dataset.id)
    with pytest.raises(NotFound):
        await imports.delete_dataset("t2", dataset.id)
    page, _ = await imports.list_datasets("t2", page_size=10, after_id=None)
    assert dataset.id not in {d.id for d in page}
    renamed = await imports.update_dataset("t1", dataset.id, display_name="Sales")
    assert renamed.display_name == "Sales"
    await imports.delete_dataset("t1", dataset.id)
    with pytest.raises(NotFound):
        await imports.get_dataset("t1", dataset.id)


@pytest.mark.parametrize(
    ("fields", "key_field", "message"),
    [
        ([], "id", "at least one field"),
        ([FieldDef("id", "string", True), FieldDef("id", "integer")], "id", "declared twice"),
        ([FieldDef("id", "uuid", True)], "id", "has type 'uuid'"),
        ([FieldDef("id", "string", True), FieldDef("c", "enum")], "id", "needs its allowed values"),
        ([FieldDef("id", "string")], "id", "must be required"),
        ([FieldDef("id", "string", True)], "nope", "not a declared field"),
        ([FieldDef("1bad", "string", True)], "1bad", "invalid"),
    ],
)
async def test_malformed_schema_is_refused(imports: ImportsService, fields, key_field, message):
    with pytest.raises(InvalidArgument, match=message):
        await imports.create_dataset(
            tenant="t1", display_name="x", fields=fields, key_field=key_field
        )


async def run_all(imports: ImportsService, op_id: uuid.UUID) -> dict[str, Any]:
    launched = await imports.run_import(op_id)
    if "launch" not in launched:
        return launched  # one chunk: processed and finalized by the run itself
    for chunk in launched["launch"]:
        await imports.process_chunk(op_id, launched["attempt"], chunk)
    return await imports.finalize(op_id, launched["attempt"])


async def test_schema_changes_that_break_stored_records_are_refused(
    imports: ImportsService, container: Container
):
    dataset_id, op_id = await new_import(imports, b"id,amount,country\na,1,DE\nb,2,FR\n")
    await run_all(imports, op_id)
    breaking = [
        ([FieldDef("id", "string", True)], "field 'amount' is removed"),
        ([FieldDef("id", "string", True), FieldDef("amount", "string", True), FIELDS[2]], "type"),
        ([*FIELDS, FieldDef("extra", "string", True)], "new field 'extra' is required"),
        ([*FIELDS[:2], FieldDef("country", "enum", values=("DE",))], "loses values"),
    ]
    for fields, message in breaking:
        with pytest.raises(FailedPrecondition, match=message):
            await imports.update_dataset("t1", dataset_id, fields=fields)
    with pytest.raises(FailedPrecondition, match="key field changes"):
        await imports.update_dataset(
            "t1",
            dataset_id,
            fields=[FieldDef("id", "string", True), FieldDef("amount", "number", True)],
            key_field="amount",
        )
    safe = [
        FieldDef("id", "string", True),
        FieldDef("amount", "number"),
        FieldDef("country", "enum", values=("DE", "FR", "US", "GB", "IT")),
        FieldDef("note", "string"),
    ]
    changed = await imports.update_dataset("t1", dataset_id, fields=safe)
    assert [f.name for f in changed.fields] == ["id", "amount", "country", "note"]


async def test_a_one_chunk_import_is_chunked_and_finalized_by_its_run_exactly_once(
    imports: ImportsService, container: Container, monkeypatch: pytest.MonkeyPatch
):
    # 41 rows, chunk_rows=50: one chunk, so the run processes it and finalizes (no fan-out).
    data = b"id,amount,country\n" + b"".join(b"k%d,%d,DE\n" % (i, i) for i in range(40))
    dataset_id, op_id = await new_import(imports, data + b"bad,not-a-number,DE\n")
    # Fault after the chunk committed, before the finalize did: the first run fails.
    attempts: list[int] = []
    real = ImportsService._finalize

    async def failing_once(self: ImportsService, execution: Any) -> dict[str, Any]:
        attempts.append(execution.attempt)
        if len(attempts) == 1:
            raise TransientError("injected: the connection dropped before the finalize")
        return await real(self, execution)

    monkeypatch.setattr(ImportsService, "_finalize", failing_once)
    with pytest.raises(TransientError, match="injected"):
        await imports.run_import(op_id)
    item = (await imports.list_imports("t1", dataset_id, page_size=1, after_id=None))[0][0]
    [chunk] = await execute(
        container,
        "SELECT chunk_no, state, rows_accepted FROM imports.import_chunks WHERE import_id = :i",
        i=item.id,
    )
    assert (chunk.chunk_no, chunk.rows_accepted) == (0, 40) and chunk.state != "PENDING"
    assert await count_records(container, dataset_id) == 0, "nothing visible before finalize"

    response = await imports.run_import(op_id)  # the retry: the chunk is done, finalize only
    assert attempts == [1, 2], "the fault hit, and a second attempt finished"
    assert "launch" not in response
    assert (response["rows_total"], response["rows_accepted"], response["rows_rejected"]) == (
        41,
        40,
        1,
    )
    assert await count_records(container, dataset_id) == 40
    errors = await execute(
        container, "SELECT count(*) FROM imports.row_errors WHERE import_id = :i", i=item.id
    )
    assert errors[0][0] == 1, "the chunk's row errors are recorded once"
    assert (await imports.get_dataset("t1", dataset_id)).record_count == 40


async def test_each_chunk_applies_once_and_records_appear_only_at_finalize(
    imports: ImportsService, container: Container
):
    per_chunk_staging(imports)
    generated = generate_csv(230, bad_every=10)
    data = b"id,amount,country\n" + b"".join(
        b"%s,%s,%s\n" % (line.split(b",")[0], line.split(b",")[1], line.split(b",")[3])
        for line in generated.data.splitlines()[1:]
    )
    dataset_id, op_id = await new_import(imports, data)
    launched = await imports.run_import(op_id)
    assert launched["launch"] == [0, 1, 2, 3, 4]
    for chunk in launched["launch"]:
        first = await imports.process_chunk(op_id, launched["attempt"], chunk)
        again = await imports.process_chunk(op_id, launched["attempt"], chunk)
        assert "rows_accepted" in first
        assert again == {"skipped": f"chunk {chunk} already done"}
    item = (await imports.list_imports("t1", dataset_id, page_size=1, after_id=None))[0][0]
    staged = 0
    for chunk in launched["launch"]:
        rows = await execute(
            container, f'SELECT count(*) FROM imports."{staging_table(item.id, chunk)}"'
        )
        staged += rows[0][0]
    assert staged == 207
    assert await count_records(container, dataset_id) == 0, "nothing visible before finalize"
    assert await imports.finalize(op_id, launched["attempt"] + 1) == {
        "skipped": f"attempt {launched['attempt'] + 1} was superseded by {launched['attempt']}"
    }
    response = await imports.finalize(op_id, launched["attempt"])
    assert (response["rows_total"], response["rows_accepted"], response["rows_rejected"]) == (
        230,
        207,
        23,
    )
    assert await count_records(container, dataset_id) == 207
    assert (await imports.finalize(op_id, launched["attempt"]))["skipped"]
    left = await execute(
        container,
        "SELECT count(*) FROM imports.staged_records s JOIN imports.imports i ON i.id = s.import_id"
        " WHERE i.operation_id = :o",
        o=op_id,
    )
    assert left[0][0] == 0
    tables_left = await execute(container, STAGING_TABLES_SQL, n=staging_table(item.id))
    assert tables_left[0][0] == 0, "the staging table is dropped with the merge"


async def test_early_chord_callback_waits_and_a_resumed_run_sends_only_missing_chunks(
    imports: ImportsService, container: Container
):
    rows = "".join(f"k{i},{i},DE\n" for i in range(200))
    dataset_id, op_id = await new_import(imports, ("id,amount,country\n" + rows).encode())
    first = await imports.run_import(op_id)
    await imports.process_chunk(op_id, first["attempt"], 0)
    await imports.process_chunk(op_id, first["attempt"], 2)
    # A callback firing before every chunk is DONE in the database does nothing.
    assert await imports.finalize(op_id, first["attempt"]) == {"waiting": 2}
    assert await count_records(container, dataset_id) == 0
    # The worker died: its lease expires, the sweeper re-dispatches imports.run.
    await execute(
        container,
        "UPDATE imports.operations SET heartbeat_time = :t WHERE id = :o",
        t=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        o=op_id,
    )
    await container.operations.sweep()
    second = await imports.run_import(op_id)
    assert second["attempt"] == first["attempt"] + 1
    assert second["launch"] == [1, 3]
    for chunk in second["launch"]:
        await imports.process_chunk(op_id, second["attempt"], chunk)
    assert (await imports.finalize(op_id, first["attempt"]))["skipped"]
    response = await imports.finalize(op_id, second["attempt"])
    assert response["rows_accepted"] == 200
    assert await count_records(container, dataset_id) == 200


async def test_resumed_run_with_every_chunk_done_finalizes_itself(
    imports: ImportsService, container: Container
):
    # 60 rows, two chunks (a one-chunk import would be finalized by the first run itself).
    rows = b"".join(b"k%d,%d\n" % (i, i) for i in range(60))
    _, op_id = await new_import(imports, b"id,amount\n" + rows)
    first = await imports.run_import(op_id)
    assert first["launch"] == [0, 1]
    for chunk in first["launch"]:
        await imports.process_chunk(op_id, first["attempt"], chunk)
    await execute(
        container,
        "UPDATE imports.operations SET heartbeat_time = :t WHERE id = :o",
        t=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        o=op_id,
    )
    await container.operations.sweep()
    response = await imports.run_import(op_id)
    assert response["rows_accepted"] == 60
    assert (
        await container.operations.get(f"imports.{op_id}", tenant="t1")
    ).state == State.SUCCEEDED


async def test_cancel_stops_chunks_and_deletes_staged_rows(
    imports: ImportsService, container: Container
):
    rows = "".join(f"k{i},{i}\n" for i in range(150))
    dataset_id, op_id = await new_import(imports, ("id,amount\n" + rows).encode())
    launched = await imports.run_import(op_id)
    await imports.process_chunk(op_id, launched["attempt"], 0)
    await container.operations.cancel(f"imports.{op_id}", tenant="t1")
    assert await imports.process_chunk(op_id, launched["attempt"], 1) == {"cancelled": True}
    assert (await imports.process_chunk(op_id, launched["attempt"], 2))["skipped"]
    assert (await imports.finalize(op_id, launched["attempt"]))["skipped"]
    assert (
        await container.operations.get(f"imports.{op_id}", tenant="t1")
    ).state == State.CANCELLED
    staged = await execute(
        container,
        "SELECT count(*) FROM imports.staged_records s JOIN imports.imports i ON i.id = s.import_id WHERE i.operation_id = :o",
        o=op_id,
    )
    assert staged[0][0] == 0
    assert await count_records(container, dataset_id) == 0
    item = (await imports.list_imports("t1", dataset_id, page_size=5, after_id=None))[0][0]
    assert item.state == "CANCELLED"
    tables_left = await execute(container, STAGING_TABLES_SQL, n=staging_table(item.id))
    assert tables_left[0][0] == 0, "cancel drops the staging table"


async def test_source_uri_to_a_private_address_is_refused_by_default(imports: ImportsService):
    dataset = await imports.create_dataset(
        tenant="t1", display_name="d", fields=FIELDS, key_field="id"
    )
    for url in ("http://127.0.0.1:9/x.csv", "http://169.254.169.254/latest", "file:///etc/passwd"):
        with pytest.raises(InvalidArgument):
            await imports.create_import(tenant="t1", dataset_id=dataset.id, source_uri=url)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b"id,amount\ns1,1\ns2,2\n"

    def do_GET(self) -> None:
        if self.path == "/missing.csv":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_source() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
async def private_container(settings: Settings, tmp_path: Any) -> AsyncIterator[Container]:
    section = ImportsSettings(storage_dir=str(tmp_path), allow_private_sources=True)
    registry_ = EngineRegistry(settings.model_copy(update={"imports": section}))
    yield Container(registry_.settings, registry_)
    await registry_.dispose()


async def test_from_source_workflow_fetches_in_the_worker_when_allowed(
    private_container: Container, http_source: str
):
    imports: ImportsService = private_container.imports
    dataset = await imports.create_dataset(
        tenant="t1",
        display_name="d",
        fields=FIELDS[:2],
        key_field="id",
        source_uri=f"{http_source}/data.csv",
    )
    workflow = registry()["imports.fromSource"]
    args = workflow.input_model.model_validate({"dataset": f"datasets/{dataset.id}"})
    op = await workflow.start(private_container, args, StartContext(tenant="t1", request_id="s1"))
    again = await workflow.start(
        private_container, args, StartContext(tenant="t1", request_id="s1")
    )
    assert again.id == op.id
    response = await run_all(imports, op.id)
    assert response["rows_accepted"] == 2
    record = await imports.get_record(await imports.get_dataset("t1", dataset.id), "s2")
    assert record["data"] == {"id": "s2", "amount": 2}

    missing = await imports.create_import(
        tenant="t1", dataset_id=dataset.id, source_uri=f"{http_source}/missing.csv"
    )
    with pytest.raises(Exception, match="HTTP 404"):
        await imports.run_import(missing.id)


async def test_file_writer_enforces_the_size_cap(tmp_path: Any):
    writer = FileWriter(str(tmp_path), 10)
    writer.write(b"12345")
    with pytest.raises(Exception, match="larger than the 10-byte limit"):
        writer.write(b"678901")
    assert list(tmp_path.iterdir()) == []


async def test_retry_of_a_failed_import_starts_over_without_double_counting(
    imports: ImportsService, container: Container
):
    dataset_id, op_id = await new_import(imports, b"id,amount\na,x\nb,y\n")
    assert (await run_all(imports, op_id)) == {"failed": "no valid row"}
    failed = await container.operations.get(f"imports.{op_id}", tenant="t1")
    assert failed.state == State.FAILED
    # Fix the file in place (same stored file) and retry the operation.
    item = (await imports.list_imports("t1", dataset_id, page_size=1, after_id=None))[0][0]
    path = imports.store.path(item.file_path or "")
    await asyncio.to_thread(pathlib.Path(path).write_bytes, b"id,amount\na,1\nb,z\n")
    await container.operations.retry(f"imports.{op_id}", tenant="t1")
    response = await run_all(imports, op_id)
    assert (response["rows_total"], response["rows_accepted"], response["rows_rejected"]) == (
        2,
        1,
        1,
    )
    errors = await execute(
        container, "SELECT count(*) FROM imports.row_errors WHERE import_id = :i", i=item.id
    )
    assert errors[0][0] == 1
    assert await count_records(container, dataset_id) == 1


async def _errors_and_records(
    imports: ImportsService, container: Container, dataset_id: uuid.UUID, op_id: uuid.UUID
) -> tuple[list[tuple[int, str, str, str]], dict[str, Any]]:
    listed, _ = await imports.list_imports("t1", dataset_id, page_size=10, after_id=None)
    item = next(i for i in listed if i.operation_id == op_id)
    async with imports.row_errors("t1", dataset_id, item.id) as rows:
        errors = [row async for row in rows]
    dataset = await imports.get_dataset("t1", dataset_id)
    records, _ = await imports.list_records(dataset, [], page_size=1000, after_key=None)
    return errors, {r["key"]: r["data"] for r in records}


BAD_UTF8 = b'id,amount,country\na,1,DE\nb\xff,2,FR\n"c\n\xfe",3,US\nd,4,GB\n'
"""Line 3 has a bad byte; row 4 is a quoted cell spanning lines 4-5 with one on line 5."""


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_encoding_errors_fail_replace_or_reject_the_row(
    imports: ImportsService, container: Container, fmt: str
):
    if fmt == "csv":
        data = BAD_UTF8
    else:
        data = b'{"id":"a","amount":1}\n{"id":"b\xff","amount":2}\n{"id":"d","amount":4}\n'
    dataset = await imports.create_dataset(
        tenant="t1", display_name="d", fields=FIELDS, key_field="id"
    )
    outcomes = {}
    for mode in ("fail", "replace", "reject_row"):
        op = await imports.create_import(
            tenant="t1",
            dataset_id=dataset.id,
            stored=await stored(imports, data),
            encoding_errors=mode,
        )
        try:
            outcomes[mode] = await run_all(imports, op.id)
        except Exception as exc:  # the run's ImportFileError (the task adapter fails the op)
            outcomes[mode] = {"error": str(exc)}
    assert "not valid UTF-8" in outcomes["fail"]["error"]
    assert "encoding_errors=replace" in outcomes["fail"]["error"]
    rows = 4 if fmt == "csv" else 3
    assert outcomes["replace"]["rows_accepted"] == rows
    assert outcomes["reject_row"]["rows_accepted"] == 2
    errors, records = await _errors_and_records(imports, container, dataset.id, op.id)
    if fmt == "csv":
        assert [(e[0], e[1]) for e in errors] == [(3, ""), (4, "")]
        assert "line 5 is not valid UTF-8" in errors[1][2]
        assert records["b\ufffd"]["amount"] == 2, "replace stored U+FFFD for the bad byte"
    else:
        assert [(e[0], e[1]) for e in errors] == [(2, "")]
    assert "encoding_errors=reject_row" in errors[0][2]


async def test_cells_and_rows_past_the_byte_limits_are_row_errors(
    settings: Settings, tmp_path: Any
):
    section = ImportsSettings(storage_dir=str(tmp_path), max_cell_bytes=20, max_row_bytes=40)
    registry_ = EngineRegistry(settings.model_copy(update={"imports": section}))
    container = Container(registry_.settings, registry_)
    try:
        imports: ImportsService = container.imports
        long_cell = "é" * 11  # 22 bytes, 11 characters
        data = (
            f"id,amount,country\nok,1,DE\n{long_cell},2,FR\nrow,{'1' * 19},US\n"
            f"{'b' * 20},{'9' * 19},GB\n"  # 43 bytes
        ).encode()
        dataset_id, op_id = await new_import(imports, data)
        response = await run_all(imports, op_id)
        assert (response["rows_accepted"], response["rows_rejected"]) == (2, 2)
        errors, records = await _errors_and_records(imports, container, dataset_id, op_id)
        assert sorted(records) == ["ok", "row"]
        assert errors[0][:2] == (3, "id") and "22 bytes" in errors[0][2]
        assert "CONVEYOR_IMPORTS__MAX_CELL_BYTES" in errors[0][2]
        assert errors[1][:2] == (5, "") and "CONVEYOR_IMPORTS__MAX_ROW_BYTES" in errors[1][2]
    finally:
        await registry_.dispose()


async def test_last_line_of_a_key_wins_across_chunks_and_record_count_follows_upserts(
    imports: ImportsService, container: Container
):
    # chunk_rows=50: key "dup" appears in chunks 0, 1 and 2; the last line must win.
    rows = [f"k{i},{i}" for i in range(120)]
    rows[10], rows[70], rows[110] = "dup,1", "dup,2", "dup,3"
    dataset_id, op_id = await new_import(imports, ("id,amount\n" + "\n".join(rows)).encode())
    await run_all(imports, op_id)
    dataset = await imports.get_dataset("t1", dataset_id)
    assert (await imports.get_record(dataset, "dup"))["data"]["amount"] == 3
    assert (await imports.get_dataset("t1", dataset_id)).record_count == 118
    # A second import into the non-empty dataset: 2 updates, 1 new key.
    op = await imports.create_import(
        tenant="t1",
        dataset_id=dataset_id,
        stored=await stored(imports, b"id,amount\ndup,4\nk0,5\nnew,6\n"),
    )
    await run_all(imports, op.id)
    assert (await imports.get_dataset("t1", dataset_id)).record_count == 119
    assert await count_records(container, dataset_id) == 119


async def test_staged_rows_lost_with_the_unlogged_table_fail_the_import_not_merge_part(
    imports: ImportsService, container: Container
):
    per_chunk_staging(imports)
    fan_out(imports)
    dataset_id, op_id = await new_import(imports, b"id,amount\na,1\nb,2\n")
    launched = await imports.run_import(op_id)
    for chunk in launched["launch"]:
        await imports.process_chunk(op_id, launched["attempt"], chunk)
    item = (await imports.list_imports("t1", dataset_id, page_size=1, after_id=None))[0][0]
    # What crash recovery does to an UNLOGGED table.
    await execute(container, f'TRUNCATE imports."{staging_table(item.id, 0)}"')
    with pytest.raises(PermanentError, match="validated rows were lost"):
        await imports.finalize(op_id, launched["attempt"])
    assert await count_records(container, dataset_id) == 0


def _merge_order(monkeypatch: pytest.MonkeyPatch, imports: ImportsService, reverse: bool) -> None:
    """One chunk merge at a time, in chunk order or in reverse order."""
    imports.policy = dataclasses.replace(imports.policy, merge_concurrency=1)
    original = SqlImportsRepository.import_context

    async def ordered(self: SqlImportsRepository, operation_id: uuid.UUID) -> Any:
        found = await original(self, operation_id)  # the finalize's chunks to merge
        if found is not None:
            found.todo = sorted(found.todo, reverse=reverse)
        return found

    monkeypatch.setattr(SqlImportsRepository, "import_context", ordered)


@pytest.mark.parametrize("reverse", [False, True])
async def test_duplicate_key_split_across_chunks_keeps_the_later_line_in_any_merge_order(
    imports: ImportsService, monkeypatch: pytest.MonkeyPatch, reverse: bool
):
    _merge_order(monkeypatch, imports, reverse)
    # chunk_rows=50: "dup" is on line 12 (chunk 0) and line 92 (chunk 1).
    rows = [f"k{i},{i}" for i in range(100)]
    rows[10], rows[90] = "dup,1.5", "dup,2.5"
    dataset_id, op_id = await new_import(imports, ("id,amount\n" + "\n".join(rows)).encode())
    response = await run_all(imports, op_id)
    assert response["rows_accepted"] == 100
    dataset = await imports.get_dataset("t1", dataset_id)
    assert (await imports.get_record(dataset, "dup"))["data"]["amount"] == 2.5
    assert dataset.record_count == 99
    # Into the now non-empty dataset (upserts, not plain INSERTs): a later import wins over
    # every stored line, and within it the later line wins again.
    second = await imports.create_import(
        tenant="t1",
        dataset_id=dataset_id,
        stored=await stored(
            imports,
            ("id,amount\n" + "\n".join([*rows[:10], "dup,9", *rows[11:90], "dup,8"])).encode(),
        ),
    )
    await run_all(imports, second.id)
    dataset = await imports.get_dataset("t1", dataset_id)
    assert (await imports.get_record(dataset, "dup"))["data"]["amount"] == 8
    assert dataset.record_count == 99


async def test_merged_chunks_are_applied_once_and_a_cancel_after_the_first_merge_completes(
    imports: ImportsService, container: Container, monkeypatch: pytest.MonkeyPatch
):
    per_chunk_staging(imports)
    _merge_order(monkeypatch, imports, reverse=False)
    rows = "".join(f"k{i},{i}\n" for i in range(150))
    dataset_id, op_id = await new_import(imports, ("id,amount\n" + rows).encode())
    launched = await imports.run_import(op_id)
    for chunk in launched["launch"]:
        await imports.process_chunk(op_id, launched["attempt"], chunk)
    original = SqlImportsRepository.merge_chunk
    calls = 0

    async def dies_on_the_second(self: SqlImportsRepository, *args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise TransientError("the backend went away")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SqlImportsRepository, "merge_chunk", dies_on_the_second)
    with pytest.raises(TransientError):
        await imports.finalize(op_id, launched["attempt"])
    # Chunks 0 and 2 merged and committed, chunk 1 failed (nothing of it is stored).
    assert await count_records(container, dataset_id) == 100
    item = (await imports.list_imports("t1", dataset_id, page_size=1, after_id=None))[0][0]
    tables_left = await execute(container, STAGING_TABLES_SQL, n=staging_table(item.id))
    assert tables_left[0][0] == 1, "a merged chunk's staging table goes with its merge"
    # Too late to cancel: the import completes, merged chunks are not merged twice.
    await container.operations.cancel(f"imports.{op_id}", tenant="t1")
    response = await imports.finalize(op_id, launched["attempt"])
    assert response["rows_accepted"] == 150
    op = await container.operations.get(f"imports.{op_id}", tenant="t1")
    assert op.state == State.SUCCEEDED
    assert calls == 4
    assert await count_records(container, dataset_id) == 150
    assert (await imports.get_dataset("t1", dataset_id)).record_count == 150
    tables_left = await execute(container, STAGING_TABLES_SQL, n=staging_table(item.id))
    assert tables_left[0][0] == 0


async def test_imports_and_record_reads_add_no_compiled_cache_entries_once_warm(
    imports: ImportsService, container: Container
):
    """Statements on a dataset's records table reuse one Table object, and statements on a
    chunk's staging table skip the cache: a steady stream of imports and reads must not fill
    SQLAlchemy's compiled cache (a new Table object per call is a new cache key: the cache
    churned, evicting the hot path's entries, and worker memory grew with every import)."""
    cache = container.registry.engine("imports").sync_engine._compiled_cache
    assert cache is not None
    body = ("id,amount\n" + "\n".join(f"k{i},{i}" for i in range(120))).encode()
    dataset_id, op_id = await new_import(imports, body)
    await run_all(imports, op_id)  # warm: every statement shape compiled once

    async def one_round() -> None:
        op = await imports.create_import(
            tenant="t1", dataset_id=dataset_id, stored=await stored(imports, body)
        )
        await run_all(imports, op.id)
        dataset = await imports.get_dataset("t1", dataset_id)
        for i in range(5):
            assert (await imports.get_record(dataset, f"k{i}"))["data"]["amount"] == i

    await one_round()
    warm = len(cache)
    for _ in range(3):
        await one_round()
    # Three more imports of three chunks each and 15 reads: the same shapes, no new entries.
    assert len(cache) == warm, f"compiled cache grew from {warm} to {len(cache)} entries"


async def test_cells_passed_as_text_to_typed_columns_store_the_converters_values(
    imports: ImportsService, container: Container
):
    """The columnar path hands some cells to their typed column as they are (numbers,
    integers and timestamps that are not the key): PostgreSQL must store exactly what the
    row-by-row converters give, and refuse none of them (a refused cell fails the chunk's COPY).
    """
    import json

    from domains.imports import parsing

    fields = [
        FieldDef("id", "string", required=True),
        FieldDef("n", "number"),
        FieldDef("i", "integer"),
        FieldDef("t", "timestamp"),
    ]
    numbers = ["0", "0.0", "-0", "-0.0", "12.50", "-3.25", "0.30000000000000001", "1.5e3"]
    numbers += ["123456789012345.123456789012345", "9007199254740993", "007", "-0.5"]
    ints = ["007", "-0", "42", "-9223372036854775808", "9223372036854775807"]
    stamps = [
        "2026-01-31T12:00:00Z",
        "2026-01-31T12:00:00.5+15:59",
        "2026-01-31T12:00:00+16:00",
        "2026-01-31T23:30:00-23:59",
        "1100-01-01T00:30:00+01:00",
        "2026-01-31T12:00:00.123456-05:30",
        "2026-01-31T12:00:00.000000Z",
    ]
    rows = [
        [f"k{j:02d}", numbers[j % len(numbers)], ints[j % len(ints)], stamps[j % len(stamps)]]
        for j in range(len(numbers) * len(stamps))
    ]
    data = ("id,n,i,t\n" + "".join(",".join(r) + "\n" for r in rows)).encode()
    dataset = await imports.create_dataset(
        tenant="t1", display_name="typed", fields=fields, key_field="id"
    )
    op = await imports.create_import(
        tenant="t1", dataset_id=dataset.id, stored=await stored(imports, data)
    )
    response = await run_all(imports, op.id)
    assert (response["rows_accepted"], response["rows_rejected"]) == (len(rows), 0)
    _, records = await _errors_and_records(imports, container, dataset.id, op.id)
    validator = parsing.RowValidator(fields, "id", ["id", "n", "i", "t"])
    for line, cells in enumerate(rows, start=2):
        result = validator.csv_row(line, cells)
        assert isinstance(result, tuple)
        assert records[result[0]] == json.loads(result[1]), cells
    flags = await execute(
        container,
        "SELECT c.keys_sorted FROM imports.import_chunks c JOIN imports.imports i"
        " ON i.id = c.import_id WHERE i.operation_id = :o",
        o=op.id,
    )
    assert flags and all(f[0] for f in flags), "distinct keys: merged without a sort"


# ---- direct load: chunks COPY into one load table, swapped in for an empty dataset --------


def load_table(import_id: uuid.UUID) -> str:
    return f"{staging_table(import_id)}_load"


async def table_exists(container: Container, name: str) -> bool:
    rows = await execute(container, "SELECT to_regclass(:n) IS NOT NULL", n=f'imports."{name}"')
    return bool(rows[0][0])


async def import_of(imports: ImportsService, dataset_id: uuid.UUID, op_id: uuid.UUID) -> Any:
    items, _ = await imports.list_imports("t1", dataset_id, page_size=50, after_id=None)
    return next(i for i in items if i.operation_id == op_id)


async def test_direct_load_swaps_the_load_table_in_once_and_nothing_is_visible_before(
    imports: ImportsService, container: Container, monkeypatch: pytest.MonkeyPatch
):
    fan_out(imports)
    fields = [*FIELDS[:2], dataclasses.replace(FIELDS[2], indexed=True)]
    dataset = await imports.create_dataset(
        tenant="t1", display_name="d", fields=fields, key_field="id"
    )
    rows = "".join(f"k{i:03d},{i},{('DE', 'FR')[i % 2]}\n" for i in range(150))
    op = await imports.create_import(
        tenant="t1",
        dataset_id=dataset.id,
        stored=await stored(imports, ("id,amount,country\n" + rows).encode()),
    )
    launched = await imports.run_import(op.id)
    item = await import_of(imports, dataset.id, op.id)
    assert await table_exists(container, load_table(item.id)), "empty dataset: direct load"
    for chunk in launched["launch"]:
        await imports.process_chunk(op.id, launched["attempt"], chunk)
        assert (await imports.process_chunk(op.id, launched["attempt"], chunk))["skipped"]
    loaded = await execute(container, f'SELECT count(*) FROM imports."{load_table(item.id)}"')
    assert loaded[0][0] == 150, "each chunk COPYed once"
    assert await count_records(container, dataset.id) == 0, "nothing visible before finalize"
    with pytest.raises(NotFound):  # a statement prepared before the swap still works after
        await imports.get_record(dataset, "k007")
    # Killed inside the swap's transaction (after the swap, before its commit): nothing of it
    # stays, and the next finalize does it once.
    original = SqlImportsRepository.mark_loaded_chunks_merged

    async def dies(self: SqlImportsRepository, *args: Any, **kwargs: Any) -> None:
        raise TransientError("the backend went away")

    monkeypatch.setattr(SqlImportsRepository, "mark_loaded_chunks_merged", dies)
    with pytest.raises(TransientError):
        await imports.finalize(op.id, launched["attempt"])
    assert await count_records(container, dataset.id) == 0
    assert await table_exists(container, load_table(item.id))
    monkeypatch.setattr(SqlImportsRepository, "mark_loaded_chunks_merged", original)
    response = await imports.finalize(op.id, launched["attempt"])
    assert response["rows_accepted"] == 150
    assert (await imports.finalize(op.id, launched["attempt"]))["skipped"]
    assert await count_records(container, dataset.id) == 150
    dataset = await imports.get_dataset("t1", dataset.id)
    assert dataset.record_count == 150
    assert (await imports.get_record(dataset, "k007"))["data"] == {
        "id": "k007",
        "amount": 7,
        "country": "FR",
    }
    tables_left = await execute(container, STAGING_TABLES_SQL, n=staging_table(item.id))
    assert tables_left[0][0] == 0, "the load table became the records table"
    indexes = await execute(
        container,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'imports'"
        " AND tablename = :t ORDER BY indexname",
        t=f"records_{dataset.id.hex}",
    )
    assert len(indexes) == 2, "the key's unique index and the indexed field's"
    assert any("UNIQUE" in d and "$key" in d for _, d in indexes)
    defaults = await execute(
        container,
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'imports'"
        " AND table_name = :t AND column_default IS NOT NULL",
        t=f"records_{dataset.id.hex}",
    )
    assert defaults[0][0] == 0
    # The next import finds records: per-chunk staging and upserts, the later import wins.
    second = await imports.create_import(
        tenant="t1",
        dataset_id=dataset.id,
        stored=await stored(imports, b"id,amount,country\nk007,70,DE\nnew,1,DE\n"),
    )
    launched = await imports.run_import(second.id)
    item = await import_of(imports, dataset.id, second.id)
    assert not await table_exists(container, load_table(item.id))
    for chunk in launched["launch"]:
        await imports.process_chunk(second.id, launched["attempt"], chunk)
    await imports.finalize(second.id, launched["attempt"])
    dataset = await imports.get_dataset("t1", dataset.id)
    assert (await imports.get_record(dataset, "k007"))["data"]["amount"] == 70
    with pytest.raises(sa.exc.IntegrityError):  # the swapped-in table keeps the unique key
        await execute(
            container,
            f'INSERT INTO imports."records_{dataset.id.hex}" ("$key", "$line", "$import_id",'
            " \"$update_time\") VALUES ('k001', 1, :i, now())",
            i=uuid.uuid4(),
        )
    assert dataset.record_count == 151 == await count_records(container, dataset.id)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_direct_load_with_a_key_repeated_across_chunks_merges_and_the_last_line_wins(
    imports: ImportsService, container: Container, fmt: str
):
    # chunk_rows=50: "dup" in chunks 0, 1 and 2 (each chunk's keys unique): the unique index
    # of the swap fails, the load table is merged instead.
    keys = [f"k{i}" for i in range(150)]
    amounts = list(range(150))
    (keys[10], amounts[10]), (keys[70], amounts[70]), (keys[140], amounts[140]) = (
        ("dup", 1),
        ("dup", 3),
        ("dup", 2),
    )
    if fmt == "csv":
        data = "id,amount\n" + "\n".join(f"{k},{a}" for k, a in zip(keys, amounts, strict=True))
    else:
        data = "\n".join(
            f'{{"id": "{k}", "amount": {a}}}' for k, a in zip(keys, amounts, strict=True)
        )
    dataset_id, op_id = await new_import(imports, data.encode())
    response = await run_all(imports, op_id)
    assert response["rows_accepted"] == 150
    dataset = await imports.get_dataset("t1", dataset_id)
    assert (await imports.get_record(dataset, "dup"))["data"]["amount"] == 2
    assert dataset.record_count == 148 == await count_records(container, dataset_id)
    item = await import_of(imports, dataset_id, op_id)
    tables_left = await execute(container, STAGING_TABLES_SQL, n=staging_table(item.id))
    assert tables_left[0][0] == 0


async def test_cancel_of_a_direct_load_before_the_swap_leaves_nothing(
    imports: ImportsService, container: Container, monkeypatch: pytest.MonkeyPatch
):
    rows = "".join(f"k{i},{i}\n" for i in range(150))
    dataset_id, op_id = await new_import(imports, ("id,amount\n" + rows).encode())
    launched = await imports.run_import(op_id)
    item = await import_of(imports, dataset_id, op_id)
    for chunk in launched["launch"]:
        await imports.process_chunk(op_id, launched["attempt"], chunk)
    # The cancel lands after the finalize checked the state, before the swap.
    original = SqlImportsRepository.import_context

    async def cancel_meanwhile(self: SqlImportsRepository, operation_id: uuid.UUID) -> Any:
        await container.operations.cancel(f"imports.{op_id}", tenant="t1")
        return await original(self, operation_id)

    monkeypatch.setattr(SqlImportsRepository, "import_context", cancel_meanwhile)
    assert await imports.finalize(op_id, launched["attempt"]) == {"cancelled": True}
    op = await container.operations.get(f"imports.{op_id}", tenant="t1")
    assert op.state == State.CANCELLED
    assert await count_records(container, dataset_id) == 0
    assert (await imports.get_dataset("t1", dataset_id)).record_count == 0
    assert not await table_exists(container, load_table(item.id)), "cancel drops the load table"
    monkeypatch.setattr(SqlImportsRepository, "import_context", original)
    assert (await imports.finalize(op_id, launched["attempt"]))["skipped"]
    assert await count_records(container, dataset_id) == 0


@pytest.mark.parametrize("older_first", [True, False])
async def test_two_direct_loads_into_one_empty_dataset_the_later_import_wins(
    imports: ImportsService, container: Container, older_first: bool
):
    fan_out(imports)
    dataset = await imports.create_dataset(
        tenant="t1", display_name="d", fields=FIELDS, key_field="id"
    )
    older = await imports.create_import(
        tenant="t1",
        dataset_id=dataset.id,
        stored=await stored(imports, b"id,amount\na,1\nb,1\nc,1\n"),
    )
    newer = await imports.create_import(
        tenant="t1",
        dataset_id=dataset.id,
        stored=await stored(imports, b"id,amount\nb,2\nc,2\nd,2\n"),
    )
    launched = {}
    for op in (older, newer):  # both split while the dataset is empty: both load directly
        launched[op.id] = await imports.run_import(op.id)
        item = await import_of(imports, dataset.id, op.id)
        assert await table_exists(container, load_table(item.id))
        for chunk in launched[op.id]["launch"]:
            await imports.process_chunk(op.id, launched[op.id]["attempt"], chunk)
    order = (older, newer) if older_first else (newer, older)
    for op in order:  # the first swaps its table in, the second merges into it
        await imports.finalize(op.id, launched[op.id]["attempt"])
    dataset = await imports.get_dataset("t1", dataset.id)
    amounts = {k: (await imports.get_record(dataset, k))["data"]["amount"] for k in "abcd"}
    assert amounts == {"a": 1, "b": 2, "c": 2, "d": 2}
    assert dataset.record_count == 4 == await count_records(container, dataset.id)


async def test_cancel_during_the_chunk_a_one_chunk_run_processes_leaves_nothing(
    imports: ImportsService, container: Container, monkeypatch: pytest.MonkeyPatch
):
    rows = "".join(f"k{i},{i}\n" for i in range(30))  # one chunk: the run processes it
    dataset_id, op_id = await new_import(imports, ("id,amount\n" + rows).encode())
    # The cancel lands while the chunk runs, before its rows and DONE mark commit.
    original = SqlImportsRepository.share_operation
    cancels: list[str] = []

    async def cancel_meanwhile(
        self: SqlImportsRepository, operation_id: uuid.UUID, **kwargs: Any
    ) -> Any:
        if not cancels:
            cancels.append(
                (await container.operations.cancel(f"imports.{op_id}", tenant="t1")).name
            )
        return await original(self, operation_id, **kwargs)

    monkeypatch.setattr(SqlImportsRepository, "share_operation", cancel_meanwhile)
    assert await imports.run_import(op_id) == {"cancelled": True}
    assert cancels, "the cancel hit the running chunk"
    op = await container.operations.get(f"imports.{op_id}", tenant="t1")
    assert op.state == State.CANCELLED
    item = await import_of(imports, dataset_id, op_id)
    assert item.state == "CANCELLED"
    assert await count_records(container, dataset_id) == 0
    assert (await imports.get_dataset("t1", dataset_id)).record_count == 0
    assert not await table_exists(container, load_table(item.id)), "cancel drops the load table"


async def key_collation(container: Container, dataset_id: uuid.UUID) -> tuple[str, str]:
    """The collation of a records table's key column and of its unique key index."""
    rows = await execute(
        container,
        "SELECT (SELECT c.collname FROM pg_attribute a JOIN pg_collation c"
        "  ON c.oid = a.attcollation WHERE a.attrelid = r.oid AND a.attname = '$key'),"
        " (SELECT c.collname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
        "  JOIN pg_collation c ON c.oid = i.indcollation[0]"
        "  WHERE i.indrelid = r.oid AND i.indisunique)"
        " FROM pg_class r WHERE r.oid = to_regclass(:t)",
        t=f'imports."records_{dataset_id.hex}"',
    )
    return rows[0][0], rows[0][1]


async def test_record_keys_compare_bytewise_and_a_table_of_the_database_collation_still_works(
    imports: ImportsService, container: Container
):
    """New records tables (and the load table swapped in) key with COLLATE "C" (the key index
    builds on bytes); lookups still use the key index, lists keep code point order, and a
    records table made before (the database's collation) still takes merges and a swap."""
    fan_out(imports)
    fields = FIELDS[:2]
    dataset = await imports.create_dataset(
        tenant="t1", display_name="c", fields=fields, key_field="id"
    )
    assert await key_collation(container, dataset.id) == ("C", "C")
    keys = ["b", "a", "ä", "Z", "é", "aa", "€"]
    body = "id,amount\n" + "".join(f"{k},{i}\n" for i, k in enumerate(keys))
    op = await imports.create_import(
        tenant="t1", dataset_id=dataset.id, stored=await stored(imports, body.encode())
    )
    assert (await run_all(imports, op.id))["rows_accepted"] == len(keys)
    assert await key_collation(container, dataset.id) == ("C", "C"), "the swapped-in table"
    dataset = await imports.get_dataset("t1", dataset.id)
    listed, _ = await imports.list_records(dataset, [], page_size=100, after_key=None)
    assert [r["key"] for r in listed] == sorted(keys)  # code point order, as C.UTF-8 gives
    async with container.registry.engine("imports").begin() as conn:
        # Seven rows: only with sequential scans off does the plan tell whether the index can
        # serve an equality on the key (a collation mismatch would leave a Seq Scan).
        await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = (
            await conn.execute(
                sa.text(
                    f'EXPLAIN SELECT * FROM imports."records_{dataset.id.hex}" WHERE "$key" = :k'
                ),
                {"k": "a"},
            )
        ).all()
    assert "Index Scan" in " ".join(r[0] for r in plan), plan
    # A records table of an earlier version: the key in the database's own collation.
    older = await imports.create_dataset(
        tenant="t1", display_name="older", fields=fields, key_field="id"
    )
    await execute(
        container,
        f'ALTER TABLE imports."records_{older.id.hex}" ALTER COLUMN "$key" TYPE text'
        ' COLLATE "default"',
    )
    assert (await key_collation(container, older.id))[0] == "default"
    for text in (body, "id,amount\na,100\nnew,1\n"):  # a swap, then a merge into it
        op = await imports.create_import(
            tenant="t1", dataset_id=older.id, stored=await stored(imports, text.encode())
        )
        await run_all(imports, op.id)
    older = await imports.get_dataset("t1", older.id)
    assert (await imports.get_record(older, "a"))["data"]["amount"] == 100
    assert older.record_count == len(keys) + 1
