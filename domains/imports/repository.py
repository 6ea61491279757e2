"""Every query on imports tables lives here (bulk COPY included)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
import operator
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from domains.imports import tables
from domains.imports.model import Chunk, Dataset, FieldDef, Import
from domains.shared.errors import InvalidArgument
from domains.shared.query import Condition

_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_EXACT_INT = 2**53


def json_number(value: float) -> int | float:
    """Returns a stored number as the JSON value the records API has always shown.

    Records were jsonb: a number was stored as the decimal text of the converter's value
    (Python's ``repr``) and read back by ``json.loads``, giving an int where that text had no
    fraction digits (``1e+20`` is 100000000000000000000, ``1.5`` stays a float).

    Args:
        value: The double read from the records table.

    Returns:
        The same int or float a jsonb record gave.
    """
    if value.is_integer() and abs(value) < _EXACT_INT:
        return int(value)
    exact = decimal.Decimal(repr(value))
    exponent = exact.as_tuple().exponent
    return int(exact) if isinstance(exponent, int) and exponent >= 0 else value


def _json_value(field_type: str, value: Any) -> Any:
    if field_type == "number":
        return json_number(value)
    if field_type == "date":
        return value.isoformat()
    if field_type == "timestamp":
        return value.astimezone(dt.UTC).isoformat()
    return value


def record_data(dataset: Dataset, row: Mapping[str, Any]) -> dict[str, Any]:
    """Builds a record's JSON object from its typed columns.

    Missing values (NULL) are left out, and keys come in jsonb's order (shorter names first,
    then bytewise), so a record reads exactly as it did when records were stored as jsonb.

    Args:
        dataset: The dataset.
        row: A row holding a column per declared field.

    Returns:
        The record's ``data``.
    """
    data: dict[str, Any] = {}
    for f in sorted(dataset.fields, key=lambda f: (len(f.name.encode()), f.name.encode())):
        value = row[f.name]
        if value is not None:
            data[f.name] = _json_value(f.type, value)
    return data


def _record_row(dataset: Dataset, row: Any) -> dict[str, Any]:
    return {
        "key": row[tables.KEY],
        "data": record_data(dataset, row),
        "import_id": row[tables.IMPORT_ID],
        "update_time": row[tables.UPDATE_TIME],
    }


def _dataset(row: Any) -> Dataset:
    values = dict(row)
    values["fields"] = [FieldDef.from_dict(f) for f in values["fields"]]
    return Dataset(**values)


def _dataset_row(dataset: Dataset) -> dict[str, Any]:
    row = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)}
    row["fields"] = [f.to_dict() for f in dataset.fields]
    return row


_IMPORT_FIELDS = [f.name for f in dataclasses.fields(Import)]


def _import(row: Any) -> Import:
    return Import(**{k: row[k] for k in _IMPORT_FIELDS})


@dataclasses.dataclass(frozen=True)
class ChunkTotals:
    """Sums over an import's chunks.

    Attributes:
        chunks: Chunks in all.
        done: Chunks DONE or MERGED (validated).
        rows_done: Rows of those chunks.
        rows_accepted: Accepted rows of those chunks.
        rows_rejected: Rejected rows of those chunks.
        merged: Chunks MERGED.
        rows_inserted: Records inserted by the merged chunks.
    """

    chunks: int
    done: int
    rows_done: int
    rows_accepted: int
    rows_rejected: int
    merged: int = 0
    rows_inserted: int = 0


class ImportsRepository(Protocol):
    """What the imports service needs of its storage: datasets, imports, chunks, records."""

    async def add_dataset(self, dataset: Dataset) -> bool:
        """Inserts a dataset unless its tenant already used its request id."""
        ...

    async def sync_records_table(
        self,
        dataset_id: uuid.UUID,
        old: Sequence[FieldDef],
        new: Sequence[FieldDef],
        *,
        has_records: bool,
    ) -> None:
        """Brings a dataset's records table in line with a changed schema."""
        ...

    async def get_dataset_by_request_id(self, tenant: str, request_id: str) -> Dataset | None:
        """Loads the dataset a create with ``request_id`` made for ``tenant``."""
        ...

    async def get_dataset(
        self, tenant: str, dataset_id: uuid.UUID, *, for_update: bool = False
    ) -> Dataset | None:
        """Loads a dataset of ``tenant``."""
        ...

    async def get_dataset_by_id(self, dataset_id: uuid.UUID) -> Dataset | None:
        """Loads a dataset whatever its tenant (workers acting for an import)."""
        ...

    async def save_dataset(self, dataset: Dataset) -> None:
        """Writes back a dataset."""
        ...

    async def list_datasets(
        self, tenant: str, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Dataset]:
        """Lists a tenant's datasets in creation order."""
        ...

    async def delete_dataset(self, dataset_id: uuid.UUID) -> None:
        """Deletes a dataset with its records, imports, chunks, staged rows and row errors."""
        ...

    async def has_records(self, dataset_id: uuid.UUID) -> bool:
        """Whether any record is stored in the dataset."""
        ...

    async def active_imports(self, dataset_id: uuid.UUID) -> int:
        """Counts imports of the dataset that are not finished."""
        ...

    async def add_import(self, item: Import) -> None:
        """Inserts an import."""
        ...

    async def get_import(
        self,
        import_id: uuid.UUID,
        *,
        dataset_id: uuid.UUID | None = None,
        tenant: str | None = None,
        for_update: bool = False,
    ) -> Import | None:
        """Loads an import."""
        ...

    async def get_import_by_operation(self, operation_id: uuid.UUID) -> Import | None:
        """Loads the import an operation carries out."""
        ...

    async def import_plan(self, import_id: uuid.UUID) -> tuple[list[str], str | None]:
        """Returns the CSV header columns and the plain file path recorded by the split."""
        ...

    async def save_import(
        self,
        item: Import,
        *,
        columns: Sequence[str] | None = None,
        plain_path: str | None = None,
    ) -> None:
        """Writes back an import."""
        ...

    async def list_imports(
        self, dataset_id: uuid.UUID, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Import]:
        """Lists a dataset's imports in creation order."""
        ...

    async def add_chunks(self, chunks: Sequence[Chunk]) -> None:
        """Inserts the chunks of a split."""
        ...

    async def get_chunk(
        self, import_id: uuid.UUID, chunk_no: int, *, for_update: bool = False
    ) -> Chunk | None:
        """Loads a chunk."""
        ...

    async def pending_chunks(self, import_id: uuid.UUID) -> list[int]:
        """Returns the numbers of the chunks not validated yet (neither DONE nor MERGED)."""
        ...

    async def chunks_to_merge(self, import_id: uuid.UUID) -> list[int]:
        """Returns the numbers of the DONE chunks (validated, not merged yet)."""
        ...

    async def mark_chunk_merged(self, chunk: Chunk, inserted: int) -> None:
        """Marks a chunk MERGED with the records its merge inserted."""
        ...

    async def mark_chunk_done(self, chunk: Chunk) -> None:
        """Marks a chunk DONE with its counts."""
        ...

    async def chunk_totals(self, import_id: uuid.UUID) -> ChunkTotals:
        """Sums an import's chunks."""
        ...

    async def create_staging(
        self, import_id: uuid.UUID, chunk_no: int, fields: Sequence[FieldDef]
    ) -> None:
        """Creates a chunk's staging table (in the chunk task's transaction)."""
        ...

    async def drop_staging(self, import_id: uuid.UUID) -> None:
        """Drops an import's staged rows: its chunks' staging tables, and rows an older version
        left in its own staging table or the shared ``staged_records`` table.
        """
        ...

    async def drop_chunk_staging(self, import_id: uuid.UUID, chunk_no: int) -> None:
        """Drops one chunk's staging table (after its merge, in the same transaction)."""
        ...

    async def has_legacy_staging(self, import_id: uuid.UUID) -> bool:
        """Whether rows of the import were staged by an older version (as jsonb)."""
        ...

    async def staged_count(self, import_id: uuid.UUID, chunk_no: int) -> int:
        """Counts a chunk's staged rows (the merge's check that none was lost)."""
        ...

    async def copy_staged(
        self,
        import_id: uuid.UUID,
        chunk_no: int,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Bulk-loads typed staged rows with COPY (in the session's transaction)."""
        ...

    async def copy_staged_text(
        self, import_id: uuid.UUID, chunk_no: int, columns: Sequence[str], payload: Any
    ) -> None:
        """Bulk-loads typed staged rows from a COPY text-format payload (built column-wise)."""
        ...

    async def copy_row_errors(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Bulk-loads row errors with COPY."""
        ...

    async def reset_import(self, import_id: uuid.UUID) -> None:
        """Drops an import's chunks, staged rows and row errors (a retry starts over)."""
        ...

    async def delete_staged(self, import_id: uuid.UUID) -> None:
        """Drops an import's staged rows (cancel, failure, after the merge)."""
        ...

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
        """Merges one chunk's staged rows into the dataset's records table by key."""
        ...

    async def create_load_table(self, import_id: uuid.UUID, fields: Sequence[FieldDef]) -> None:
        """Creates an import's load table (chunks COPY into it; the finalize swaps it in)."""
        ...

    async def relax_commit(self) -> None:
        """Lets the transaction's commit return before its WAL is flushed (chunk writes)."""
        ...

    async def has_load_table(self, import_id: uuid.UUID) -> bool:
        """Whether the import loads into a load table not swapped in yet."""
        ...

    async def copy_loaded(
        self,
        import_id: uuid.UUID,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]] = (),
        payload: Any = b"",
    ) -> None:
        """Bulk-loads a chunk's valid rows into the import's load table with COPY."""
        ...

    async def swap_in_load_table(self, import_id: uuid.UUID, dataset: Dataset) -> bool:
        """Makes the load table the records table when exact (unique keys, no records)."""
        ...

    async def merge_load(
        self, import_id: uuid.UUID, dataset: Dataset, now: dt.datetime, *, plain: bool
    ) -> int:
        """Merges the load table into the records table by key, then drops it."""
        ...

    async def mark_loaded_chunks_merged(self, import_id: uuid.UUID, inserted: int | None) -> None:
        """Marks every DONE chunk MERGED after the load table went in."""
        ...

    async def add_record_count(self, dataset_id: uuid.UUID, inserted: int) -> int:
        """Grows a dataset's ``record_count`` by the records a merge inserted."""
        ...

    def stream_row_errors(
        self, import_id: uuid.UUID, *, limit: int | None = None
    ) -> AsyncIterator[tuple[int, str, str, str]]:
        """Streams an import's row errors in line order (server-side cursor)."""
        ...

    async def list_records(
        self,
        dataset: Dataset,
        conditions: Sequence[Condition],
        *,
        after_key: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Lists a dataset's records in key order, filtered on declared fields."""
        ...

    async def get_record(self, dataset: Dataset, key: str) -> dict[str, Any] | None:
        """Loads one record."""
        ...

    async def share_operation(self, operation_id: uuid.UUID) -> tuple[str, int] | None:
        """Reads an operation's state under ``FOR KEY SHARE``."""
        ...

    async def touch_operation(
        self, operation_id: uuid.UUID, progress: dict[str, Any] | None, now: dt.datetime
    ) -> str | None:
        """Heartbeats a running operation on behalf of its chunk tasks (any attempt)."""
        ...

    async def expired_files(
        self, ended_before: dt.datetime, limit: int
    ) -> list[tuple[uuid.UUID, str, str | None]]:
        """Finished imports that ended before ``ended_before`` and still hold a file, locked."""
        ...

    async def forget_files(self, import_ids: Sequence[uuid.UUID]) -> None:
        """Records that these imports' files are gone (retention)."""
        ...


class SqlImportsRepository:
    """Datasets, imports, chunks, staging, row errors and records in the ``imports`` schema."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    # ---- datasets ----------------------------------------------------------------------

    async def add_dataset(self, dataset: Dataset) -> bool:
        """Inserts a dataset unless its tenant already used its request id.

        Args:
            dataset: The new dataset.

        Returns:
            False if a dataset of the tenant holds the same ``request_id`` (nothing written);
            a concurrent insert of that id is waited for, so its winner is then readable.
        """
        t = tables.datasets
        query = (
            pg.insert(t)
            .values(_dataset_row(dataset))
            .on_conflict_do_nothing(
                index_elements=["tenant", "request_id"], index_where=t.c.request_id.is_not(None)
            )
            .returning(t.c.id)
        )
        if (await self._session.execute(query)).first() is None:
            return False
        await self._create_records_table(dataset.id, dataset.fields)
        return True

    # ---- typed records tables ----------------------------------------------------------

    async def _create_records_table(
        self, dataset_id: uuid.UUID, fields: Sequence[FieldDef]
    ) -> None:
        table = tables.records_table(dataset_id, fields)
        await self._session.execute(sa.schema.CreateTable(table))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            await self._session.execute(sa.schema.CreateIndex(index))

    async def sync_records_table(
        self,
        dataset_id: uuid.UUID,
        old: Sequence[FieldDef],
        new: Sequence[FieldDef],
        *,
        has_records: bool,
    ) -> None:
        """Brings a dataset's records table in line with a changed schema.

        Without records the table is simply made anew. With records, the domain only allows
        safe changes (see :func:`model.breaking_changes`): new fields become new (nullable)
        columns; fields declared ``indexed`` get their index, fields no longer indexed lose
        it. Identifiers are quoted by the dialect, never pasted.

        Args:
            dataset_id: The dataset (its row is locked by the caller).
            old: Fields before the change.
            new: Fields after it.
            has_records: Whether records are stored.
        """
        if not has_records:
            await self._session.execute(
                sa.schema.DropTable(tables.records_table(dataset_id, old), if_exists=True)
            )
            await self._create_records_table(dataset_id, new)
            return
        table = tables.records_table(dataset_id, new)
        before = tables.records_table(dataset_id, old)
        old_by_name = {f.name: f for f in old}
        for f in new:
            if f.name not in old_by_name:
                await self._session.execute(tables.AddColumn(table, table.c[f.name]))
        for f in new:
            was = old_by_name.get(f.name)
            was_indexed = was is not None and was.indexed
            name = tables.field_index_name(dataset_id, f.name)
            if f.indexed and not was_indexed:
                index = next(i for i in table.indexes if i.name == name)
                await self._session.execute(sa.schema.CreateIndex(index, if_not_exists=True))
            elif was_indexed and not f.indexed:
                index = next(i for i in before.indexes if i.name == name)
                await self._session.execute(sa.schema.DropIndex(index, if_exists=True))

    @staticmethod
    def _records(dataset: Dataset) -> sa.Table:
        return tables.records_table(dataset.id, dataset.fields)

    async def get_dataset_by_request_id(self, tenant: str, request_id: str) -> Dataset | None:
        """Loads the dataset a create with ``request_id`` made for ``tenant``.

        Args:
            tenant: Caller's tenant.
            request_id: AIP-155 request id of the create.

        Returns:
            The dataset or ``None``.
        """
        t = tables.datasets
        query = sa.select(t).where(t.c.tenant == tenant, t.c.request_id == request_id)
        row = (await self._session.execute(query)).mappings().first()
        return _dataset(row) if row else None

    async def get_dataset(
        self, tenant: str, dataset_id: uuid.UUID, *, for_update: bool = False
    ) -> Dataset | None:
        """Loads a dataset of ``tenant``.

        Args:
            tenant: Caller's tenant (another tenant's dataset is not found).
            dataset_id: Its id.
            for_update: Lock the row.

        Returns:
            The dataset or ``None``.
        """
        t = tables.datasets
        query = sa.select(t).where(t.c.id == dataset_id, t.c.tenant == tenant)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return _dataset(row) if row else None

    async def get_dataset_by_id(self, dataset_id: uuid.UUID) -> Dataset | None:
        """Loads a dataset whatever its tenant (workers acting for an import).

        Args:
            dataset_id: Its id.

        Returns:
            The dataset or ``None``.
        """
        t = tables.datasets
        row = (
            (await self._session.execute(sa.select(t).where(t.c.id == dataset_id)))
            .mappings()
            .first()
        )
        return _dataset(row) if row else None

    async def save_dataset(self, dataset: Dataset) -> None:
        """Writes back a dataset.

        Args:
            dataset: A loaded, changed dataset.
        """
        row = _dataset_row(dataset)
        row.pop("id")
        t = tables.datasets
        await self._session.execute(sa.update(t).where(t.c.id == dataset.id).values(**row))

    async def list_datasets(
        self, tenant: str, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Dataset]:
        """Lists a tenant's datasets in creation order.

        Args:
            tenant: The tenant.
            after_id: Keyset position.
            limit: Rows to return.

        Returns:
            The datasets.
        """
        t = tables.datasets
        query = sa.select(t).where(t.c.tenant == tenant).order_by(t.c.id).limit(limit)
        if after_id is not None:
            query = query.where(t.c.id > after_id)
        return [_dataset(r) for r in (await self._session.execute(query)).mappings()]

    async def delete_dataset(self, dataset_id: uuid.UUID) -> None:
        """Deletes a dataset with its records, imports, chunks, staged rows and row errors.

        Args:
            dataset_id: Its id.
        """
        import_ids = sa.select(tables.imports.c.id).where(tables.imports.c.dataset_id == dataset_id)
        for import_id in list((await self._session.execute(import_ids)).scalars()):
            await self.drop_staging(import_id)
        for table in (tables.staged_records, tables.row_errors, tables.import_chunks):
            await self._session.execute(sa.delete(table).where(table.c.import_id.in_(import_ids)))
        await self._session.execute(
            sa.schema.DropTable(tables.records_table(dataset_id, ()), if_exists=True)
        )
        await self._session.execute(
            sa.delete(tables.imports).where(tables.imports.c.dataset_id == dataset_id)
        )
        await self._session.execute(
            sa.delete(tables.datasets).where(tables.datasets.c.id == dataset_id)
        )

    async def has_records(self, dataset_id: uuid.UUID) -> bool:
        """Whether any record is stored in the dataset.

        Args:
            dataset_id: Its id.

        Returns:
            True if at least one.
        """
        t = tables.records_table(dataset_id, ())
        query = sa.select(sa.exists().select_from(t))
        return bool((await self._session.execute(query)).scalar())

    async def active_imports(self, dataset_id: uuid.UUID) -> int:
        """Counts imports of the dataset that are not finished.

        Args:
            dataset_id: Its id.

        Returns:
            The count.
        """
        t = tables.imports
        query = sa.select(sa.func.count()).where(
            t.c.dataset_id == dataset_id, t.c.state.in_(["PENDING", "RUNNING"])
        )
        return int((await self._session.execute(query)).scalar() or 0)

    # ---- imports -----------------------------------------------------------------------

    async def add_import(self, item: Import) -> None:
        """Inserts an import.

        Args:
            item: The new import.
        """
        row = {k: getattr(item, k) for k in _IMPORT_FIELDS}
        await self._session.execute(sa.insert(tables.imports), row)

    async def get_import(
        self,
        import_id: uuid.UUID,
        *,
        dataset_id: uuid.UUID | None = None,
        tenant: str | None = None,
        for_update: bool = False,
    ) -> Import | None:
        """Loads an import.

        Args:
            import_id: Its id.
            dataset_id: Must belong to this dataset, if given.
            tenant: Must belong to this tenant, if given.
            for_update: Lock the row.

        Returns:
            The import or ``None``.
        """
        t = tables.imports
        query = sa.select(t).where(t.c.id == import_id)
        if dataset_id is not None:
            query = query.where(t.c.dataset_id == dataset_id)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return _import(row) if row else None

    async def get_import_by_operation(self, operation_id: uuid.UUID) -> Import | None:
        """Loads the import an operation carries out.

        Args:
            operation_id: The operation.

        Returns:
            The import or ``None``.
        """
        t = tables.imports
        row = (
            (await self._session.execute(sa.select(t).where(t.c.operation_id == operation_id)))
            .mappings()
            .first()
        )
        return _import(row) if row else None

    async def import_plan(self, import_id: uuid.UUID) -> tuple[list[str], str | None]:
        """Returns the CSV header columns and the plain file path recorded by the split.

        Args:
            import_id: The import.

        Returns:
            ``(columns, plain_path)``.
        """
        t = tables.imports
        row = (
            await self._session.execute(
                sa.select(t.c.columns, t.c.plain_path).where(t.c.id == import_id)
            )
        ).first()
        if row is None:
            return [], None
        return list(row[0] or []), row[1]

    async def save_import(
        self,
        item: Import,
        *,
        columns: Sequence[str] | None = None,
        plain_path: str | None = None,
    ) -> None:
        """Writes back an import.

        Args:
            item: A loaded, changed import.
            columns: CSV header columns to record (split).
            plain_path: Plain file path to record (split).
        """
        row: dict[str, Any] = {k: getattr(item, k) for k in _IMPORT_FIELDS if k != "id"}
        if columns is not None:
            row["columns"] = list(columns)
        if plain_path is not None:
            row["plain_path"] = plain_path
        t = tables.imports
        await self._session.execute(sa.update(t).where(t.c.id == item.id).values(**row))

    async def list_imports(
        self, dataset_id: uuid.UUID, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Import]:
        """Lists a dataset's imports in creation order.

        Args:
            dataset_id: The dataset.
            after_id: Keyset position.
            limit: Rows to return.

        Returns:
            The imports.
        """
        t = tables.imports
        query = sa.select(t).where(t.c.dataset_id == dataset_id).order_by(t.c.id).limit(limit)
        if after_id is not None:
            query = query.where(t.c.id > after_id)
        return [_import(r) for r in (await self._session.execute(query)).mappings()]

    # ---- chunks ------------------------------------------------------------------------

    async def add_chunks(self, chunks: Sequence[Chunk]) -> None:
        """Inserts the chunks of a split.

        Args:
            chunks: The chunks.
        """
        if chunks:
            await self._session.execute(
                sa.insert(tables.import_chunks), [dataclasses.asdict(c) for c in chunks]
            )

    async def get_chunk(
        self, import_id: uuid.UUID, chunk_no: int, *, for_update: bool = False
    ) -> Chunk | None:
        """Loads a chunk.

        Args:
            import_id: The import.
            chunk_no: Its position.
            for_update: Lock the row (settles concurrent duplicates of one chunk task).

        Returns:
            The chunk or ``None``.
        """
        t = tables.import_chunks
        query = sa.select(t).where(t.c.import_id == import_id, t.c.chunk_no == chunk_no)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return Chunk(**dict(row)) if row else None

    async def pending_chunks(self, import_id: uuid.UUID) -> list[int]:
        """Returns the numbers of the chunks not validated yet (neither DONE nor MERGED).

        Args:
            import_id: The import.

        Returns:
            Chunk numbers.
        """
        t = tables.import_chunks
        query = (
            sa.select(t.c.chunk_no)
            .where(t.c.import_id == import_id, t.c.state.not_in(["DONE", "MERGED"]))
            .order_by(t.c.chunk_no)
        )
        return list((await self._session.execute(query)).scalars())

    async def chunks_to_merge(self, import_id: uuid.UUID) -> list[int]:
        """Returns the numbers of the DONE chunks (validated, not merged yet).

        Args:
            import_id: The import.

        Returns:
            Chunk numbers.
        """
        t = tables.import_chunks
        query = (
            sa.select(t.c.chunk_no)
            .where(t.c.import_id == import_id, t.c.state == "DONE")
            .order_by(t.c.chunk_no)
        )
        return list((await self._session.execute(query)).scalars())

    async def mark_chunk_merged(self, chunk: Chunk, inserted: int) -> None:
        """Marks a chunk MERGED with the records its merge inserted.

        Args:
            chunk: The chunk.
            inserted: Records inserted (not updated).
        """
        t = tables.import_chunks
        await self._session.execute(
            sa.update(t)
            .where(t.c.import_id == chunk.import_id, t.c.chunk_no == chunk.chunk_no)
            .values(state="MERGED", rows_inserted=inserted)
        )

    async def mark_chunk_done(self, chunk: Chunk) -> None:
        """Marks a chunk DONE with its counts.

        Args:
            chunk: The chunk (counts set).
        """
        t = tables.import_chunks
        await self._session.execute(
            sa.update(t)
            .where(t.c.import_id == chunk.import_id, t.c.chunk_no == chunk.chunk_no)
            .values(
                state="DONE",
                rows_accepted=chunk.rows_accepted,
                rows_rejected=chunk.rows_rejected,
                keys_sorted=chunk.keys_sorted,
            )
        )

    async def chunk_totals(self, import_id: uuid.UUID) -> ChunkTotals:
        """Sums an import's chunks.

        Args:
            import_id: The import.

        Returns:
            The totals.
        """
        t = tables.import_chunks
        merged = t.c.state == "MERGED"
        done = sa.or_(t.c.state == "DONE", merged)
        query = sa.select(
            sa.func.count(),
            sa.func.count().filter(done),
            sa.func.coalesce(sa.func.sum(t.c.rows).filter(done), 0),
            sa.func.coalesce(sa.func.sum(t.c.rows_accepted).filter(done), 0),
            sa.func.coalesce(sa.func.sum(t.c.rows_rejected).filter(done), 0),
            sa.func.count().filter(merged),
            sa.func.coalesce(sa.func.sum(t.c.rows_inserted).filter(merged), 0),
        ).where(t.c.import_id == import_id)
        row = (await self._session.execute(query)).one()
        return ChunkTotals(*(int(v) for v in row))

    # ---- staging -----------------------------------------------------------------------

    async def _driver(self) -> Any:
        connection = await self._session.connection()
        raw = await connection.get_raw_connection()
        return raw.driver_connection

    @staticmethod
    def staging_table(import_id: uuid.UUID, chunk_no: int | None = None) -> str:
        """Returns the name of a chunk's staging table (hex digits only: safe to quote).

        Args:
            import_id: The import.
            chunk_no: The chunk; ``None`` names the one table per import of older versions.

        Returns:
            ``staged_<32 hex digits>_<chunk_no>`` (in the ``imports`` schema).
        """
        prefix = f"staged_{import_id.hex}"
        return prefix if chunk_no is None else f"{prefix}_{chunk_no}"

    def _staging_sql(self, import_id: uuid.UUID, chunk_no: int | None = None) -> str:
        # The regclass text for to_regclass() (a bound value, not SQL).
        return f'{tables.SCHEMA}."{self.staging_table(import_id, chunk_no)}"'

    @classmethod
    def _staging(
        cls, import_id: uuid.UUID, chunk_no: int | None, fields: Sequence[FieldDef] = ()
    ) -> sa.Table:
        # A throwaway Table: SQLAlchemy quotes the identifiers, no SQL is formatted by hand.
        return staging_table_for(cls.staging_table(import_id, chunk_no), fields)

    async def create_staging(
        self, import_id: uuid.UUID, chunk_no: int, fields: Sequence[FieldDef]
    ) -> None:
        """Creates a chunk's staging table (in the chunk task's transaction).

        One UNLOGGED table per chunk, without an index, shaped like the dataset's records
        table (typed columns) plus the source line of each row: COPY writes no WAL and
        maintains nothing, the chunk's merge reads only its own rows, and the merge drops the
        table instead of deleting its rows. The caller holds the chunk's row lock, so no
        duplicate chunk task creates it concurrently; a task that died before its commit
        took its table with it.

        Args:
            import_id: The import.
            chunk_no: The chunk.
            fields: The dataset's declared fields (the typed columns).
        """
        await self._session.execute(
            sa.schema.CreateTable(self._staging(import_id, chunk_no, fields), if_not_exists=True)
        )

    async def _staging_tables(self, import_id: uuid.UUID) -> list[str]:
        """Names of the import's staging tables that exist (per chunk, or an older one)."""
        prefix = self.staging_table(import_id)
        query = sa.text(
            "SELECT relname FROM pg_class WHERE relnamespace ="
            " (SELECT oid FROM pg_namespace WHERE nspname = :s)"
            " AND relkind = 'r' AND left(relname, :n) = :p"
        )
        params = {"s": tables.SCHEMA, "n": len(prefix), "p": prefix}
        return sorted((await self._session.execute(query, params)).scalars())

    async def drop_staging(self, import_id: uuid.UUID) -> None:
        """Drops an import's staged rows: its chunks' staging tables, and rows an older
        version left in its own staging table or the shared ``staged_records`` table.

        Args:
            import_id: The import.
        """
        for name in await self._staging_tables(import_id):
            await self._session.execute(
                sa.schema.DropTable(staging_table_for(name), if_exists=True)
            )
        t = tables.staged_records
        await self._session.execute(sa.delete(t).where(t.c.import_id == import_id))

    async def drop_chunk_staging(self, import_id: uuid.UUID, chunk_no: int) -> None:
        """Drops one chunk's staging table (after its merge, in the same transaction).

        Args:
            import_id: The import.
            chunk_no: The chunk.
        """
        await self._session.execute(
            sa.schema.DropTable(self._staging(import_id, chunk_no), if_exists=True)
        )

    async def _table_exists(self, regclass: str) -> bool:
        # ``regclass`` is the quoted name as text, bound as a value (never SQL).
        exists = await self._session.execute(
            sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": regclass}
        )
        return bool(exists.scalar())

    async def has_legacy_staging(self, import_id: uuid.UUID) -> bool:
        """Whether rows of the import were staged by an older version (as jsonb).

        Args:
            import_id: The import.

        Returns:
            True if its one-table-per-import staging table or ``staged_records`` rows exist.
        """
        if await self._table_exists(self._staging_sql(import_id)):
            return True
        t = tables.staged_records
        query = sa.select(sa.exists().where(t.c.import_id == import_id))
        return bool((await self._session.execute(query)).scalar())

    async def staged_count(self, import_id: uuid.UUID, chunk_no: int) -> int:
        """Counts a chunk's staged rows (the merge's check that none was lost).

        Args:
            import_id: The import.
            chunk_no: The chunk.

        Returns:
            Rows in its staging table (0 if the table is gone).
        """
        if not await self._table_exists(self._staging_sql(import_id, chunk_no)):
            return 0
        query = sa.select(sa.func.count()).select_from(self._staging(import_id, chunk_no))
        return int((await self._session.execute(query, execution_options=_ONE_OFF)).scalar() or 0)

    async def copy_staged(
        self,
        import_id: uuid.UUID,
        chunk_no: int,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Bulk-loads typed staged rows with COPY (in the session's transaction).

        Args:
            import_id: The import.
            chunk_no: The chunk (its staging table must exist).
            columns: Column names of the tuples (``line``, ``$key``, fields).
            rows: Tuples of Python values of the column types.
        """
        if rows:
            driver = await self._driver()
            await driver.copy_records_to_table(
                self.staging_table(import_id, chunk_no),
                schema_name=tables.SCHEMA,
                columns=list(columns),
                records=rows,
            )

    async def copy_staged_text(
        self, import_id: uuid.UUID, chunk_no: int, columns: Sequence[str], payload: Any
    ) -> None:
        """Bulk-loads typed staged rows from a COPY text-format payload (built column-wise).

        Args:
            import_id: The import.
            chunk_no: The chunk (its staging table must exist).
            columns: Column names of the payload's fields, in order.
            payload: Bytes of tab-separated lines, COPY text escaping applied, NULL as
                backslash-N.
        """
        if len(payload):
            driver = await self._driver()
            await driver.copy_to_table(
                self.staging_table(import_id, chunk_no),
                schema_name=tables.SCHEMA,
                columns=list(columns),
                # A memoryview: asyncpg would take bytes for a file path.
                source=memoryview(payload),
                format="text",
            )

    async def copy_row_errors(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Bulk-loads row errors with COPY.

        Args:
            rows: ``(import_id, chunk_no, line, field, reason, raw_value)`` tuples.
        """
        if rows:
            driver = await self._driver()
            await driver.copy_records_to_table(
                "row_errors",
                schema_name=tables.SCHEMA,
                columns=["import_id", "chunk_no", "line", "field", "reason", "raw_value"],
                records=rows,
            )

    async def reset_import(self, import_id: uuid.UUID) -> None:
        """Drops an import's chunks, staged rows and row errors (a retry starts over).

        Args:
            import_id: The import.
        """
        await self.drop_staging(import_id)
        for table in (tables.row_errors, tables.import_chunks):
            await self._session.execute(sa.delete(table).where(table.c.import_id == import_id))

    async def delete_staged(self, import_id: uuid.UUID) -> None:
        """Drops an import's staged rows (cancel, failure, after the merge).

        Args:
            import_id: The import.
        """
        await self.drop_staging(import_id)

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
        """Merges one chunk's staged rows into the dataset's records table by key.

        Chunks of an import merge concurrently, each in its own transaction, in any order;
        the last line of a key still wins: within the chunk by ``DISTINCT ON`` (key, line
        descending), across chunks and imports by the guard of :meth:`_upsert`. Rows go in
        key order, so concurrent merges take their key locks in one order.

        With ``plain``, the rows are first inserted without ``ON CONFLICT`` (no speculative
        insertion per row) under a savepoint; if a key is already stored (another chunk or
        import got there first) that is rolled back and the upsert runs instead.

        Args:
            import_id: The import.
            chunk_no: The chunk (its staging table must exist).
            dataset: The dataset (the schema types the columns).
            now: Update time.
            plain: Try the plain INSERT first (the dataset was empty when the merge began).
            keys_sorted: The chunk task staged the rows in bytewise key order with no key
                twice (checked column-wise before its COPY): the rows are read as written,
                without the sort and ``DISTINCT ON`` (about a third of the merge's time). A
                fresh staging table written by one COPY and scanned by nothing else reads
                back in that order; the order only spares concurrent merges lock waits, the
                guard keeps the outcome right in any order.

        Returns:
            Records inserted (not updated): what ``record_count`` grows by.
        """
        staged = self._staging(import_id, chunk_no, dataset.fields)
        return await self._merge_from(
            staged, staged.c.line, import_id, dataset, now, plain=plain, keys_sorted=keys_sorted
        )

    async def _merge_from(
        self,
        staged: sa.Table,
        line: Any,
        import_id: uuid.UUID,
        dataset: Dataset,
        now: dt.datetime,
        *,
        plain: bool,
        keys_sorted: bool,
    ) -> int:
        """The merge of :meth:`merge_chunk` from any table of staged rows (see there)."""
        records = self._records(dataset)
        names = [f.name for f in dataset.fields]
        latest = sa.select(
            staged.c[tables.KEY],
            line,
            sa.literal(import_id, records.c[tables.IMPORT_ID].type),
            sa.literal(now, records.c[tables.UPDATE_TIME].type),
            *(staged.c[n] for n in names),
        )
        if not keys_sorted:
            latest = (
                # Bytewise order (COLLATE "C": abbreviated sort keys, half the sort time);
                # keys are equal under it exactly when they are under the column's
                # (deterministic) collation, and every merge inserts in this one order.
                latest.distinct(staged.c[tables.KEY].collate("C")).order_by(
                    staged.c[tables.KEY].collate("C"), line.desc()
                )
            )
            # A bigger sort budget for this transaction only: the DISTINCT ON sort of a large
            # chunk otherwise spills to disk.
            await self._session.execute(sa.text("SET LOCAL work_mem = '64MB'"))
        columns = [tables.KEY, tables.LINE, tables.IMPORT_ID, tables.UPDATE_TIME, *names]
        if plain:
            insert = pg.insert(records).from_select(columns, latest)
            try:
                async with self._session.begin_nested():
                    result = await self._session.execute(insert, execution_options=_ONE_OFF)
                return int(cast(Any, result).rowcount or 0)
            except sa.exc.IntegrityError as exc:
                if getattr(exc.orig, "sqlstate", None) != "23505":
                    raise
        upsert = self._upsert(pg.insert(records).from_select(columns, latest), records)
        # xmax = 0 on a returned row: inserted, not updated.
        merged = upsert.returning((sa.literal_column("xmax") == 0).label("inserted")).cte("merged")
        result = await self._session.execute(
            sa.select(sa.func.count().filter(merged.c.inserted)), execution_options=_ONE_OFF
        )
        return int(result.scalar() or 0)

    # ---- direct load: one import-wide table that becomes the records table -------------

    @staticmethod
    def load_table(import_id: uuid.UUID) -> str:
        """Returns the name of an import's load table (hex digits only: safe to quote).

        Args:
            import_id: The import.

        Returns:
            ``staged_<32 hex digits>_load``: it shares the prefix of the import's staging
            tables, so everything that drops those (cancel, failure, retry, dataset delete)
            drops it too.
        """
        return f"staged_{import_id.hex}_load"

    @classmethod
    def _load(cls, import_id: uuid.UUID, fields: Sequence[FieldDef] = ()) -> sa.Table:
        return load_table_for(cls.load_table(import_id), import_id, fields)

    async def relax_commit(self) -> None:
        """Lets this transaction's commit return before its WAL is flushed to disk.

        For a chunk's transaction only: what it writes (staged or loaded rows, row errors,
        the chunk DONE) is derived from the stored file. A PostgreSQL crash can lose the
        last such commits, never part of one: their chunks are simply not DONE and run again
        (the sweeper re-dispatches the import). Any later synchronous commit (the finalize)
        flushes them first, so a completed import never depends on one.
        """
        await self._session.execute(sa.text("SET LOCAL synchronous_commit = off"))

    async def create_load_table(self, import_id: uuid.UUID, fields: Sequence[FieldDef]) -> None:
        """Creates an import's load table (in the split's transaction).

        Shaped exactly like the dataset's records table (same columns, same order, LOGGED)
        but without an index: chunk tasks COPY their valid rows straight into it, and the
        finalize makes it the records table (:meth:`swap_in_load_table`) instead of copying
        the rows a second time. ``$import_id`` and ``$update_time`` are filled by column
        defaults (the import, the chunk's commit time); the swap drops the defaults.

        Args:
            import_id: The import.
            fields: The dataset's declared fields.
        """
        await self._session.execute(
            sa.schema.CreateTable(self._load(import_id, fields), if_not_exists=True)
        )

    async def has_load_table(self, import_id: uuid.UUID) -> bool:
        """Whether the import loads into a load table (created by its split, not swapped yet).

        Args:
            import_id: The import.

        Returns:
            True if the table exists.
        """
        return await self._table_exists(f'{tables.SCHEMA}."{self.load_table(import_id)}"')

    async def copy_loaded(
        self,
        import_id: uuid.UUID,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]] = (),
        payload: Any = b"",
    ) -> None:
        """Bulk-loads a chunk's valid rows into the import's load table with COPY.

        Args:
            import_id: The import.
            columns: Column names as for :meth:`copy_staged` (``line``, ``$key``, fields).
            rows: Tuples of Python values of the column types (JSONL path).
            payload: COPY text-format bytes (CSV path, see :meth:`copy_staged_text`).
        """
        names = [tables.LINE if c == "line" else c for c in columns]
        if not rows and not len(payload):
            return
        driver = await self._driver()
        if rows:
            await driver.copy_records_to_table(
                self.load_table(import_id),
                schema_name=tables.SCHEMA,
                columns=names,
                records=rows,
            )
        if len(payload):
            await driver.copy_to_table(
                self.load_table(import_id),
                schema_name=tables.SCHEMA,
                columns=names,
                source=memoryview(payload),
                format="text",
            )

    async def swap_in_load_table(self, import_id: uuid.UUID, dataset: Dataset) -> bool:
        """Makes an import's load table the dataset's records table, if that is exact.

        Exact when no key occurs twice in the load table (its unique key index builds) and
        the records table is empty (checked under an ACCESS EXCLUSIVE lock, so no merge of
        another import is in flight into it). Then the empty records table is dropped and the
        load table renamed in its place, with the records table's indexes: the import's rows
        are written once, by the chunks' COPY. Everything runs under a savepoint: when it is
        not exact, nothing has changed and the caller merges instead.

        Args:
            import_id: The import.
            dataset: The dataset.

        Returns:
            True if swapped (every loaded row is now a record), False if nothing changed.
        """
        load = self._load(import_id, dataset.fields)
        records = self._records(dataset)
        key_index = f"{records.name}_key"
        temporary = f"{load.name}_key"
        try:
            async with self._session.begin_nested():
                # Before the lock on the records table: readers wait only for the swap.
                await self._session.execute(
                    sa.schema.CreateIndex(sa.Index(temporary, load.c[tables.KEY], unique=True)),
                    execution_options=_ONE_OFF,
                )
                await self._session.execute(
                    sa.text(f"LOCK TABLE {self._quoted(records)} IN ACCESS EXCLUSIVE MODE"),
                    execution_options=_ONE_OFF,
                )
                if await self.has_records(dataset.id):
                    raise _NotSwapped
                await self._session.execute(sa.schema.DropTable(records))
                await self._session.execute(
                    tables.RenameTable(load, tables.records_table_name(dataset.id)),
                    execution_options=_ONE_OFF,
                )
                await self._session.execute(
                    tables.RenameIndex(tables.SCHEMA, temporary, key_index),
                    execution_options=_ONE_OFF,
                )
                await self._session.execute(
                    tables.DropColumnDefaults(records, [tables.IMPORT_ID, tables.UPDATE_TIME]),
                    execution_options=_ONE_OFF,
                )
                for index in sorted(records.indexes, key=lambda i: str(i.name)):
                    if index.name != key_index:
                        await self._session.execute(sa.schema.CreateIndex(index))
        except _NotSwapped:
            return False
        except sa.exc.IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != "23505":
                raise
            return False
        return True

    @staticmethod
    def _quoted(table: sa.Table) -> str:
        # Names of hex digits and a fixed prefix only (see load_table, records_table_name).
        return f'{table.schema}."{table.name}"'

    async def merge_load(
        self, import_id: uuid.UUID, dataset: Dataset, now: dt.datetime, *, plain: bool
    ) -> int:
        """Merges an import's load table into the records table (when it cannot be swapped
        in: a key occurs twice, or the dataset holds records), in one statement, with the
        ``DISTINCT ON`` and the line-order guard of :meth:`merge_chunk`; then drops it.

        Args:
            import_id: The import.
            dataset: The dataset.
            now: Update time.
            plain: Try the plain INSERT first (see :meth:`merge_chunk`).

        Returns:
            Records inserted (not updated).
        """
        load = self._load(import_id, dataset.fields)
        # Duplicate keys are the common reason to be here: no point reading them as unique.
        inserted = await self._merge_from(
            load, load.c[tables.LINE], import_id, dataset, now, plain=plain, keys_sorted=False
        )
        await self._session.execute(sa.schema.DropTable(load, if_exists=True))
        return inserted

    async def mark_loaded_chunks_merged(self, import_id: uuid.UUID, inserted: int | None) -> None:
        """Marks every DONE chunk of an import MERGED after its load table went in.

        Args:
            import_id: The import.
            inserted: Records the merge inserted, booked on the first chunk; ``None`` after a
                swap (each chunk inserted its accepted rows).
        """
        t = tables.import_chunks
        query = sa.update(t).where(t.c.import_id == import_id, t.c.state == "DONE")
        if inserted is None:
            await self._session.execute(
                query.values(state="MERGED", rows_inserted=t.c.rows_accepted)
            )
            return
        first = (
            sa.select(sa.func.min(t.c.chunk_no)).where(t.c.import_id == import_id).scalar_subquery()
        )
        await self._session.execute(
            query.values(
                state="MERGED",
                rows_inserted=sa.case((t.c.chunk_no == first, inserted), else_=0),
            )
        )

    @staticmethod
    def _upsert(insert: Any, records: sa.Table) -> Any:
        """Adds the key upsert with the line-order guard to an INSERT into ``records``.

        A stored version is replaced only by a later one: ``(import id, line)`` compared as a
        row. Import ids are UUIDv7 (creation order), so a later import's row wins whatever
        order imports and chunks merge in, and within an import the later line wins.
        """
        excluded = insert.excluded
        return insert.on_conflict_do_update(
            index_elements=[records.c[tables.KEY]],
            set_={c.name: excluded[c.name] for c in records.columns if c.name != tables.KEY},
            where=sa.tuple_(records.c[tables.IMPORT_ID], records.c[tables.LINE])
            < sa.tuple_(excluded[tables.IMPORT_ID], excluded[tables.LINE]),
        )

    async def add_record_count(self, dataset_id: uuid.UUID, inserted: int) -> int:
        """Grows a dataset's ``record_count`` by the records a merge inserted.

        Args:
            dataset_id: The dataset.
            inserted: Records added.

        Returns:
            The new count.
        """
        t = tables.datasets
        query = (
            sa.update(t)
            .where(t.c.id == dataset_id)
            .values(record_count=t.c.record_count + inserted)
            .returning(t.c.record_count)
        )
        return int((await self._session.execute(query)).scalar() or 0)

    async def count_records(self, dataset_id: uuid.UUID) -> int:
        """Counts a dataset's records.

        Args:
            dataset_id: The dataset.

        Returns:
            The count.
        """
        t = tables.records_table(dataset_id, ())
        query = sa.select(sa.func.count()).select_from(t)
        return int((await self._session.execute(query)).scalar() or 0)

    # ---- row errors --------------------------------------------------------------------

    async def stream_row_errors(
        self, import_id: uuid.UUID, *, limit: int | None = None
    ) -> AsyncIterator[tuple[int, str, str, str]]:
        """Streams an import's row errors in line order (server-side cursor).

        Args:
            import_id: The import.
            limit: At most this many.

        Yields:
            ``(line, field, reason, raw_value)``.
        """
        t = tables.row_errors
        query = (
            sa.select(t.c.line, t.c.field, t.c.reason, t.c.raw_value)
            .where(t.c.import_id == import_id)
            .order_by(t.c.line, t.c.field)
            .execution_options(yield_per=2000)
        )
        if limit is not None:
            query = query.limit(limit)
        result = await self._session.stream(query)
        async for row in result:
            yield int(row[0]), str(row[1]), str(row[2]), str(row[3])

    # ---- records -----------------------------------------------------------------------

    @staticmethod
    def _condition(dataset: Dataset, records: sa.Table, cond: Condition) -> sa.ColumnElement[bool]:
        field = dataset.field(cond.field)
        if field is None:  # pragma: no cover - the filter parser only knows declared fields
            raise InvalidArgument(f"filter: unknown field {cond.field!r}", reason="INVALID_FILTER")
        value: Any = cond.value
        column: Any = records.c[field.name]
        if field.name == dataset.key_field and field.type in ("string", "enum"):
            # The same text as the field, and the unique index is on it.
            column = records.c[tables.KEY]
        if field.type == "boolean":
            value = bool(value)
        elif field.type == "integer":
            if not isinstance(value, int) or not _INT_MIN <= value <= _INT_MAX:
                raise InvalidArgument(
                    f"filter: {field.name} is a 64-bit integer field; {value!r} is out of its"
                    f" range ({_INT_MIN} to {_INT_MAX})",
                    reason="INVALID_FILTER",
                    metadata={"field": "filter"},
                )
        elif field.type == "number":
            if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise InvalidArgument(
                    f"filter: {field.name} must be compared with a finite number",
                    reason="INVALID_FILTER",
                    metadata={"field": "filter"},
                )
            value = float(value)
        return cast(sa.ColumnElement[bool], _OPERATORS[cond.op](column, value))

    @staticmethod
    def _record_columns(records: sa.Table, dataset: Dataset) -> list[Any]:
        return [
            # "$" names: a field may well be called "key" or "update_time".
            records.c[tables.KEY],
            records.c[tables.IMPORT_ID],
            records.c[tables.UPDATE_TIME],
            *(records.c[f.name] for f in dataset.fields),
        ]

    async def list_records(
        self,
        dataset: Dataset,
        conditions: Sequence[Condition],
        *,
        after_key: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Lists a dataset's records in key order, filtered on declared fields.

        Filters compare the field's typed column with a bound value of its type.

        Args:
            dataset: The dataset (its schema types the filter).
            conditions: Parsed AIP-160 conditions.
            after_key: Keyset position.
            limit: Rows to return.

        Returns:
            ``{"key", "data", "import_id", "update_time"}`` rows; ``data`` is the record as
            JSON values (see :func:`record_data`).

        Raises:
            InvalidArgument: If a filter value does not fit its field's column.
        """
        t = self._records(dataset)
        key = t.c[tables.KEY]
        query = sa.select(*self._record_columns(t, dataset)).order_by(key).limit(limit)
        for cond in conditions:
            query = query.where(self._condition(dataset, t, cond))
        if after_key is not None:
            query = query.where(key > after_key)
        rows = (await self._session.execute(query)).mappings()
        return [_record_row(dataset, r) for r in rows]

    async def get_record(self, dataset: Dataset, key: str) -> dict[str, Any] | None:
        """Loads one record.

        Args:
            dataset: The dataset.
            key: Its key.

        Returns:
            The record row (as :meth:`list_records` gives) or ``None``.
        """
        t = self._records(dataset)
        query = sa.select(*self._record_columns(t, dataset)).where(t.c[tables.KEY] == key)
        row = (await self._session.execute(query)).mappings().first()
        return _record_row(dataset, row) if row else None

    # ---- the operation row, seen from chunk tasks --------------------------------------

    async def share_operation(self, operation_id: uuid.UUID) -> tuple[str, int] | None:
        """Reads an operation's state under ``FOR KEY SHARE``.

        Chunk writes hold this lock until commit, so cancel and finalize (``FOR UPDATE``)
        wait for in-flight chunk writes, while heartbeats (plain updates) do not.

        Args:
            operation_id: The operation.

        Returns:
            ``(state, attempt)`` or ``None``.
        """
        t = tables.operations
        query = (
            sa.select(t.c.state, t.c.attempt)
            .where(t.c.id == operation_id)
            .with_for_update(key_share=True, read=True)
        )
        row = (await self._session.execute(query)).first()
        return (str(row[0]), int(row[1])) if row else None

    async def touch_operation(
        self, operation_id: uuid.UUID, progress: dict[str, Any] | None, now: dt.datetime
    ) -> str | None:
        """Heartbeats a running operation on behalf of its chunk tasks (any attempt).

        Args:
            operation_id: The operation.
            progress: New progress, or ``None`` to keep it.
            now: Current time.

        Returns:
            The state, or ``None`` if the operation is not RUNNING/CANCELLING.
        """
        t = tables.operations
        values: dict[str, Any] = {"heartbeat_time": now, "update_time": now}
        if progress is not None:
            values["progress"] = progress
        query = (
            sa.update(t)
            .where(t.c.id == operation_id, t.c.state.in_(["RUNNING", "CANCELLING"]))
            .values(**values)
            .returning(t.c.state)
        )
        row = (await self._session.execute(query)).first()
        return str(row[0]) if row else None

    async def expired_files(
        self, ended_before: dt.datetime, limit: int
    ) -> list[tuple[uuid.UUID, str, str | None]]:
        """Finished imports that ended before ``ended_before`` and still hold a file, locked.

        Args:
            ended_before: Cut-off on ``complete_time``.
            limit: Most imports.

        Returns:
            ``(import_id, file_path, plain_path)`` rows.
        """
        t = tables.imports
        query = (
            sa.select(t.c.id, t.c.file_path, t.c.plain_path)
            .where(
                t.c.file_path.is_not(None),
                t.c.complete_time < ended_before,
                t.c.state.in_(["SUCCEEDED", "FAILED", "CANCELLED"]),
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self._session.execute(query)).all()
        return [(row[0], row[1], row[2]) for row in rows]

    async def forget_files(self, import_ids: Sequence[uuid.UUID]) -> None:
        """Records that these imports' files are gone (retention).

        Args:
            import_ids: The imports.
        """
        t = tables.imports
        await self._session.execute(
            sa.update(t).where(t.c.id.in_(list(import_ids))).values(file_path=None, plain_path=None)
        )


_ONE_OFF = {"compiled_cache": None}
"""Execution options of statements on one chunk's staging table: not kept in SQLAlchemy's
compiled cache (its key is the Table object, used for a few statements and dropped)."""


def staging_table_for(name: str, fields: Sequence[FieldDef] = ()) -> sa.Table:
    """Describes one import's UNLOGGED staging table (no index: COPY maintains nothing).

    Shaped like the dataset's records table: the source line of each row, the key text and a
    typed column per declared field.

    Args:
        name: Its name (``staged_<32 hex digits>_<chunk_no>``).
        fields: The dataset's declared fields (none: enough to count or drop it).

    Returns:
        A Table on its own MetaData, in the ``imports`` schema.
    """
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column(tables.KEY, sa.Text, nullable=False),
        *(sa.Column(f.name, tables.SQL_TYPES[f.type]) for f in fields),
        schema=tables.SCHEMA,
        prefixes=["UNLOGGED"],
    )


class _NotSwapped(Exception):
    """The records table holds rows: the load table is merged instead (savepoint undone)."""


def load_table_for(name: str, import_id: uuid.UUID, fields: Sequence[FieldDef] = ()) -> sa.Table:
    """Describes an import's load table: the records table's columns, in its order, LOGGED,
    without an index; ``$import_id`` defaults to the import, ``$update_time`` to ``now()``.

    Args:
        name: Its name (``staged_<32 hex digits>_load``).
        import_id: The import (the default of ``$import_id``).
        fields: The dataset's declared fields (none: enough to count or drop it).

    Returns:
        A Table on its own MetaData, in the ``imports`` schema.
    """
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column(tables.KEY, sa.Text, nullable=False),
        sa.Column(tables.LINE, sa.BigInteger, nullable=False),
        sa.Column(
            tables.IMPORT_ID,
            pg.UUID(as_uuid=True),
            nullable=False,
            server_default=sa.text(f"'{import_id}'::uuid"),
        ),
        sa.Column(
            tables.UPDATE_TIME,
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        *(sa.Column(f.name, tables.SQL_TYPES[f.type]) for f in fields),
        schema=tables.SCHEMA,
    )
