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
from domains.shared.bulk import row_params, unnest_rows
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


_DATASET = "dataset__"
_CHUNK = "chunk__"
_SUM = "sum__"
# Labels of the dataset's, a chunk's and the chunk sums' columns next to the import's.


def _dataset_columns() -> list[Any]:
    return [c.label(_DATASET + c.name) for c in tables.datasets.c]


def _dataset_of(row: Any) -> Dataset | None:
    if row[_DATASET + "id"] is None:
        return None
    return _dataset({c.name: row[_DATASET + c.name] for c in tables.datasets.c})


def _chunk_of(row: Any) -> Chunk | None:
    if row[_CHUNK + "chunk_no"] is None:
        return None
    return Chunk(**{c.name: row[_CHUNK + c.name] for c in tables.import_chunks.c})


def _validated(c: sa.Table) -> sa.ColumnElement[bool]:
    # A chunk DONE or MERGED (the service's CHUNK_VALIDATED).
    return sa.or_(c.c.state == "DONE", c.c.state == "MERGED")


def _touch(values: dict[str, Any]) -> Any:
    # A heartbeat of an import's operation (bind "w_op") while RUNNING or CANCELLING, any
    # attempt: its chunk tasks beat for it.
    t = tables.operations
    return (
        sa.update(t)
        .where(
            t.c.id == sa.bindparam("w_op", type_=t.c.id.type),
            sa.or_(t.c.state == "RUNNING", t.c.state == "CANCELLING"),
        )
        .values(**values)
    )


def _sums(prefix: str = "") -> list[Any]:
    """The chunk sums of :class:`ChunkTotals`, in its field order, over ``import_chunks``."""
    t = tables.import_chunks
    merged = t.c.state == "MERGED"
    done = _validated(t)
    return [
        sa.func.count().label(prefix + "chunks"),
        sa.func.count().filter(done).label(prefix + "done"),
        sa.func.coalesce(sa.func.sum(t.c.rows).filter(done), 0).label(prefix + "rows_done"),
        sa.func.coalesce(sa.func.sum(t.c.rows_accepted).filter(done), 0).label(
            prefix + "rows_accepted"
        ),
        sa.func.coalesce(sa.func.sum(t.c.rows_rejected).filter(done), 0).label(
            prefix + "rows_rejected"
        ),
        sa.func.count().filter(merged).label(prefix + "merged"),
        sa.func.coalesce(sa.func.sum(t.c.rows_inserted).filter(merged), 0).label(
            prefix + "rows_inserted"
        ),
    ]


def _totals_of(row: Any, prefix: str = "") -> ChunkTotals:
    # The labels of _sums(), in ChunkTotals' field order.
    names = [f.name for f in dataclasses.fields(ChunkTotals)]
    return ChunkTotals(*(int(row[prefix + name] or 0) for name in names))


def _staged_name(import_id: Any, suffix: str) -> Any:
    """``imports."staged_<hex of import_id><suffix>"`` in SQL (the text to_regclass() takes)."""
    hexid = sa.func.replace(sa.cast(import_id, sa.Text), "-", "", type_=sa.Text)
    return (
        sa.literal(f'{tables.SCHEMA}."staged_', sa.Text) + hexid + sa.literal(f'{suffix}"', sa.Text)
    )


_STATEMENTS: dict[str, Any] = {}
"""Statements of the workflow built once (bind parameters only) and reused: SQLAlchemy then
neither rebuilds nor re-keys them per call."""


def _statement(name: str) -> Any:
    found = _STATEMENTS.get(name)
    if found is None:
        found = _STATEMENTS[name] = _BUILDERS[name]()
    return found


def _build_start() -> Any:
    # PENDING -> RUNNING, and the row as it is then (or as it was, if it was not PENDING),
    # with its dataset.
    t, d = tables.imports, tables.datasets
    op_id = sa.bindparam("op_id", type_=t.c.operation_id.type)
    started = (
        sa.update(t)
        .where(t.c.operation_id == op_id, t.c.state == "PENDING")
        .values(state="RUNNING")
        .returning(*t.c)
        .cte("started")
    )
    item = sa.union_all(
        sa.select(*started.c),
        sa.select(*t.c).where(t.c.operation_id == op_id, ~sa.exists(sa.select(started.c.id))),
    ).subquery("item")
    return sa.select(item, *_dataset_columns()).select_from(
        item.outerjoin(d, d.c.id == item.c.dataset_id)
    )


def _build_context() -> Any:
    t, d, c = tables.imports, tables.datasets, tables.import_chunks
    op_id = sa.bindparam("op_id", type_=t.c.operation_id.type)
    done = _validated(c)
    numbers = pg.aggregate_order_by(c.c.chunk_no, c.c.chunk_no)
    sums = (
        sa.select(
            *_sums(_SUM),
            sa.func.array_agg(numbers).filter(c.c.state == "DONE").label(_SUM + "todo"),
            sa.func.array_agg(numbers).filter(sa.not_(done)).label(_SUM + "pending"),
        )
        .where(c.c.import_id == t.c.id)
        .lateral("sums")
    )
    s = tables.staged_records
    load = sa.func.to_regclass(_staged_name(t.c.id, "_load")).is_not(None).label("load_table")
    legacy = sa.or_(
        sa.func.to_regclass(_staged_name(t.c.id, "")).is_not(None),
        sa.exists().where(s.c.import_id == t.c.id),
    ).label("legacy_staging")
    return (
        sa.select(t, *_dataset_columns(), sums, load, legacy)
        .select_from(t.outerjoin(d, d.c.id == t.c.dataset_id).join(sums, sa.true()))
        .where(t.c.operation_id == op_id)
    )


def _build_chunk_context() -> Any:
    t, d, c = tables.imports, tables.datasets, tables.import_chunks
    op_id = sa.bindparam("op_id", type_=t.c.operation_id.type)
    chunk_no = sa.bindparam("chunk_no", type_=c.c.chunk_no.type)
    return (
        sa.select(t, *_dataset_columns(), *(col.label(_CHUNK + col.name) for col in c.c))
        .select_from(
            t.outerjoin(d, d.c.id == t.c.dataset_id).outerjoin(
                c, sa.and_(c.c.import_id == t.c.id, c.c.chunk_no == chunk_no)
            )
        )
        .where(t.c.operation_id == op_id)
    )


def _build_lock_with_totals() -> Any:
    t, c = tables.imports, tables.import_chunks
    op_id = sa.bindparam("op_id", type_=t.c.operation_id.type)
    sums = sa.select(*_sums(_SUM)).where(c.c.import_id == t.c.id).lateral("sums")
    return (
        sa.select(t, sums)
        .select_from(t.join(sums, sa.true()))
        .where(t.c.operation_id == op_id)
        .with_for_update(of=t)
    )


def _build_lock_chunk() -> Any:
    c = tables.import_chunks
    load = sa.func.to_regclass(sa.bindparam("load_name", type_=sa.Text)).is_not(None)
    return (
        sa.select(c, load.label("load_table"))
        .where(
            c.c.import_id == sa.bindparam("import_id", type_=c.c.import_id.type),
            c.c.chunk_no == sa.bindparam("chunk_no", type_=c.c.chunk_no.type),
        )
        .with_for_update(of=c)
    )


def _build_load_state() -> Any:
    c = tables.import_chunks
    load = sa.func.to_regclass(sa.bindparam("load_name", type_=sa.Text)).is_not(None)
    return sa.select(load.label("load_table"), *_sums()).where(
        c.c.import_id == sa.bindparam("import_id", type_=c.c.import_id.type)
    )


def _build_share(relax: bool) -> Any:
    t = tables.operations
    columns: list[Any] = [t.c.state, t.c.attempt]
    if relax:
        # SET LOCAL synchronous_commit = off, in the same round trip (see relax_commit).
        columns.append(sa.func.set_config("synchronous_commit", "off", sa.true()))
    return (
        sa.select(*columns)
        .where(t.c.id == sa.bindparam("op_id", type_=t.c.id.type))
        .with_for_update(key_share=True, read=True)
    )


def _build_touch_with_totals() -> Any:
    c, t = tables.import_chunks, tables.operations
    done = _validated(c)
    progress = (
        sa.select(
            sa.func.jsonb_build_object(
                "done",
                sa.func.coalesce(sa.func.sum(c.c.rows).filter(done), 0),
                "total",
                sa.bindparam("w_total", type_=sa.BigInteger),
                "message",
                sa.func.format(
                    "%s of %s chunks done", sa.func.count().filter(done), sa.func.count()
                ),
                type_=t.c.progress.type,
            )
        )
        .where(c.c.import_id == sa.bindparam("w_import", type_=c.c.import_id.type))
        .scalar_subquery()
    )
    now = sa.bindparam("w_now", type_=t.c.update_time.type)
    return _touch({"progress": progress, "heartbeat_time": now, "update_time": now}).returning(
        t.c.progress
    )


def _build_complete_chunk(with_progress: bool) -> Any:
    c, t = tables.import_chunks, tables.operations
    done = (
        sa.update(c)
        .where(
            c.c.import_id == sa.bindparam("w_import", type_=c.c.import_id.type),
            c.c.chunk_no == sa.bindparam("w_chunk", type_=c.c.chunk_no.type),
        )
        .values(
            state="DONE",
            rows_accepted=sa.bindparam("w_accepted", type_=c.c.rows_accepted.type),
            rows_rejected=sa.bindparam("w_rejected", type_=c.c.rows_rejected.type),
            keys_sorted=sa.bindparam("w_sorted", type_=c.c.keys_sorted.type),
        )
        .cte("done")
    )
    now = sa.bindparam("w_now", type_=t.c.update_time.type)
    values: dict[str, Any] = {"heartbeat_time": now, "update_time": now}
    if with_progress:
        values["progress"] = sa.bindparam("w_progress", type_=t.c.progress.type)
    return _touch(values).returning(t.c.state).add_cte(done)


_BUILDERS: dict[str, Callable[[], Any]] = {
    "start": _build_start,
    "context": _build_context,
    "chunk_context": _build_chunk_context,
    "lock_with_totals": _build_lock_with_totals,
    "lock_chunk": _build_lock_chunk,
    "load_state": _build_load_state,
    "share": lambda: _build_share(False),
    "share_relaxed": lambda: _build_share(True),
    "touch_with_totals": _build_touch_with_totals,
    "complete_chunk": lambda: _build_complete_chunk(False),
    "complete_chunk_progress": lambda: _build_complete_chunk(True),
}


def _context(row: Any) -> ImportContext:
    return ImportContext(
        item=_import(row),
        dataset=_dataset_of(row),
        columns=list(row["columns"] or []),
        plain_path=row["plain_path"],
    )


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


@dataclasses.dataclass
class ImportContext:
    """An import with what its workflow steps read of it, loaded in one statement.

    Attributes:
        item: The import.
        dataset: Its dataset (``None`` if deleted).
        columns: CSV header columns recorded by the split.
        plain_path: Plain (decompressed) file recorded by the split.
        chunk: The chunk asked for (:meth:`SqlImportsRepository.chunk_context`), if any.
        load: The import's load table exists (:meth:`SqlImportsRepository.import_context`).
        legacy: Rows of it were staged by an older version (idem).
        totals: Sums over its chunks (idem).
        todo: DONE chunks, to merge (idem).
        pending: Chunks not validated yet (idem).
    """

    item: Import
    dataset: Dataset | None
    columns: list[str]
    plain_path: str | None
    chunk: Chunk | None = None
    load: bool = False
    legacy: bool = False
    totals: ChunkTotals = dataclasses.field(default_factory=lambda: ChunkTotals(0, 0, 0, 0, 0))
    todo: list[int] = dataclasses.field(default_factory=list)
    pending: list[int] = dataclasses.field(default_factory=list)


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

    async def start_import(self, operation_id: uuid.UUID) -> ImportContext | None:
        """Moves a PENDING import to RUNNING and loads it with its dataset, in one statement."""
        ...

    async def import_context(self, operation_id: uuid.UUID) -> ImportContext | None:
        """Loads an import with its dataset, plan, tables and chunk sums (one statement)."""
        ...

    async def chunk_context(self, operation_id: uuid.UUID, chunk_no: int) -> ImportContext | None:
        """Loads an import with its dataset, plan and one chunk (one statement)."""
        ...

    async def record_split(
        self,
        item: Import,
        chunks: Sequence[Chunk],
        *,
        columns: Sequence[str],
        plain_path: str,
        probe_records: bool,
    ) -> tuple[bool, bool]:
        """Records a split (chunks and counts) unless one is recorded; says if it won."""
        ...

    async def lock_import_with_totals(
        self, operation_id: uuid.UUID
    ) -> tuple[Import, ChunkTotals] | None:
        """Locks an operation's import and sums its chunks (the finalize's last transaction)."""
        ...

    async def complete_import(self, item: Import, inserted: int) -> str | None:
        """Writes a succeeded import and grows its dataset's ``record_count``."""
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

    async def get_chunk(
        self, import_id: uuid.UUID, chunk_no: int, *, for_update: bool = False
    ) -> Chunk | None:
        """Loads a chunk."""
        ...

    async def chunks(self, import_id: uuid.UUID) -> list[Chunk]:
        """Loads an import's chunks in order."""
        ...

    async def lock_chunk(self, import_id: uuid.UUID, chunk_no: int) -> tuple[Chunk | None, bool]:
        """Locks a chunk; says whether the import's load table exists (one statement)."""
        ...

    async def complete_chunk(
        self,
        chunk: Chunk,
        operation_id: uuid.UUID,
        progress: dict[str, Any] | None,
        now: dt.datetime,
    ) -> str | None:
        """Marks a chunk DONE and heartbeats the operation, in one statement."""
        ...

    async def touch_with_totals(
        self, operation_id: uuid.UUID, import_id: uuid.UUID, total: int | None, now: dt.datetime
    ) -> dict[str, Any] | None:
        """Heartbeats the operation with its import's progress summed from its chunks."""
        ...

    async def load_state(self, import_id: uuid.UUID) -> tuple[bool, ChunkTotals]:
        """Whether the import's load table exists, and its chunk sums (one statement)."""
        ...

    async def mark_chunk_merged(self, chunk: Chunk, inserted: int) -> None:
        """Marks a chunk MERGED with the records its merge inserted."""
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

    async def share_operation(
        self, operation_id: uuid.UUID, *, relax_commit: bool = False
    ) -> tuple[str, int] | None:
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

    async def start_import(self, operation_id: uuid.UUID) -> ImportContext | None:
        """Moves a PENDING import to RUNNING and loads it with its dataset and plan.

        One statement (an ``UPDATE ... RETURNING`` in a CTE, the row as it stands when it was
        not PENDING, joined with its dataset): atomic on its own, so it may run in autocommit.

        Args:
            operation_id: The import's operation.

        Returns:
            The import (RUNNING if it was PENDING, else as found), or ``None`` if none.
        """
        params = {"op_id": operation_id}
        row = (await self._session.execute(_statement("start"), params)).mappings().first()
        return _context(row) if row else None

    async def import_context(self, operation_id: uuid.UUID) -> ImportContext | None:
        """Loads an import with what a finalize (or a resumed run) reads, in one statement.

        Args:
            operation_id: The import's operation.

        Returns:
            The import, its dataset and plan, whether its load table and rows staged by an
            older version exist, its chunk sums, its DONE and its pending chunks; ``None`` if
            there is no import.
        """
        params = {"op_id": operation_id}
        row = (await self._session.execute(_statement("context"), params)).mappings().first()
        if row is None:
            return None
        context = _context(row)
        context.load = bool(row["load_table"])
        context.legacy = bool(row["legacy_staging"])
        context.totals = _totals_of(row, _SUM)
        context.todo = list(row[_SUM + "todo"] or [])
        context.pending = list(row[_SUM + "pending"] or [])
        return context

    async def chunk_context(self, operation_id: uuid.UUID, chunk_no: int) -> ImportContext | None:
        """Loads an import with its dataset, plan and one chunk, in one statement.

        Args:
            operation_id: The import's operation.
            chunk_no: The chunk.

        Returns:
            The import (``chunk`` is ``None`` if that chunk does not exist), or ``None``.
        """
        params = {"op_id": operation_id, "chunk_no": chunk_no}
        row = (await self._session.execute(_statement("chunk_context"), params)).mappings().first()
        if row is None:
            return None
        context = _context(row)
        context.chunk = _chunk_of(row)
        return context

    async def record_split(
        self,
        item: Import,
        chunks: Sequence[Chunk],
        *,
        columns: Sequence[str],
        plain_path: str,
        probe_records: bool,
    ) -> tuple[bool, bool]:
        """Records a split unless one is recorded already, in one statement.

        The import's ``UPDATE`` is conditional on ``chunks_total IS NULL`` (its row lock
        settles concurrent splits: the second finds it set and writes nothing), and the
        chunks are inserted only by the statement that won it.

        Args:
            item: The import, its split fields set (format, counts, file).
            chunks: The chunks.
            columns: CSV header columns.
            plain_path: The plain file.
            probe_records: Also say whether the dataset holds records.

        Returns:
            ``(won, has_records)``: whether this statement recorded the split, and whether a
            record is stored (``False`` unless ``probe_records``).
        """
        t, c = tables.imports, tables.import_chunks
        split = (
            sa.update(t)
            .where(t.c.id == item.id, t.c.chunks_total.is_(None))
            .values(
                format=item.format,
                rows_total=item.rows_total,
                chunks_total=item.chunks_total,
                file_path=item.file_path,
                size_bytes=item.size_bytes,
                sha256=item.sha256,
                columns=list(columns),
                plain_path=plain_path,
            )
            .returning(t.c.id)
            .cte("split")
        )
        # One array per column (unnest): the same statement whatever the number of chunks.
        names = ("chunk_no", "start_offset", "end_offset", "first_line", "rows")
        rows = unnest_rows(c, names, name="plan")
        params = row_params(c, names, [dataclasses.asdict(ch) for ch in chunks], name="plan")
        insert = sa.insert(c).from_select(
            ["import_id", *names, "state"],
            sa.select(split.c.id, *(rows.c[n] for n in names), sa.literal("PENDING", sa.Text))
            .select_from(split)
            .join(rows, sa.true()),
        )
        records = tables.records_table(item.dataset_id, ())
        probe = sa.exists().select_from(records) if probe_records else sa.false()
        query = sa.select(
            sa.exists(sa.select(split.c.id)).label("won"), probe.label("has")
        ).add_cte(insert.cte("chunks"))
        row = (await self._session.execute(query, params)).one()
        return bool(row[0]), bool(row[1])

    async def lock_import_with_totals(
        self, operation_id: uuid.UUID
    ) -> tuple[Import, ChunkTotals] | None:
        """Locks an operation's import (``FOR UPDATE``) and sums its chunks, in one statement.

        For the finalize's last transaction only: it holds the operation's row ``FOR UPDATE``
        already, so no chunk or merge transaction (each holds it ``FOR KEY SHARE``) is in
        flight, and the sums read before the import's lock is granted are current.

        Args:
            operation_id: The import's operation.

        Returns:
            The import and its chunk sums, or ``None`` if there is no import.
        """
        params = {"op_id": operation_id}
        query = _statement("lock_with_totals")
        row = (await self._session.execute(query, params)).mappings().first()
        return (_import(row), _totals_of(row, _SUM)) if row else None

    async def complete_import(self, item: Import, inserted: int) -> str | None:
        """Writes a succeeded import and grows its dataset's ``record_count``, in one statement.

        The dataset's ``UPDATE`` takes its row lock, which serializes the ``record_count``
        increments of concurrent finalizes; the import is written only if the dataset exists.

        Args:
            item: The import (state, counts and complete time set).
            inserted: Records its merges inserted.

        Returns:
            The dataset's display name, or ``None`` if the dataset is gone (nothing written).
        """
        d, t = tables.datasets, tables.imports
        grown = (
            sa.update(d)
            .where(d.c.id == item.dataset_id, d.c.tenant == item.tenant)
            .values(record_count=d.c.record_count + inserted)
            .returning(d.c.display_name)
            .cte("grown")
        )
        written = (
            sa.update(t)
            .where(t.c.id == item.id, sa.exists(sa.select(grown.c.display_name)))
            .values(
                state=item.state,
                rows_total=item.rows_total,
                rows_accepted=item.rows_accepted,
                rows_rejected=item.rows_rejected,
                complete_time=item.complete_time,
            )
            .cte("written")
        )
        query = sa.select(grown.c.display_name).add_cte(written)
        row = (await self._session.execute(query)).first()
        return str(row[0]) if row else None

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

    async def chunks(self, import_id: uuid.UUID) -> list[Chunk]:
        """Loads an import's chunks in order.

        Args:
            import_id: The import.

        Returns:
            Its chunks.
        """
        t = tables.import_chunks
        query = sa.select(t).where(t.c.import_id == import_id).order_by(t.c.chunk_no)
        return [Chunk(**dict(row)) for row in (await self._session.execute(query)).mappings()]

    async def lock_chunk(self, import_id: uuid.UUID, chunk_no: int) -> tuple[Chunk | None, bool]:
        """Locks a chunk (``FOR UPDATE``) and says whether the import's load table exists.

        One statement. The load table is created with the chunks and goes only with the
        finalize's swap or a cancel, neither of which runs while a chunk is not DONE and its
        task holds the operation ``FOR KEY SHARE``: read before the lock, it is still true.

        Args:
            import_id: The import.
            chunk_no: The chunk.

        Returns:
            ``(chunk or None, load table exists)``.
        """
        params = {
            "import_id": import_id,
            "chunk_no": chunk_no,
            "load_name": f'{tables.SCHEMA}."{self.load_table(import_id)}"',
        }
        row = (await self._session.execute(_statement("lock_chunk"), params)).mappings().first()
        if row is None:
            return None, False
        chunk = Chunk(**{c.name: row[c.name] for c in tables.import_chunks.c})
        return chunk, bool(row["load_table"])

    async def complete_chunk(
        self,
        chunk: Chunk,
        operation_id: uuid.UUID,
        progress: dict[str, Any] | None,
        now: dt.datetime,
    ) -> str | None:
        """Marks a chunk DONE with its counts and heartbeats the operation, in one statement.

        The operation's ``UPDATE`` takes its row lock (see :meth:`touch_with_totals`).

        Args:
            chunk: The chunk (counts set).
            operation_id: Its import's operation.
            progress: New progress, or ``None`` to keep it.
            now: Current time.

        Returns:
            The operation's state, or ``None`` if it is not RUNNING/CANCELLING.
        """
        # Parameter names unlike any column's (an UPDATE takes those as SET values).
        params: dict[str, Any] = {
            "w_import": chunk.import_id,
            "w_chunk": chunk.chunk_no,
            "w_accepted": chunk.rows_accepted,
            "w_rejected": chunk.rows_rejected,
            "w_sorted": chunk.keys_sorted,
            "w_op": operation_id,
            "w_now": now,
        }
        name = "complete_chunk"
        if progress is not None:
            name, params["w_progress"] = "complete_chunk_progress", progress
        row = (await self._session.execute(_statement(name), params)).first()
        return str(row[0]) if row else None

    async def touch_with_totals(
        self, operation_id: uuid.UUID, import_id: uuid.UUID, total: int | None, now: dt.datetime
    ) -> dict[str, Any] | None:
        """Heartbeats the operation with its import's progress summed from its chunks.

        Run after a statement of the same transaction took the operation's row lock: this
        statement's snapshot then sees every chunk committed before (the sums are current).

        Args:
            operation_id: The operation.
            import_id: Its import.
            total: Rows in the file.
            now: Current time.

        Returns:
            The progress written (``done``, ``total``, ``message``), or ``None`` if the
            operation is not RUNNING/CANCELLING.
        """
        params = {"w_op": operation_id, "w_import": import_id, "w_total": total, "w_now": now}
        row = (await self._session.execute(_statement("touch_with_totals"), params)).first()
        return dict(row[0]) if row else None

    async def load_state(self, import_id: uuid.UUID) -> tuple[bool, ChunkTotals]:
        """Whether the import's load table exists, and its chunk sums, in one statement.

        Args:
            import_id: The import.

        Returns:
            ``(load table exists, totals)``.
        """
        params = {
            "import_id": import_id,
            "load_name": f'{tables.SCHEMA}."{self.load_table(import_id)}"',
        }
        row = (await self._session.execute(_statement("load_state"), params)).mappings().one()
        return bool(row["load_table"]), _totals_of(row)

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

    async def chunk_totals(self, import_id: uuid.UUID) -> ChunkTotals:
        """Sums an import's chunks.

        Args:
            import_id: The import.

        Returns:
            The totals.
        """
        t = tables.import_chunks
        query = sa.select(*_sums()).where(t.c.import_id == import_id)
        row = (await self._session.execute(query)).one()
        return ChunkTotals(*(int(v) for v in row))

    # ---- staging -----------------------------------------------------------------------

    async def _driver(self) -> Any:
        connection = await self._session.connection()
        raw = await connection.get_raw_connection()
        return raw.driver_connection

    async def _ddl(self, *statements: Any) -> None:
        """Runs DDL statements in one round trip, in the session's transaction.

        They go to the driver as one simple query (no parameters: every name in them is a
        fixed prefix and hex digits, quoted by the dialect's compiler). Not through
        SQLAlchemy: its asyncpg dialect answers any DDL construct it runs by dropping every
        prepared statement of every connection of the engine, so each later statement of the
        worker was prepared again (two or three round trips instead of one). Nothing needs
        that here: the tables created or dropped are the import's own (no statement was
        prepared on them before), and the swap puts in place a table of the records table's
        very columns (a prepared statement on it re-plans in PostgreSQL, as in every other
        process).

        Args:
            statements: DDL constructs or SQL text.

        Raises:
            RuntimeError: If no transaction is open yet (the DDL would commit on its own): a
                statement through the session must come first.
        """
        connection = await self._session.connection()
        dialect = connection.dialect
        sql = ";\n".join(
            s if isinstance(s, str) else str(s.compile(dialect=dialect)) for s in statements
        )
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        if not driver.is_in_transaction():
            raise RuntimeError("DDL of an import runs in a transaction begun by a statement")
        await driver.execute(sql)

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
        await self._ddl(
            sa.schema.CreateTable(self._staging(import_id, chunk_no, fields), if_not_exists=True)
        )

    async def _staging_tables(self, import_id: uuid.UUID) -> list[str]:
        """Names of the import's staging tables that exist (per chunk, or an older one), once
        the rows an older version staged in the shared ``staged_records`` table are deleted
        (in the same statement: one round trip).
        """
        prefix = self.staging_table(import_id)
        query = sa.text(
            "WITH legacy AS (DELETE FROM imports.staged_records WHERE import_id = :i)"
            " SELECT relname FROM pg_class WHERE relnamespace ="
            " (SELECT oid FROM pg_namespace WHERE nspname = :s)"
            " AND relkind = 'r' AND left(relname, :n) = :p"
        ).bindparams(sa.bindparam("i", type_=pg.UUID(as_uuid=True)))
        params = {"i": import_id, "s": tables.SCHEMA, "n": len(prefix), "p": prefix}
        return sorted((await self._session.execute(query, params)).scalars())

    async def drop_staging(self, import_id: uuid.UUID) -> None:
        """Drops an import's staged rows: its chunks' staging tables, and rows an older
        version left in its own staging table or the shared ``staged_records`` table.

        Two round trips at most: the lookup (which deletes the shared table's rows) and one
        batch of ``DROP TABLE``.

        Args:
            import_id: The import.
        """
        names = await self._staging_tables(import_id)
        if names:
            await self._ddl(
                *(sa.schema.DropTable(staging_table_for(name), if_exists=True) for name in names)
            )

    async def drop_chunk_staging(self, import_id: uuid.UUID, chunk_no: int) -> None:
        """Drops one chunk's staging table (after its merge, in the same transaction).

        Args:
            import_id: The import.
            chunk_no: The chunk.
        """
        await self._ddl(sa.schema.DropTable(self._staging(import_id, chunk_no), if_exists=True))

    async def _table_exists(self, regclass: str) -> bool:
        # ``regclass`` is the quoted name as text, bound as a value (never SQL).
        exists = await self._session.execute(
            sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": regclass}
        )
        return bool(exists.scalar())

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
        await self._ddl(sa.schema.CreateTable(self._load(import_id, fields), if_not_exists=True))

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

        The whole swap is one batch of statements (one round trip, see :meth:`_ddl`): the
        emptiness check under the lock is a ``DO`` block that raises
        ``object_not_in_prerequisite_state`` (55000) when a record is stored, a repeated key
        fails the unique index with ``unique_violation`` (23505); either way the batch stops
        there and the savepoint is rolled back (a second round trip, on that path only).

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
        savepoint = "load_swap"
        batch: list[Any] = [
            f"SAVEPOINT {savepoint}",
            # Before the lock on the records table: readers wait only for the swap.
            sa.schema.CreateIndex(sa.Index(temporary, load.c[tables.KEY], unique=True)),
            f"LOCK TABLE {self._quoted(records)} IN ACCESS EXCLUSIVE MODE",
            f"DO $swap$ BEGIN IF EXISTS (SELECT FROM {self._quoted(records)}) THEN"
            " RAISE EXCEPTION 'the records table holds records'"
            " USING ERRCODE = 'object_not_in_prerequisite_state'; END IF; END $swap$",
            sa.schema.DropTable(records),
            tables.RenameTable(load, tables.records_table_name(dataset.id)),
            tables.RenameIndex(tables.SCHEMA, temporary, key_index),
            tables.DropColumnDefaults(records, [tables.IMPORT_ID, tables.UPDATE_TIME]),
            *(
                sa.schema.CreateIndex(index)
                for index in sorted(records.indexes, key=lambda i: str(i.name))
                if index.name != key_index
            ),
            f"RELEASE SAVEPOINT {savepoint}",
        ]
        try:
            await self._ddl(*batch)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) not in ("23505", "55000"):
                raise
            await self._ddl(f"ROLLBACK TO SAVEPOINT {savepoint}")
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
        await self._ddl(sa.schema.DropTable(load, if_exists=True))
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

    async def share_operation(
        self, operation_id: uuid.UUID, *, relax_commit: bool = False
    ) -> tuple[str, int] | None:
        """Reads an operation's state under ``FOR KEY SHARE``.

        Chunk writes hold this lock until commit, so cancel and finalize (``FOR UPDATE``)
        wait for in-flight chunk writes, while heartbeats (plain updates) do not.

        ``relax_commit`` lets the transaction's commit return before its WAL is flushed to
        disk (``SET LOCAL synchronous_commit = off``, as ``set_config`` in the same
        statement). For a chunk's transaction only: what it writes (staged or loaded rows,
        row errors, the chunk DONE) is derived from the stored file. A PostgreSQL crash can
        lose the last such commits, never part of one: their chunks are simply not DONE and
        run again (the sweeper re-dispatches the import). Any later synchronous commit (the
        finalize) flushes them first, so a completed import never depends on one.

        Args:
            operation_id: The operation.
            relax_commit: Commit this transaction without waiting for its WAL flush.

        Returns:
            ``(state, attempt)`` or ``None``.
        """
        query = _statement("share_relaxed" if relax_commit else "share")
        row = (await self._session.execute(query, {"op_id": operation_id})).first()
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
        query = _touch(values).returning(t.c.state)
        row = (await self._session.execute(query, {"w_op": operation_id})).first()
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
        sa.Column(tables.KEY, tables.KEY_TYPE, nullable=False),
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
