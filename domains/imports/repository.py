"""Every query on imports tables lives here (bulk COPY included)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

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
_CASTS: dict[str, Any] = {
    "integer": sa.Numeric,
    "number": sa.Numeric,
    "boolean": sa.Boolean,
    "date": sa.Date,
    "timestamp": sa.DateTime(timezone=True),
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
        done: Chunks DONE.
        rows_done: Rows of DONE chunks.
        rows_accepted: Accepted rows of DONE chunks.
        rows_rejected: Rejected rows of DONE chunks.
    """

    chunks: int
    done: int
    rows_done: int
    rows_accepted: int
    rows_rejected: int


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
        return (await self._session.execute(query)).first() is not None

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
        names = [self.staging_table(i) for i in (await self._session.execute(import_ids)).scalars()]
        left = await self._session.execute(
            sa.text(
                "SELECT relname FROM pg_class WHERE relnamespace ="
                " (SELECT oid FROM pg_namespace WHERE nspname = :s)"
                " AND relname = ANY(:n)"
            ),
            {"s": tables.SCHEMA, "n": names},
        )
        for name in left.scalars():
            await self._session.execute(
                sa.schema.DropTable(staging_table_for(name), if_exists=True)
            )
        for table in (tables.staged_records, tables.row_errors, tables.import_chunks):
            await self._session.execute(sa.delete(table).where(table.c.import_id.in_(import_ids)))
        await self._session.execute(
            sa.delete(tables.records).where(tables.records.c.dataset_id == dataset_id)
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
        t = tables.records
        query = sa.select(sa.exists().where(t.c.dataset_id == dataset_id))
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
        """Returns the numbers of the chunks not DONE.

        Args:
            import_id: The import.

        Returns:
            Chunk numbers.
        """
        t = tables.import_chunks
        query = (
            sa.select(t.c.chunk_no)
            .where(t.c.import_id == import_id, t.c.state != "DONE")
            .order_by(t.c.chunk_no)
        )
        return list((await self._session.execute(query)).scalars())

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
                state="DONE", rows_accepted=chunk.rows_accepted, rows_rejected=chunk.rows_rejected
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
        done = t.c.state == "DONE"
        query = sa.select(
            sa.func.count(),
            sa.func.count().filter(done),
            sa.func.coalesce(sa.func.sum(t.c.rows).filter(done), 0),
            sa.func.coalesce(sa.func.sum(t.c.rows_accepted).filter(done), 0),
            sa.func.coalesce(sa.func.sum(t.c.rows_rejected).filter(done), 0),
        ).where(t.c.import_id == import_id)
        row = (await self._session.execute(query)).one()
        return ChunkTotals(*(int(v) for v in row))

    # ---- staging -----------------------------------------------------------------------

    async def _driver(self) -> Any:
        connection = await self._session.connection()
        raw = await connection.get_raw_connection()
        return raw.driver_connection

    @staticmethod
    def staging_table(import_id: uuid.UUID) -> str:
        """Returns the name of an import's staging table (hex digits only: safe to quote).

        Args:
            import_id: The import.

        Returns:
            ``staged_<32 hex digits>`` (in the ``imports`` schema).
        """
        return f"staged_{import_id.hex}"

    def _staging_sql(self, import_id: uuid.UUID) -> str:
        # The regclass text for to_regclass() (a bound value, not SQL).
        return f'{tables.SCHEMA}."{self.staging_table(import_id)}"'

    @classmethod
    def _staging(cls, import_id: uuid.UUID) -> sa.Table:
        # A throwaway Table: SQLAlchemy quotes the identifiers, no SQL is formatted by hand.
        return staging_table_for(cls.staging_table(import_id))

    async def create_staging(self, import_id: uuid.UUID) -> None:
        """Creates an import's staging table if it does not exist.

        One UNLOGGED table per import, without an index: COPY writes no WAL and maintains
        nothing, and the import's end drops the table instead of deleting its rows. Concurrent
        creators are serialized by an advisory lock (``IF NOT EXISTS`` alone can race).

        Args:
            import_id: The import.
        """
        name = self.staging_table(import_id)
        exists = await self._session.execute(
            sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": f'{tables.SCHEMA}."{name}"'}
        )
        if exists.scalar():
            return
        await self._session.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:n, 0))"), {"n": name}
        )
        await self._session.execute(
            sa.schema.CreateTable(self._staging(import_id), if_not_exists=True)
        )

    async def drop_staging(self, import_id: uuid.UUID) -> None:
        """Drops an import's staged rows: its staging table, and rows an older version left in
        the shared ``staged_records`` table (normally none).

        Args:
            import_id: The import.
        """
        await self._session.execute(sa.schema.DropTable(self._staging(import_id), if_exists=True))
        t = tables.staged_records
        await self._session.execute(sa.delete(t).where(t.c.import_id == import_id))

    async def staged_count(self, import_id: uuid.UUID) -> int:
        """Counts an import's staged rows (the finalize check that none was lost).

        Args:
            import_id: The import.

        Returns:
            Rows in its staging table plus legacy rows in ``staged_records``.
        """
        t = tables.staged_records
        legacy = sa.select(sa.func.count()).where(t.c.import_id == import_id)
        count = int((await self._session.execute(legacy)).scalar() or 0)
        name = f'{tables.SCHEMA}."{self.staging_table(import_id)}"'
        exists = await self._session.execute(
            sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}
        )
        if exists.scalar():
            query = sa.select(sa.func.count()).select_from(self._staging(import_id))
            count += int((await self._session.execute(query)).scalar() or 0)
        return count

    async def copy_staged(self, import_id: uuid.UUID, rows: Sequence[tuple[Any, ...]]) -> None:
        """Bulk-loads staged rows with COPY (in the session's transaction).

        Args:
            import_id: The import (its staging table must exist).
            rows: ``(chunk_no, line, key, data_json)`` tuples.
        """
        if rows:
            driver = await self._driver()
            await driver.copy_records_to_table(
                self.staging_table(import_id),
                schema_name=tables.SCHEMA,
                columns=["chunk_no", "line", "key", "data"],
                records=rows,
            )

    async def copy_staged_text(self, import_id: uuid.UUID, payload: Any) -> None:
        """Bulk-loads staged rows from a COPY text-format payload (built column-wise).

        Args:
            import_id: The import (its staging table must exist).
            payload: Bytes of ``chunk_no, line, key, data`` lines, tab-separated, COPY text
                escaping applied.
        """
        if len(payload):
            driver = await self._driver()
            await driver.copy_to_table(
                self.staging_table(import_id),
                schema_name=tables.SCHEMA,
                columns=["chunk_no", "line", "key", "data"],
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

    async def merge_staged(
        self, import_id: uuid.UUID, dataset_id: uuid.UUID, now: dt.datetime, *, empty: bool
    ) -> int:
        """Upserts an import's staged rows into records by key (the last line of a key wins).

        Reads the import's staging table (and legacy rows of ``staged_records``). Into an
        empty dataset the rows are plainly inserted (no speculative insertion per row); the
        caller holds the dataset's row lock, so no other merge can fill it meanwhile.

        Args:
            import_id: The import.
            dataset_id: Its dataset.
            now: Update time.
            empty: The dataset has no record (under its row lock).

        Returns:
            Records inserted (not updated): what ``record_count`` grows by.
        """
        staging = self._staging_sql(import_id)
        exists = await self._session.execute(
            sa.text("SELECT to_regclass(:n) IS NOT NULL"),
            {"n": staging},
        )
        legacy = tables.staged_records
        sources: list[sa.Select[Any]] = []
        if exists.scalar():
            table = self._staging(import_id)
            sources.append(sa.select(table.c.key, table.c.line, table.c.data))
        sources.append(
            sa.select(legacy.c.key, legacy.c.line, legacy.c.data).where(
                legacy.c.import_id == import_id
            )
        )
        staged = (sa.union_all(*sources) if len(sources) > 1 else sources[0]).cte("staged")
        latest = (
            sa.select(staged.c.key, staged.c.data)
            .distinct(staged.c.key)
            .order_by(staged.c.key, staged.c.line.desc())
            .cte("latest")
        )
        records = tables.records
        insert = pg.insert(records).from_select(
            ["dataset_id", "key", "data", "import_id", "update_time"],
            sa.select(
                sa.literal(dataset_id, records.c.dataset_id.type),
                latest.c.key,
                latest.c.data,
                sa.literal(import_id, records.c.import_id.type),
                sa.literal(now, records.c.update_time.type),
            ),
        )
        if not empty:
            insert = insert.on_conflict_do_update(
                index_elements=[records.c.dataset_id, records.c.key],
                set_={
                    "data": insert.excluded.data,
                    "import_id": insert.excluded.import_id,
                    "update_time": insert.excluded.update_time,
                },
            )
        # xmax = 0 on a returned row: inserted, not updated.
        merged = insert.returning((sa.literal_column("xmax") == 0).label("inserted")).cte("merged")
        query = sa.select(sa.func.count().filter(merged.c.inserted))
        # A bigger sort budget for this transaction only: the DISTINCT ON sort of a large
        # import otherwise spills to disk in many small runs.
        await self._session.execute(sa.text("SET LOCAL work_mem = '64MB'"))
        result = await self._session.execute(query)
        return int(result.scalar() or 0)

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
        t = tables.records
        query = sa.select(sa.func.count()).where(t.c.dataset_id == dataset_id)
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
    def _condition(dataset: Dataset, cond: Condition) -> sa.ColumnElement[bool]:
        field = dataset.field(cond.field)
        if field is None:  # pragma: no cover - the filter parser only knows declared fields
            raise InvalidArgument(f"filter: unknown field {cond.field!r}", reason="INVALID_FILTER")
        t = tables.records
        text = t.c.data[field.name].astext
        value: Any = cond.value
        column: Any
        if field.name == dataset.key_field and field.type in ("string", "enum"):
            column = t.c.key
        elif field.type in _CASTS:
            column = sa.cast(text, _CASTS[field.type])
        else:
            column = text
        if field.type == "boolean":
            value = bool(value)
        return cast(sa.ColumnElement[bool], _OPERATORS[cond.op](column, value))

    async def list_records(
        self,
        dataset: Dataset,
        conditions: Sequence[Condition],
        *,
        after_key: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Lists a dataset's records in key order, filtered on declared fields.

        Filters cast the JSONB value to the field's type; values are bound parameters.

        Args:
            dataset: The dataset (its schema types the filter).
            conditions: Parsed AIP-160 conditions.
            after_key: Keyset position.
            limit: Rows to return.

        Returns:
            ``{"key", "data", "import_id", "update_time"}`` rows.
        """
        t = tables.records
        query = (
            sa.select(t.c.key, t.c.data, t.c.import_id, t.c.update_time)
            .where(t.c.dataset_id == dataset.id)
            .order_by(t.c.key)
            .limit(limit)
        )
        for cond in conditions:
            query = query.where(self._condition(dataset, cond))
        if after_key is not None:
            query = query.where(t.c.key > after_key)
        return [dict(r) for r in (await self._session.execute(query)).mappings()]

    async def get_record(self, dataset_id: uuid.UUID, key: str) -> dict[str, Any] | None:
        """Loads one record.

        Args:
            dataset_id: The dataset.
            key: Its key.

        Returns:
            The record row or ``None``.
        """
        t = tables.records
        query = sa.select(t.c.key, t.c.data, t.c.import_id, t.c.update_time).where(
            t.c.dataset_id == dataset_id, t.c.key == key
        )
        row = (await self._session.execute(query)).mappings().first()
        return dict(row) if row else None

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


def staging_table_for(name: str) -> sa.Table:
    """Describes one import's UNLOGGED staging table (no index: COPY maintains nothing).

    Args:
        name: Its name (``staged_<32 hex digits>``).

    Returns:
        A Table on its own MetaData, in the ``imports`` schema.
    """
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("chunk_no", sa.Integer, nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("data", pg.JSONB, nullable=False),
        schema=tables.SCHEMA,
        prefixes=["UNLOGGED"],
    )
