"""In-memory fake of the imports unit of work and repository (see ``tests/fakes/operations.py``
for the transaction semantics).

Faked: datasets (request-id idempotency, schema changes), imports and the "has records" fact
(``FakeDatabase.state["records"]``, dataset id -> key -> record, which tests fill directly).
Not faked (``NotImplementedError``): everything a running import does in PostgreSQL - chunks,
staging tables, ``COPY``, set-based merges, row errors, typed records reads, file retention;
``tests/service/test_imports_service.py`` proves those against PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from domains.imports.model import Chunk, Dataset, FieldDef, Import
from domains.imports.repository import ChunkTotals, ImportContext, ImportsRepository
from domains.imports.unit_of_work import ImportsUoW
from domains.shared.query import Condition
from tests.fakes.operations import FakeDatabase, FakeUnitOfWork, _copy, sql_only

TABLES: dict[str, Any] = {"datasets": {}, "imports": {}, "records": {}}
"""The imports tables of a :class:`FakeDatabase`."""

_PG_TEST = "tests/service/test_imports_service.py"
_ACTIVE = ("PENDING", "RUNNING")


def imports_database() -> FakeDatabase:
    """Returns an empty fake imports schema."""
    return FakeDatabase(TABLES)


class FakeImportsRepository:
    """Datasets and imports in memory."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._datasets: dict[uuid.UUID, Dataset] = state["datasets"]
        self._imports: dict[uuid.UUID, Import] = state["imports"]
        self._records: dict[uuid.UUID, dict[str, dict[str, Any]]] = state["records"]

    # ---- datasets

    async def add_dataset(self, dataset: Dataset) -> bool:
        """Inserts a dataset unless its tenant already used its request id."""
        if dataset.request_id is not None and any(
            d.tenant == dataset.tenant and d.request_id == dataset.request_id
            for d in self._datasets.values()
        ):
            return False
        self._datasets[dataset.id] = _copy(dataset)
        self._records[dataset.id] = {}
        return True

    async def sync_records_table(
        self,
        dataset_id: uuid.UUID,
        old: Sequence[FieldDef],
        new: Sequence[FieldDef],
        *,
        has_records: bool,
    ) -> None:
        """Nothing to do: the fake's records are untyped (the DDL is PostgreSQL's)."""

    async def get_dataset_by_request_id(self, tenant: str, request_id: str) -> Dataset | None:
        """Loads the dataset a create with ``request_id`` made for ``tenant``."""
        for d in self._datasets.values():
            if d.tenant == tenant and d.request_id == request_id:
                return _copy(d)
        return None

    async def get_dataset(
        self, tenant: str, dataset_id: uuid.UUID, *, for_update: bool = False
    ) -> Dataset | None:
        """Loads a dataset of ``tenant``."""
        d = self._datasets.get(dataset_id)
        return _copy(d) if d is not None and d.tenant == tenant else None

    async def get_dataset_by_id(self, dataset_id: uuid.UUID) -> Dataset | None:
        """Loads a dataset whatever its tenant."""
        d = self._datasets.get(dataset_id)
        return _copy(d) if d is not None else None

    async def save_dataset(self, dataset: Dataset) -> None:
        """Writes back a dataset."""
        if dataset.id in self._datasets:
            self._datasets[dataset.id] = _copy(dataset)

    async def list_datasets(
        self, tenant: str, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Dataset]:
        """Lists a tenant's datasets in id (= creation) order."""
        found = sorted(
            (
                d
                for d in self._datasets.values()
                if d.tenant == tenant and (after_id is None or d.id > after_id)
            ),
            key=lambda d: d.id,
        )
        return [_copy(d) for d in found[:limit]]

    async def delete_dataset(self, dataset_id: uuid.UUID) -> None:
        """Deletes a dataset with its records and imports."""
        self._datasets.pop(dataset_id, None)
        self._records.pop(dataset_id, None)
        for import_id in [i.id for i in self._imports.values() if i.dataset_id == dataset_id]:
            del self._imports[import_id]

    async def has_records(self, dataset_id: uuid.UUID) -> bool:
        """Whether any record is stored in the dataset."""
        return bool(self._records.get(dataset_id))

    async def active_imports(self, dataset_id: uuid.UUID) -> int:
        """Counts imports of the dataset that are not finished."""
        return sum(
            1 for i in self._imports.values() if i.dataset_id == dataset_id and i.state in _ACTIVE
        )

    # ---- imports

    async def add_import(self, item: Import) -> None:
        """Inserts an import."""
        self._imports[item.id] = _copy(item)

    async def get_import(
        self,
        import_id: uuid.UUID,
        *,
        dataset_id: uuid.UUID | None = None,
        tenant: str | None = None,
        for_update: bool = False,
    ) -> Import | None:
        """Loads an import."""
        i = self._imports.get(import_id)
        if i is None or (dataset_id is not None and i.dataset_id != dataset_id):
            return None
        return _copy(i) if tenant is None or i.tenant == tenant else None

    async def get_import_by_operation(self, operation_id: uuid.UUID) -> Import | None:
        """Loads the import an operation carries out."""
        for i in self._imports.values():
            if i.operation_id == operation_id:
                return _copy(i)
        return None

    async def save_import(
        self,
        item: Import,
        *,
        columns: Sequence[str] | None = None,
        plain_path: str | None = None,
    ) -> None:
        """Writes back an import (the split's columns and plain path are not kept)."""
        if item.id in self._imports:
            self._imports[item.id] = _copy(item)

    async def list_imports(
        self, dataset_id: uuid.UUID, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Import]:
        """Lists a dataset's imports in id (= creation) order."""
        found = sorted(
            (
                i
                for i in self._imports.values()
                if i.dataset_id == dataset_id and (after_id is None or i.id > after_id)
            ),
            key=lambda i: i.id,
        )
        return [_copy(i) for i in found[:limit]]

    # ---- PostgreSQL only: a running import's chunks, staging, COPY and merges

    async def import_plan(self, import_id: uuid.UUID) -> tuple[list[str], str | None]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.import_plan", _PG_TEST)

    async def get_chunk(
        self, import_id: uuid.UUID, chunk_no: int, *, for_update: bool = False
    ) -> Chunk | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.get_chunk", _PG_TEST)

    async def mark_chunk_merged(self, chunk: Chunk, inserted: int) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.mark_chunk_merged", _PG_TEST)

    async def chunk_totals(self, import_id: uuid.UUID) -> ChunkTotals:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.chunk_totals", _PG_TEST)

    async def create_staging(
        self, import_id: uuid.UUID, chunk_no: int, fields: Sequence[FieldDef]
    ) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.create_staging", _PG_TEST)

    async def drop_staging(self, import_id: uuid.UUID) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.drop_staging", _PG_TEST)

    async def drop_chunk_staging(self, import_id: uuid.UUID, chunk_no: int) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.drop_chunk_staging", _PG_TEST)

    async def staged_count(self, import_id: uuid.UUID, chunk_no: int) -> int:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.staged_count", _PG_TEST)

    async def copy_staged(
        self,
        import_id: uuid.UUID,
        chunk_no: int,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.copy_staged", _PG_TEST)

    async def copy_staged_text(
        self, import_id: uuid.UUID, chunk_no: int, columns: Sequence[str], payload: Any
    ) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.copy_staged_text", _PG_TEST)

    async def copy_row_errors(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.copy_row_errors", _PG_TEST)

    async def reset_import(self, import_id: uuid.UUID) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.reset_import", _PG_TEST)

    async def delete_staged(self, import_id: uuid.UUID) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.delete_staged", _PG_TEST)

    async def merge_chunk(
        self,
        import_id: uuid.UUID,
        chunk_no: int,
        dataset: Dataset,
        now: dt.datetime,
        *,
        plain: bool,
        keys_sorted: bool = False,
    ) -> int:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.merge_chunk", _PG_TEST)

    async def create_load_table(self, import_id: uuid.UUID, fields: Sequence[FieldDef]) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.create_load_table", _PG_TEST)

    async def copy_loaded(
        self,
        import_id: uuid.UUID,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]] = (),
        payload: Any = b"",
    ) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.copy_loaded", _PG_TEST)

    async def swap_in_load_table(self, import_id: uuid.UUID, dataset: Dataset) -> bool:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.swap_in_load_table", _PG_TEST)

    async def merge_load(
        self, import_id: uuid.UUID, dataset: Dataset, now: dt.datetime, *, plain: bool
    ) -> int:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.merge_load", _PG_TEST)

    async def mark_loaded_chunks_merged(self, import_id: uuid.UUID, inserted: int | None) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.mark_loaded_chunks_merged", _PG_TEST)

    def stream_row_errors(
        self, import_id: uuid.UUID, *, limit: int | None = None
    ) -> AsyncIterator[tuple[int, str, str, str]]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.stream_row_errors", _PG_TEST)

    async def list_records(
        self,
        dataset: Dataset,
        conditions: Sequence[Condition],
        *,
        after_key: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.list_records", _PG_TEST)

    async def get_record(self, dataset: Dataset, key: str) -> dict[str, Any] | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.get_record", _PG_TEST)

    async def share_operation(
        self, operation_id: uuid.UUID, *, relax_commit: bool = False
    ) -> tuple[str, int] | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.share_operation", _PG_TEST)

    async def start_import(self, operation_id: uuid.UUID) -> ImportContext | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.start_import", _PG_TEST)

    async def import_context(self, operation_id: uuid.UUID) -> ImportContext | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.import_context", _PG_TEST)

    async def chunk_context(self, operation_id: uuid.UUID, chunk_no: int) -> ImportContext | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.chunk_context", _PG_TEST)

    async def record_split(
        self,
        item: Import,
        chunks: Sequence[Chunk],
        *,
        columns: Sequence[str],
        plain_path: str,
        probe_records: bool,
    ) -> tuple[bool, bool]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.record_split", _PG_TEST)

    async def lock_import_with_totals(
        self, operation_id: uuid.UUID
    ) -> tuple[Import, ChunkTotals] | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.lock_import_with_totals", _PG_TEST)

    async def complete_import(self, item: Import, inserted: int) -> str | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.complete_import", _PG_TEST)

    async def chunks(self, import_id: uuid.UUID) -> list[Chunk]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.chunks", _PG_TEST)

    async def lock_chunk(self, import_id: uuid.UUID, chunk_no: int) -> tuple[Chunk | None, bool]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.lock_chunk", _PG_TEST)

    async def complete_chunk(
        self,
        chunk: Chunk,
        operation_id: uuid.UUID,
        progress: dict[str, Any] | None,
        now: dt.datetime,
    ) -> str | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.complete_chunk", _PG_TEST)

    async def touch_with_totals(
        self, operation_id: uuid.UUID, import_id: uuid.UUID, total: int | None, now: dt.datetime
    ) -> dict[str, Any] | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.touch_with_totals", _PG_TEST)

    async def load_state(self, import_id: uuid.UUID) -> tuple[bool, ChunkTotals]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.load_state", _PG_TEST)

    async def touch_operation(
        self, operation_id: uuid.UUID, progress: dict[str, Any] | None, now: dt.datetime
    ) -> str | None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.touch_operation", _PG_TEST)

    async def expired_files(
        self, ended_before: dt.datetime, limit: int
    ) -> list[tuple[uuid.UUID, str, str | None]]:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.expired_files", _PG_TEST)

    async def forget_files(self, import_ids: Sequence[uuid.UUID]) -> None:
        """Not faked (PostgreSQL only)."""
        raise sql_only("imports.forget_files", _PG_TEST)


class FakeImportsUnitOfWork(FakeUnitOfWork):
    """A fake transaction on the imports schema."""

    imports: FakeImportsRepository

    def __init__(self, db: FakeDatabase, *, max_attempts: int | None = None) -> None:
        """Creates the unit of work.

        Args:
            db: A database from :func:`imports_database`.
            max_attempts: Attempt cap of import operations.
        """
        super().__init__(db, domain="imports", max_attempts=max_attempts)

    def _bind(self, state: dict[str, Any]) -> None:
        super()._bind(state)
        self.imports = FakeImportsRepository(state)


_repo: type[ImportsRepository] = FakeImportsRepository
_uow: type[ImportsUoW] = FakeImportsUnitOfWork
