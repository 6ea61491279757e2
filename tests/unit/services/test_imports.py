"""Imports rules on the in-memory fakes: dataset create/update validation and idempotency,
schema changes against stored records and running imports, import submit rules, cancel."""

from __future__ import annotations

import hashlib
import pathlib
import uuid

import pytest

from domains.imports.model import FieldDef, ImportState
from domains.imports.service import ImportsService
from domains.imports.storage import FileStore, StoredFile
from domains.operations.execution import OperationRunner, Skip
from domains.operations.model import State
from domains.operations.service import OperationsService
from domains.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.fakes.imports import FakeImportsUnitOfWork, imports_database
from tests.fakes.operations import FakeDatabase

FIELDS = [FieldDef("sku", "string", required=True), FieldDef("qty", "integer")]


@pytest.fixture
def db() -> FakeDatabase:
    return imports_database()


@pytest.fixture
def store(tmp_path: pathlib.Path) -> FileStore:
    return FileStore(str(tmp_path), max_bytes=1024)


@pytest.fixture
def svc(db: FakeDatabase, store: FileStore) -> ImportsService:
    return ImportsService(lambda: FakeImportsUnitOfWork(db), store=store)


def stored(store: FileStore, content: bytes = b"sku,qty\na,1\n") -> StoredFile:
    name = f"{uuid.uuid4()}.csv"
    pathlib.Path(store.path(name)).write_bytes(content)
    return StoredFile(name, len(content), hashlib.sha256(content).hexdigest())


def on_disk(store: FileStore, file: StoredFile) -> bool:
    return pathlib.Path(store.path(file.path)).exists()


async def dataset(svc: ImportsService, tenant: str = "t1", **kwargs):
    return await svc.create_dataset(
        tenant=tenant, display_name="Orders", fields=FIELDS, key_field="sku", **kwargs
    )


async def test_create_dataset_validates_its_schema_and_name(svc, db):
    with pytest.raises(InvalidArgument):
        await svc.create_dataset(tenant="t1", display_name=" ", fields=FIELDS, key_field="sku")
    with pytest.raises(InvalidArgument):
        await svc.create_dataset(tenant="t1", display_name="x", fields=FIELDS, key_field="nope")
    with pytest.raises(InvalidArgument):
        await svc.create_dataset(
            tenant="t1", display_name="x", fields=[FieldDef("a", "colour")], key_field="a"
        )
    assert db.state["datasets"] == {}


async def test_create_dataset_is_idempotent_per_request_id_and_tenant(svc, db):
    first = await dataset(svc, request_id="d-1")
    again = await dataset(svc, request_id="d-1")
    other_tenant = await dataset(svc, tenant="t2", request_id="d-1")

    assert again.id == first.id != other_tenant.id
    with pytest.raises(AlreadyExists):
        await svc.create_dataset(
            tenant="t1", display_name="Other", fields=FIELDS, key_field="sku", request_id="d-1"
        )


async def test_datasets_are_per_tenant(svc):
    mine = await dataset(svc, tenant="t1")

    with pytest.raises(NotFound):
        await svc.get_dataset("t2", mine.id)
    assert (await svc.list_datasets("t2", page_size=10, after_id=None))[0] == []


async def test_a_breaking_field_change_is_refused_once_records_are_stored(svc, db):
    ds = await dataset(svc)
    without_qty = [FIELDS[0]]
    db.state["records"][ds.id]["a"] = {"sku": "a", "qty": 1}

    with pytest.raises(FailedPrecondition) as err:
        await svc.update_dataset("t1", ds.id, fields=without_qty)
    assert err.value.reason == "BREAKING_SCHEMA_CHANGE"
    assert db.state["datasets"][ds.id].fields == FIELDS  # rolled back

    grown = await svc.update_dataset("t1", ds.id, fields=[*FIELDS, FieldDef("note", "string")])
    assert [f.name for f in grown.fields] == ["sku", "qty", "note"]


async def test_any_field_change_is_allowed_while_the_dataset_is_empty(svc, db):
    ds = await dataset(svc)

    changed = await svc.update_dataset(
        "t1", ds.id, fields=[FieldDef("code", "string", required=True)], key_field="code"
    )

    assert db.state["datasets"][ds.id].key_field == changed.key_field == "code"


async def test_the_schema_cannot_change_nor_the_dataset_go_while_an_import_runs(svc, store):
    ds = await dataset(svc)
    await svc.create_import(tenant="t1", dataset_id=ds.id, stored=stored(store))

    with pytest.raises(FailedPrecondition) as err:
        await svc.update_dataset("t1", ds.id, fields=[*FIELDS, FieldDef("note", "string")])
    assert err.value.reason == "IMPORT_IN_PROGRESS"
    with pytest.raises(FailedPrecondition):
        await svc.delete_dataset("t1", ds.id)
    renamed = await svc.update_dataset("t1", ds.id, display_name="Renamed")  # not the schema
    assert renamed.display_name == "Renamed"


async def test_create_import_needs_exactly_one_source_and_a_known_format(svc, store):
    ds = await dataset(svc)
    with pytest.raises(InvalidArgument):
        await svc.create_import(tenant="t1", dataset_id=ds.id)
    with pytest.raises(InvalidArgument):
        await svc.create_import(
            tenant="t1", dataset_id=ds.id, stored=stored(store), source_uri="https://x.test/a"
        )
    with pytest.raises(InvalidArgument):
        await svc.create_import(tenant="t1", dataset_id=ds.id, stored=stored(store), format="xls")
    with pytest.raises(InvalidArgument):
        await svc.create_import(
            tenant="t1", dataset_id=ds.id, stored=stored(store), encoding_errors="ignore"
        )


async def test_create_import_writes_import_operation_and_task_together(svc, db, store):
    ds = await dataset(svc)
    file = stored(store)

    op = await svc.create_import(tenant="t1", dataset_id=ds.id, stored=file)

    [item] = db.state["imports"].values()
    assert (item.operation_id, item.state, item.file_path) == (
        op.id,
        ImportState.PENDING,
        file.path,
    )
    assert [m.task_id for m in db.published] == [str(op.id)]
    assert db.operations[op.id].display["dataset"] == "Orders"


async def test_an_import_into_a_missing_dataset_leaves_nothing_and_deletes_the_file(svc, db, store):
    file = stored(store)

    with pytest.raises(NotFound):
        await svc.create_import(tenant="t1", dataset_id=uuid.uuid4(), stored=file)

    assert db.operations == {} and db.state["imports"] == {} and db.outbox == []
    assert not on_disk(store, file)


async def test_a_repeated_import_request_is_one_import_and_drops_the_second_upload(svc, db, store):
    ds = await dataset(svc)
    first_file, second_file = stored(store), stored(store)

    first = await svc.create_import(
        tenant="t1", dataset_id=ds.id, stored=first_file, request_id="i-1"
    )
    again = await svc.create_import(
        tenant="t1", dataset_id=ds.id, stored=second_file, request_id="i-1"
    )

    assert again.id == first.id and len(db.state["imports"]) == 1
    assert on_disk(store, first_file)
    assert not on_disk(store, second_file)
    with pytest.raises(AlreadyExists):
        await svc.create_import(
            tenant="t1", dataset_id=ds.id, stored=stored(store, b"sku\nz\n"), request_id="i-1"
        )


async def test_a_cancelled_pending_import_reads_cancelled_and_is_never_started(svc, db, store):
    ds = await dataset(svc)
    op = await svc.create_import(tenant="t1", dataset_id=ds.id, stored=stored(store))
    [item] = db.state["imports"].values()

    cancelled = await OperationsService({"imports": lambda: FakeImportsUnitOfWork(db)}).cancel(
        op.name, tenant="t1"
    )

    assert cancelled.state == State.CANCELLED
    assert (await svc.get_import("t1", ds.id, item.id)).state == ImportState.CANCELLED
    with pytest.raises(Skip):
        await OperationRunner(lambda: FakeImportsUnitOfWork(db)).claim(op.id)
    with pytest.raises(NotFound):
        await svc.get_import("t2", ds.id, item.id)
