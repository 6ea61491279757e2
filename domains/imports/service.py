"""Imports use cases: datasets (CRUD), imports (create, run, chunks, finalize, cancel), records.

The workflow of one import (operation type ``import``):

1. ``imports.run`` (task id = operation id) claims the operation, fetches ``source_uri`` if
   any, decompresses, and splits the file into chunks recorded in ``import_chunks`` (the DB is
   the truth about what is done). It returns the chunks not yet DONE; the task adapter fans
   them out as a Celery chord whose callback is ``imports.finalize``.
2. ``imports.process_chunk`` validates its rows and COPYs valid rows into the import's
   UNLOGGED staging table (``imports."staged_<hex>"``, created by the split)
   and invalid ones into ``row_errors``, then marks the chunk DONE, all in one transaction under
   the chunk's row lock: a redelivered or duplicate chunk task finds it DONE and does nothing.
3. ``imports.finalize`` checks that every chunk is DONE, then in one transaction fenced by the
   operation's attempt: merges the staged rows into ``records`` (``INSERT ... ON CONFLICT``),
   writes the counts, ends the operation and emits ``imports.ImportCompleted``. Records of an
   import become visible at once, or never.

A worker killed mid-import stops the heartbeats; the sweeper re-dispatches ``imports.run``,
which resumes: only chunks not DONE are sent again, and a callback of an older attempt is
ignored. Cancel: chunk tasks see CANCELLING at their next heartbeat, stop, and the staged rows
are deleted; nothing becomes visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, cast

from domains.imports import events, parsing
from domains.imports.columnar import ColumnarValidator, read_one_row_per_line
from domains.imports.model import (
    TERMINAL,
    Chunk,
    Dataset,
    FieldDef,
    Import,
    ImportState,
    validate_schema,
)
from domains.imports.storage import FileStore, SourceFetcher, StoredFile
from domains.imports.tables import KEY
from domains.imports.unit_of_work import ImportsUoW
from domains.operations import service as operations_service
from domains.operations.execution import (
    Cancelled,
    Execution,
    LeaseLost,
    OperationRunner,
    ProgressSink,
)
from domains.operations.model import DispatchSpec, Operation, OperationError, Progress, State
from domains.operations.unit_of_work import UnitOfWork
from domains.shared import idempotency
from domains.shared.clock import utcnow
from domains.shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermanentError,
    TransientError,
)
from domains.shared.events import event_message
from domains.shared.ids import new_id
from domains.shared.query import Condition
from domains.shared.retention import purge_batches
from domains.shared.ssrf import UrlGuard

log = logging.getLogger(__name__)

DOMAIN = "imports"
RUN_TASK = "imports.run"
CHUNK_VALIDATED = frozenset({"DONE", "MERGED"})
"""Chunk states after validation: DONE (staged), MERGED (its rows are in the records table)."""
HEARTBEAT_ROWS = 2000
"""Rows validated between two heartbeat/cancel checks of a chunk task."""


@dataclasses.dataclass(frozen=True)
class ImportsPolicy:
    """Knobs of the imports workflow.

    Attributes:
        chunk_rows: Rows per chunk.
        merge_concurrency: Chunks merged into the records table at once by a finalize (each
            on its own connection, so on its own PostgreSQL backend).
        lease_seconds: Heartbeat lease of the operation.
        pending_deadline_seconds: Re-dispatch deadline while pending.
        max_file_bytes: Largest (decompressed) file.
        max_cell_bytes: Largest value of a row (larger: a row error).
        max_row_bytes: Largest row (larger: a row error).
    """

    chunk_rows: int = 50_000
    merge_concurrency: int = 2
    lease_seconds: float = 30.0
    pending_deadline_seconds: float = 300.0
    max_file_bytes: int = 1024**3
    max_cell_bytes: int = parsing.MAX_CELL_BYTES
    max_row_bytes: int = parsing.MAX_ROW_BYTES


def _not_found_dataset(dataset_id: uuid.UUID) -> NotFound:
    return NotFound(f"datasets/{dataset_id} does not exist", reason="DATASET_NOT_FOUND")


class ImportsService:
    """Datasets, imports and records of the imports domain."""

    def __init__(
        self,
        uow_factory: Callable[[], ImportsUoW],
        *,
        read_uow_factory: Callable[[], ImportsUoW] | None = None,
        store: FileStore,
        fetcher: SourceFetcher | None = None,
        guard: UrlGuard | None = None,
        policy: ImportsPolicy | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        """Creates the service.

        Args:
            uow_factory: Unit of work on the primary.
            read_uow_factory: Unit of work on the replica (record reads).
            store: Where import files live.
            fetcher: Downloads ``source_uri`` (workers).
            guard: SSRF guard for ``source_uri``.
            policy: Chunk size and deadlines.
            progress_interval: Minimum seconds between heartbeat writes of a chunk.
        """
        self._uow = uow_factory
        self._read_uow = read_uow_factory or uow_factory
        self.store = store
        self._fetcher = fetcher
        self._guard = guard or UrlGuard()
        self.policy = policy or ImportsPolicy()
        self._progress_interval = progress_interval
        self._runner = OperationRunner(uow_factory, progress_interval=progress_interval)

    # ---- datasets ----------------------------------------------------------------------

    async def create_dataset(
        self,
        *,
        tenant: str,
        display_name: str,
        fields: Sequence[FieldDef],
        key_field: str,
        source_uri: str | None = None,
        request_id: str | None = None,
    ) -> Dataset:
        """Creates a dataset (once per AIP-155 ``request_id``).

        Args:
            tenant: Caller's tenant.
            display_name: Human name.
            fields: Declared fields.
            key_field: Upsert key field (required).
            source_uri: Default http(s) source for scheduled imports.
            request_id: AIP-155 request id: a retry with the same body returns the dataset
                the first call created.

        Returns:
            The dataset (new, or the first one of ``request_id``).

        Raises:
            InvalidArgument: If the schema, a name or the request id is malformed.
            AlreadyExists: If ``request_id`` was used with a different body.
        """
        idempotency.check_request_id(request_id)
        Dataset.check_display_name(display_name)
        validate_schema(fields, key_field)
        if source_uri:
            self._guard.parse(source_uri)
        fingerprint = idempotency.request_fingerprint(
            {
                "display_name": display_name,
                "fields": [f.to_dict() for f in fields],
                "key_field": key_field,
                "source_uri": source_uri or None,
            }
        )
        now = utcnow()
        dataset = Dataset(
            id=new_id(),
            tenant=tenant,
            display_name=display_name,
            fields=list(fields),
            key_field=key_field,
            create_time=now,
            update_time=now,
            source_uri=source_uri or None,
            request_id=request_id,
            request_hash=fingerprint if request_id else None,
        )
        async with self._uow() as uow:
            if await uow.imports.add_dataset(dataset):
                await uow.commit()
                return dataset
        # The request id is taken (a retry, or a concurrent twin that committed first).
        async with self._uow() as uow:
            first = await uow.imports.get_dataset_by_request_id(tenant, str(request_id))
        if first is None:  # pragma: no cover - the first one was deleted in between
            raise idempotency.vanished(str(request_id))
        idempotency.ensure_same_request(
            request_id=str(request_id),
            resource=first.name,
            stored_hash=first.request_hash,
            request_hash=fingerprint,
        )
        return first

    async def get_dataset(self, tenant: str, dataset_id: uuid.UUID) -> Dataset:
        """Returns a dataset of ``tenant``.

        Args:
            tenant: Caller's tenant.
            dataset_id: Its id.

        Returns:
            The dataset.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        async with self._uow() as uow:
            dataset = await uow.imports.get_dataset(tenant, dataset_id)
        if dataset is None:
            raise _not_found_dataset(dataset_id)
        return dataset

    async def list_datasets(
        self, tenant: str, *, page_size: int, after_id: uuid.UUID | None
    ) -> tuple[list[Dataset], uuid.UUID | None]:
        """Lists a tenant's datasets.

        Args:
            tenant: Caller's tenant.
            page_size: Page size.
            after_id: Keyset position.

        Returns:
            ``(datasets, last id when there is a next page)``.
        """
        async with self._read_uow() as uow:
            rows = await uow.imports.list_datasets(tenant, after_id=after_id, limit=page_size + 1)
        page = rows[:page_size]
        return page, (page[-1].id if len(rows) > page_size else None)

    async def update_dataset(
        self,
        tenant: str,
        dataset_id: uuid.UUID,
        *,
        display_name: str | None = None,
        fields: Sequence[FieldDef] | None = None,
        key_field: str | None = None,
        source_uri: str | None = None,
        clear_source_uri: bool = False,
    ) -> Dataset:
        """Changes a dataset; schema changes that would break stored records are refused.

        Args:
            tenant: Caller's tenant.
            dataset_id: Its id.
            display_name: New name.
            fields: New fields.
            key_field: New key field.
            source_uri: New default source.
            clear_source_uri: Remove the default source.

        Returns:
            The dataset.

        Raises:
            NotFound: If it does not exist.
            InvalidArgument: If a value is malformed.
            FailedPrecondition: If the schema change would break stored records, or an
                import is running.
        """
        async with self._uow() as uow:
            dataset = await uow.imports.get_dataset(tenant, dataset_id, for_update=True)
            if dataset is None:
                raise _not_found_dataset(dataset_id)
            now = utcnow()
            if display_name is not None:
                Dataset.check_display_name(display_name)
                dataset.display_name = display_name
            if fields is not None or key_field is not None:
                if await uow.imports.active_imports(dataset_id):
                    raise FailedPrecondition(
                        f"{dataset.name} has an import in progress; change the schema after it"
                        " ends (or cancel it)",
                        reason="IMPORT_IN_PROGRESS",
                    )
                old_fields = list(dataset.fields)
                has_records = await uow.imports.has_records(dataset_id)
                dataset.change_schema(
                    list(fields if fields is not None else dataset.fields),
                    key_field or dataset.key_field,
                    has_records=has_records,
                    now=now,
                )
                # The typed records table follows the schema in the same transaction.
                await uow.imports.sync_records_table(
                    dataset_id, old_fields, dataset.fields, has_records=has_records
                )
            if source_uri:
                self._guard.parse(source_uri)
                dataset.source_uri = source_uri
            elif clear_source_uri:
                dataset.source_uri = None
            dataset.update_time = now
            await uow.imports.save_dataset(dataset)
            await uow.commit()
        return dataset

    async def purge_files(self, ended_before: dt.datetime, *, limit: int = 1000) -> int:
        """Deletes the stored files of imports that ended before ``ended_before`` (retention).

        The import keeps its records, counts and row errors; only the file (and its
        decompressed copy) goes, and ``file_path`` is cleared in the same transaction.

        Args:
            ended_before: Cut-off on the import's end.
            limit: Imports per batch.

        Returns:
            Files deleted.
        """

        async def batch() -> int:
            async with self._uow() as uow:
                expired = await uow.imports.expired_files(ended_before, limit)
                if not expired:
                    return 0
                for _, file_path, plain_path in expired:
                    self.store.delete(file_path)
                    if plain_path:
                        with contextlib.suppress(OSError):
                            os.remove(plain_path)
                await uow.imports.forget_files([row[0] for row in expired])
                await uow.commit()
            return len(expired)

        return await purge_batches(batch, limit)

    async def delete_dataset(self, tenant: str, dataset_id: uuid.UUID) -> None:
        """Deletes a dataset with its records and imports.

        Args:
            tenant: Caller's tenant.
            dataset_id: Its id.

        Raises:
            NotFound: If it does not exist.
            FailedPrecondition: If an import is running.
        """
        paths: list[str | None] = []
        async with self._uow() as uow:
            dataset = await uow.imports.get_dataset(tenant, dataset_id, for_update=True)
            if dataset is None:
                raise _not_found_dataset(dataset_id)
            if await uow.imports.active_imports(dataset_id):
                raise FailedPrecondition(
                    f"{dataset.name} has an import in progress; cancel it (or wait) before"
                    " deleting the dataset",
                    reason="IMPORT_IN_PROGRESS",
                )
            for item in await uow.imports.list_imports(dataset_id, after_id=None, limit=100_000):
                paths.append(item.file_path)
            await uow.imports.delete_dataset(dataset_id)
            await uow.commit()
        for path in paths:
            self.store.delete(path)

    # ---- imports -----------------------------------------------------------------------

    async def create_import(
        self,
        *,
        tenant: str,
        dataset_id: uuid.UUID,
        stored: StoredFile | None = None,
        source_uri: str | None = None,
        format: str = "auto",
        encoding_errors: str = "fail",
        request_id: str | None = None,
        correlation_id: str | None = None,
        file_name: str | None = None,
    ) -> Operation:
        """Creates an import of a stored file or of a ``source_uri``, and dispatches it.

        Args:
            tenant: Caller's tenant.
            dataset_id: Target dataset.
            stored: The uploaded file, already durable in the store.
            source_uri: http(s) URL the worker fetches (instead of a file).
            format: ``csv``, ``jsonl`` or ``auto``.
            encoding_errors: A byte that is not UTF-8: ``fail`` the import (default),
                ``replace`` it with U+FFFD, or ``reject_row`` (listed in the errors).
            request_id: AIP-155 request id: the same file (or URL) with the same id is one
                import.
            correlation_id: HTTP request id for logs.
            file_name: The uploaded file's name, for people (Flower); never used as a path.

        Returns:
            The PENDING operation (or the earlier one for a repeated request id).

        Raises:
            InvalidArgument: If neither or both of file and source are given, or the URL is
                not allowed.
            NotFound: If the dataset does not exist.
            AlreadyExists: If the request id was used with another file.
        """
        if format not in ("auto", *parsing.FORMATS):
            raise InvalidArgument(
                f"format {format!r} is unknown; use csv, jsonl or auto",
                metadata={"field": "format"},
            )
        if encoding_errors not in parsing.ENCODING_ERRORS:
            raise InvalidArgument(
                f"encoding_errors {encoding_errors!r} is unknown; use fail, replace or reject_row",
                metadata={"field": "encoding_errors"},
            )
        if (stored is None) == (not source_uri):
            raise InvalidArgument(
                "send either a file or a source_uri (exactly one)", reason="IMPORT_SOURCE"
            )
        if source_uri:
            await self._guard.check(source_uri)
        body = {
            "dataset": str(dataset_id),
            "sha256": stored.sha256 if stored else None,
            "source_uri": source_uri,
            "format": format,
            # Only when set, so request ids recorded before the option still match.
            **({"encoding_errors": encoding_errors} if encoding_errors != "fail" else {}),
        }
        fingerprint = operations_service.request_fingerprint(body)
        built: list[uuid.UUID] = []

        async def build(uow: UnitOfWork) -> Operation:
            repo = cast(ImportsUoW, uow).imports
            dataset = await repo.get_dataset(tenant, dataset_id)
            if dataset is None:
                raise _not_found_dataset(dataset_id)
            import_id = new_id()
            op = operations_service.new_operation(
                domain=DOMAIN,
                type_="import",
                target=f"datasets/{dataset_id}/imports/{import_id}",
                dispatch=DispatchSpec(task_name=RUN_TASK, queue=DOMAIN, args=[]),
                request_id=request_id,
                request_hash=fingerprint,
                lease_seconds=self.policy.lease_seconds,
                pending_deadline_seconds=self.policy.pending_deadline_seconds,
                correlation_id=correlation_id,
                tenant=tenant,
            )
            op.dispatch.args = [str(op.id)]
            op.display = {
                "dataset": dataset.display_name,
                "file": (source_uri or file_name or "(request body)")[:200],
                "bytes": str(stored.size) if stored else "?",
                "format": format,
            }
            item = Import(
                id=import_id,
                dataset_id=dataset_id,
                tenant=tenant,
                operation_id=op.id,
                state=ImportState.PENDING,
                format=format,
                encoding_errors=encoding_errors,
                create_time=op.create_time,
                file_path=stored.path if stored else None,
                source_uri=source_uri or None,
                size_bytes=stored.size if stored else 0,
                sha256=stored.sha256 if stored else None,
            )
            await repo.add_import(item)
            built.append(op.id)
            return op

        try:
            op = await operations_service.create_idempotently(
                self._uow,
                request_id=request_id,
                request_hash=fingerprint,
                build=build,
                tenant=tenant,
            )
        except BaseException:
            if stored is not None:
                self.store.delete(stored.path)
            raise
        if stored is not None and op.id not in built:
            # A repeated request: the earlier import already holds this file.
            self.store.delete(stored.path)
        return op

    async def get_import(self, tenant: str, dataset_id: uuid.UUID, import_id: uuid.UUID) -> Import:
        """Returns an import (state refreshed from its operation while it is not finished).

        Args:
            tenant: Caller's tenant.
            dataset_id: Its dataset.
            import_id: Its id.

        Returns:
            The import.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        async with self._uow() as uow:
            item = await uow.imports.get_import(import_id, dataset_id=dataset_id, tenant=tenant)
            if item is None:
                raise NotFound(
                    f"datasets/{dataset_id}/imports/{import_id} does not exist",
                    reason="IMPORT_NOT_FOUND",
                )
            if item.state not in TERMINAL:
                op = await uow.operations.get(item.operation_id)
                if op is not None:
                    item.state = _state_of(op, item)
                    if op.progress.total is not None and item.state == ImportState.RUNNING:
                        item.rows_total = op.progress.total
        return item

    async def list_imports(
        self, tenant: str, dataset_id: uuid.UUID, *, page_size: int, after_id: uuid.UUID | None
    ) -> tuple[list[Import], uuid.UUID | None]:
        """Lists a dataset's imports.

        Args:
            tenant: Caller's tenant.
            dataset_id: The dataset.
            page_size: Page size.
            after_id: Keyset position.

        Returns:
            ``(imports, last id when there is a next page)``.

        Raises:
            NotFound: If the dataset does not exist.
        """
        await self.get_dataset(tenant, dataset_id)
        async with self._read_uow() as uow:
            rows = await uow.imports.list_imports(
                dataset_id, after_id=after_id, limit=page_size + 1
            )
        page = rows[:page_size]
        return page, (page[-1].id if len(rows) > page_size else None)

    @contextlib.asynccontextmanager
    async def row_errors(
        self,
        tenant: str,
        dataset_id: uuid.UUID,
        import_id: uuid.UUID,
        *,
        limit: int | None = None,
    ) -> AsyncIterator[AsyncIterator[tuple[int, str, str, str]]]:
        """Opens a stream of an import's row errors (line order), on the replica.

        Args:
            tenant: Caller's tenant.
            dataset_id: Its dataset.
            import_id: The import.
            limit: At most this many.

        Yields:
            An async iterator of ``(line, field, reason, raw_value)``.

        Raises:
            NotFound: If the import does not exist.
        """
        await self.get_import(tenant, dataset_id, import_id)
        async with self._read_uow() as uow:
            yield uow.imports.stream_row_errors(import_id, limit=limit)

    # ---- records -----------------------------------------------------------------------

    async def list_records(
        self,
        dataset: Dataset,
        conditions: Sequence[Condition],
        *,
        page_size: int,
        after_key: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Lists records of a dataset (replica), filtered on declared fields, in key order.

        Args:
            dataset: The dataset (from :meth:`get_dataset`, so tenancy is checked).
            conditions: Parsed filter.
            page_size: Page size.
            after_key: Keyset position.

        Returns:
            ``(records, last key when there is a next page)``.
        """
        async with self._read_uow() as uow:
            rows = await uow.imports.list_records(
                dataset, conditions, after_key=after_key, limit=page_size + 1
            )
        page = rows[:page_size]
        return page, (page[-1]["key"] if len(rows) > page_size else None)

    async def get_record(self, dataset: Dataset, key: str) -> dict[str, Any]:
        """Returns one record, read from the primary: a single-resource read must see what a
        finished import wrote, whatever the replica's lag (read-your-writes).

        Args:
            dataset: The dataset.
            key: The record key.

        Returns:
            The record row.

        Raises:
            NotFound: If there is no record with this key.
        """
        async with self._uow() as uow:
            row = await uow.imports.get_record(dataset, key)
        if row is None:
            raise NotFound(
                f"{dataset.name}/records/{key} does not exist", reason="RECORD_NOT_FOUND"
            )
        return row

    # ---- workflow: run -----------------------------------------------------------------

    async def run_import(
        self, operation_id: uuid.UUID, *, sink: ProgressSink | None = None
    ) -> dict[str, Any]:
        """First step: claim, fetch, split into chunks; returns the chunks to fan out.

        Resumable: a re-dispatched run reuses the recorded chunks and returns only those
        not DONE (or finalizes at once if all are).

        Args:
            operation_id: The operation.
            sink: Progress mirror.

        Returns:
            ``{"launch": [chunk numbers], "attempt": n, ...}`` or the final response.

        Raises:
            Skip: If the operation is done or was cancelled before it started.
            Busy: If another attempt runs it.
            ImportFileError: If the file cannot be imported (the operation fails).
            TransientError: On a retryable failure (the operation is released first).
        """
        execution = await self._runner.claim(operation_id, sink=sink)
        try:
            return await self._run(execution)
        except Cancelled:
            await self._settle_cancel(operation_id)
            return {"cancelled": True}
        except TransientError as exc:
            await self._runner.release(execution, exc.message)
            raise

    async def _run(self, execution: Execution) -> dict[str, Any]:
        op_id = execution.id
        async with self._uow() as uow:
            item = await uow.imports.get_import_by_operation(op_id)
            dataset = (
                await uow.imports.get_dataset_by_id(item.dataset_id) if item is not None else None
            )
            if item is not None and item.state == ImportState.FAILED:
                # A :retry of a failed import starts over: its chunks, staged rows and row
                # errors are dropped so that they are not counted twice.
                await uow.imports.reset_import(item.id)
                item.chunks_total = item.rows_total = None
                item.rows_accepted = item.rows_rejected = None
                item.error = item.complete_time = None
            if item is not None and item.state in (ImportState.PENDING, ImportState.FAILED):
                item.state = ImportState.RUNNING
                await uow.imports.save_import(item)
                await uow.commit()
        if item is None or dataset is None:
            raise PermanentError(
                "the import or its dataset was deleted before it ran", reason="IMPORT_GONE"
            )
        if item.chunks_total is None:
            async with self._keepalive(op_id, "reading the file"):
                item = await self._split(item, dataset)
        await execution.checkpoint(
            (await self._totals(item.id)).rows_done, item.rows_total, "importing"
        )
        async with self._uow() as uow:
            pending = await uow.imports.pending_chunks(item.id)
        if not pending:
            return await self._finalize(execution)
        return {
            "launch": pending,
            "attempt": execution.attempt,
            "import": item.name,
            "rows_total": item.rows_total,
            "chunks_total": item.chunks_total,
        }

    async def _totals(self, import_id: uuid.UUID) -> Any:
        async with self._uow() as uow:
            return await uow.imports.chunk_totals(import_id)

    async def _split(self, item: Import, dataset: Dataset) -> Import:
        if item.file_path is None:
            if not item.source_uri or self._fetcher is None:
                raise PermanentError("the import has no file and no source_uri to fetch")
            writer = self.store.writer()
            try:
                await self._fetcher.fetch(item.source_uri, writer)
                stored = await writer.commit()
            except BaseException:
                writer.abort()
                raise
            item.file_path, item.size_bytes, item.sha256 = stored.path, stored.size, stored.sha256
            async with self._uow() as uow:
                await uow.imports.save_import(item)
                await uow.commit()
        path = self.store.path(item.file_path)
        plain = await asyncio.to_thread(
            parsing.prepare_plain, path, max_bytes=self.policy.max_file_bytes
        )
        fmt = parsing.detect_format(plain, item.format)
        plan = await asyncio.to_thread(
            functools.partial(
                parsing.plan_chunks,
                plain,
                fmt,
                dataset.fields,
                self.policy.chunk_rows,
                encoding_errors=item.encoding_errors,
            )
        )
        async with self._uow() as uow:
            locked = await uow.imports.get_import(item.id, for_update=True)
            if locked is None:
                raise PermanentError("the import was deleted while it ran", reason="IMPORT_GONE")
            if locked.chunks_total is not None:
                return locked
            await uow.imports.add_chunks(
                [
                    Chunk(
                        import_id=item.id,
                        chunk_no=c.chunk_no,
                        start_offset=c.start_offset,
                        end_offset=c.end_offset,
                        first_line=c.first_line,
                        rows=c.rows,
                    )
                    for c in plan.chunks
                ]
            )
            locked.format = fmt
            locked.rows_total = plan.rows_total
            locked.chunks_total = len(plan.chunks)
            locked.file_path, locked.size_bytes, locked.sha256 = (
                item.file_path,
                item.size_bytes,
                item.sha256,
            )
            await uow.imports.save_import(locked, columns=plan.columns, plain_path=plain)
            await uow.commit()
        return locked

    @contextlib.asynccontextmanager
    async def _keepalive(self, operation_id: uuid.UUID, message: str | None) -> AsyncIterator[None]:
        """Heartbeats the operation while a long step (fetch, split, merge) runs.

        Args:
            operation_id: The operation.
            message: Progress message at ``done=0`` (fetch, split), or ``None`` to keep the
                progress as it is (merge: the rows are all validated by then).
        """
        interval = max(0.2, min(self.policy.lease_seconds / 3, 5.0))

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    async with self._uow() as uow:
                        progress = (
                            None
                            if message is None
                            else {"done": 0, "total": None, "message": message}
                        )
                        await uow.imports.touch_operation(operation_id, progress, utcnow())
                        await uow.commit()
                except Exception:
                    log.debug("keepalive of %s failed", operation_id, exc_info=True)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- workflow: chunks --------------------------------------------------------------

    async def process_chunk(
        self,
        operation_id: uuid.UUID,
        attempt: int,
        chunk_no: int,
        *,
        sink: ProgressSink | None = None,
    ) -> dict[str, Any]:
        """Validates one chunk and stages its rows; applied once per chunk.

        Args:
            operation_id: The import's operation.
            attempt: Attempt of the run that launched it (informational; chunk effects are
                keyed by ``(import, chunk)``, not by attempt).
            chunk_no: The chunk.
            sink: Progress mirror (keyed by the operation id).

        Returns:
            What happened: counts, or a skip/cancel note.
        """
        async with self._uow() as uow:
            op = await uow.operations.get(operation_id)
            item = await uow.imports.get_import_by_operation(operation_id)
            chunk = await uow.imports.get_chunk(item.id, chunk_no) if item is not None else None
            dataset = (
                await uow.imports.get_dataset_by_id(item.dataset_id) if item is not None else None
            )
            columns, plain = (
                await uow.imports.import_plan(item.id) if item is not None else ([], None)
            )
        if op is None or item is None or chunk is None or dataset is None or plain is None:
            return {"skipped": "import, chunk or dataset no longer exists"}
        if op.done:
            if op.state != State.SUCCEEDED:
                await self._discard_staged(item.id)
            return {"skipped": f"operation is {op.state}"}
        if op.state == State.CANCELLING:
            await self._settle_cancel(operation_id)
            return {"cancelled": True}
        if chunk.state in CHUNK_VALIDATED:
            return {"skipped": f"chunk {chunk_no} already done"}

        limits = {
            "max_cell_bytes": self.policy.max_cell_bytes,
            "max_row_bytes": self.policy.max_row_bytes,
        }
        staged: list[tuple[Any, ...]] = []
        staged_copy: Any = b""
        keys_sorted = False  # the row-by-row (JSONL) path stages in file order
        errors: list[tuple[Any, ...]] = []
        rows: Any = parsing.iter_chunk_rows(
            plain, item.format, chunk.start_offset, chunk.end_offset, chunk.first_line
        )
        encoding_rejects = 0
        if item.encoding_errors == "reject_row":
            bad_lines = await asyncio.to_thread(
                parsing.invalid_utf8_lines,
                plain,
                chunk.start_offset,
                chunk.end_offset,
                chunk.first_line,
            )
            if bad_lines:
                rows, rejects = parsing.reject_invalid_utf8(list(rows), bad_lines, item.format)
                encoding_rejects = len(rejects)
                errors.extend(
                    (item.id, chunk_no, e.line, e.field, e.reason, e.raw_value) for e in rejects
                )
        # The loops build ~10^5 small objects: cyclic GC passes over them cost ~20% of the
        # chunk's time and there are no cycles to find. Re-enabled right after.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if item.format == "csv":
                # Column by column (pyarrow): same results as RowValidator, a fraction of the
                # CPU. One pass over the chunk; the heartbeat before it keeps the lease.
                columnar = ColumnarValidator(dataset.fields, dataset.key_field, columns, **limits)
                # pyarrow's CSV reader when each line is one row (checked, else csv.reader):
                # no Python object per cell.
                arrays = (
                    None
                    if encoding_rejects
                    else read_one_row_per_line(
                        parsing.read_range(plain, chunk.start_offset, chunk.end_offset), columns
                    )
                )
                if arrays is not None:
                    result = columnar.validate_arrays(arrays, chunk.first_line)
                else:
                    result = columnar.validate(rows, chunk_no=chunk_no)
                staged_copy = result.staged_copy
                keys_sorted = result.keys_sorted
                errors.extend((item.id, chunk_no, *e) for e in result.errors)
                outcome: tuple[int, int] | dict[str, Any] = (result.accepted, result.rejected)
            else:
                validator = parsing.RowValidator(
                    dataset.fields, dataset.key_field, columns, **limits
                )
                outcome = await self._validate_rows(
                    operation_id, item, chunk_no, validator, dataset.fields, rows, staged, errors
                )
        finally:
            if gc_was_enabled:
                gc.enable()
        if isinstance(outcome, dict):
            return outcome
        accepted, rejected = outcome
        rejected += encoding_rejects

        async with self._uow() as uow:
            shared = await uow.imports.share_operation(operation_id)
            if shared is None or shared[0] != State.RUNNING:
                state = shared[0] if shared else None
                cancel = state == State.CANCELLING
            else:
                cancel = False
                locked = await uow.imports.get_chunk(item.id, chunk_no, for_update=True)
                if locked is None or locked.state in CHUNK_VALIDATED:
                    return {"skipped": f"chunk {chunk_no} already done"}
                await uow.imports.create_staging(item.id, chunk_no, dataset.fields)
                head = ["line", KEY]
                await uow.imports.copy_staged(
                    item.id, chunk_no, [*head, *(f.name for f in dataset.fields)], staged
                )
                await uow.imports.copy_staged_text(
                    item.id, chunk_no, [*head, *columns], staged_copy
                )
                await uow.imports.copy_row_errors(errors)
                locked.rows_accepted, locked.rows_rejected = accepted, rejected
                locked.keys_sorted = keys_sorted
                await uow.imports.mark_chunk_done(locked)
                now = utcnow()
                # Take the operation row lock first, so the totals below see every chunk
                # committed before this one.
                await uow.imports.touch_operation(operation_id, None, now)
                totals = await uow.imports.chunk_totals(item.id)
                progress = {
                    "done": totals.rows_done,
                    "total": item.rows_total,
                    "message": f"{totals.done} of {totals.chunks} chunks done",
                }
                await uow.imports.touch_operation(operation_id, progress, now)
                await uow.commit()
                if sink is not None:
                    with contextlib.suppress(Exception):
                        sink({**progress, "operation": op.name})
                return {"chunk": chunk_no, "rows_accepted": accepted, "rows_rejected": rejected}
        if cancel:
            await self._settle_cancel(operation_id)
            return {"cancelled": True}
        return {"skipped": f"operation is {state}"}

    async def _validate_rows(
        self,
        operation_id: uuid.UUID,
        item: Import,
        chunk_no: int,
        validator: parsing.RowValidator,
        fields: Sequence[FieldDef],
        rows: Iterator[tuple[int, Any]],
        staged: list[tuple[Any, ...]],
        errors: list[tuple[Any, ...]],
    ) -> tuple[int, int] | dict[str, Any]:
        """Validates a chunk's rows into ``staged``/``errors``; heartbeats between batches.

        ``staged`` gets ``(line, key, value of each field)`` tuples, the values in
        their column's Python type (COPYed into the typed staging table).

        Returns:
            ``(accepted, rejected)``, or a note if the operation was cancelled or taken away.
        """
        accepted = rejected = 0
        last_beat = time.monotonic()
        typed = [(f.name, parsing.column_value_of(f)) for f in fields]
        for count, (line, raw) in enumerate(rows, 1):
            result = validator.record(item.format, line, raw)
            if isinstance(result, tuple):
                record = result[1]
                staged.append(
                    (
                        line,
                        result[0],
                        *(to_column(record.get(name)) for name, to_column in typed),
                    )
                )
                accepted += 1
            else:
                rejected += 1
                errors.extend(
                    (item.id, chunk_no, e.line, e.field, e.reason, e.raw_value) for e in result
                )
            if count % HEARTBEAT_ROWS == 0 and (
                time.monotonic() - last_beat >= self._progress_interval
            ):
                last_beat = time.monotonic()
                async with self._uow() as uow:
                    state = await uow.imports.touch_operation(operation_id, None, utcnow())
                    await uow.commit()
                if state == State.CANCELLING:
                    await self._settle_cancel(operation_id)
                    return {"cancelled": True}
                if state is None:
                    return {"skipped": "operation is no longer running"}
        return accepted, rejected

    # ---- workflow: finalize ------------------------------------------------------------

    async def finalize(self, operation_id: uuid.UUID, attempt: int) -> dict[str, Any]:
        """Chord callback: merges the staged rows once every chunk is DONE.

        A callback of an older attempt, or one fired before every chunk is DONE in the
        database, does nothing (the current attempt's callback, or the sweeper's re-dispatch
        of ``imports.run``, finalizes).

        Args:
            operation_id: The operation.
            attempt: Attempt of the run that launched the chord.

        Returns:
            The operation's response, or a note.
        """
        async with self._uow() as uow:
            op = await uow.operations.get(operation_id)
            item = await uow.imports.get_import_by_operation(operation_id)
            pending = await uow.imports.pending_chunks(item.id) if item is not None else []
        if op is None or item is None:
            return {"skipped": "operation or import no longer exists"}
        if op.done:
            if op.state != State.SUCCEEDED:
                await self._discard_staged(item.id)
            return {"skipped": f"operation is {op.state}"}
        if op.state == State.CANCELLING:
            # Once a chunk is merged the import completes (cancel is best effort).
            return await self._settle_cancel(operation_id) or {"cancelled": True}
        if op.attempt != attempt:
            return {"skipped": f"attempt {attempt} was superseded by {op.attempt}"}
        if pending:
            return {"waiting": len(pending)}
        execution = Execution(operation=op, attempt=attempt, _runner=self._runner)
        return await self._finalize(execution)

    async def _finalize(self, execution: Execution) -> dict[str, Any]:
        op_id = execution.id
        totals = await self._totals_by_operation(op_id)
        if (
            totals is not None
            and totals.rows_accepted == 0
            and totals.done == totals.chunks
            and totals.merged == 0
        ):
            await self._fail(
                op_id,
                OperationError(
                    status="FAILED_PRECONDITION",
                    message=(
                        f"no row of the file was valid ({totals.rows_rejected} rejected); see"
                        " the errors download for each row's problem, fix the file and import"
                        " it again"
                    ),
                ),
                attempt=execution.attempt,
            )
            return {"failed": "no valid row"}

        async with self._keepalive(op_id, None):
            await self._merge_chunks(execution)

        async def apply(uow: UnitOfWork, op: Operation) -> dict[str, Any]:
            repo = cast(ImportsUoW, uow).imports
            item = await repo.get_import_by_operation(op.id)
            if item is None:
                raise PermanentError("the import was deleted while it ran", reason="IMPORT_GONE")
            item = await repo.get_import(item.id, for_update=True)
            assert item is not None
            sums = await repo.chunk_totals(item.id)
            if sums.merged != sums.chunks:
                raise TransientError(f"{sums.chunks - sums.merged} chunks are not merged yet")
            now = utcnow()
            # The dataset's row lock serializes the record_count increments.
            dataset = await repo.get_dataset(item.tenant, item.dataset_id, for_update=True)
            if dataset is None:
                raise PermanentError("the dataset was deleted while the import ran")
            await repo.drop_staging(item.id)
            await repo.add_record_count(item.dataset_id, sums.rows_inserted)
            item.state = ImportState.SUCCEEDED
            item.rows_total = sums.rows_done
            item.rows_accepted = sums.rows_accepted
            item.rows_rejected = sums.rows_rejected
            item.complete_time = now
            await repo.save_import(item)
            event = events.import_completed(item, op.name, now, dataset.display_name)
            await uow.outbox.add(event_message(event, correlation_id=op.correlation_id))
            return {
                "import": item.name,
                "rows_total": item.rows_total,
                "rows_accepted": item.rows_accepted,
                "rows_rejected": item.rows_rejected,
                "errors_uri": item.errors_uri,
            }

        if totals is not None:
            # finish() records the execution's progress as complete.
            execution._progress = Progress(
                done=totals.rows_done, total=totals.rows_done, message="imported"
            )
        op = await self._runner.finish(execution, apply)
        await self._drop_plain_copy(op_id)
        return op.response or {}

    async def _merge_chunks(self, execution: Execution) -> None:
        """Merges the DONE chunks into the records table, several at a time.

        Each chunk merges in its own transaction on its own connection (so on its own
        PostgreSQL backend), fenced by the operation's attempt and the chunk's row lock, and
        is marked MERGED with what it inserted in that same transaction: a merge is applied
        once, and a resumed finalize merges only the chunks left. The line-order guard of the
        upsert keeps "last line wins" whatever order the chunks commit in.

        Raises:
            PermanentError: If rows of the import were lost or staged by an older version.
            LeaseLost: If another attempt owns the operation.
        """
        async with self._uow() as uow:
            item = await uow.imports.get_import_by_operation(execution.id)
            if item is None:
                raise PermanentError("the import was deleted while it ran", reason="IMPORT_GONE")
            dataset = await uow.imports.get_dataset_by_id(item.dataset_id)
            if dataset is None:
                raise PermanentError("the dataset was deleted while the import ran")
            if await uow.imports.has_legacy_staging(item.id):
                raise PermanentError(
                    "rows of this import were staged by an older version of Conveyor; retry"
                    " the import",
                    reason="STAGED_BY_OLDER_VERSION",
                )
            todo = await uow.imports.chunks_to_merge(item.id)
            # Worth trying plain INSERTs only into an empty dataset (a conflict falls back).
            plain = dataset.record_count == 0 and not await uow.imports.has_records(dataset.id)
        if not todo:
            return
        gate = asyncio.Semaphore(max(1, self.policy.merge_concurrency))
        now = utcnow()

        async def merge(chunk_no: int) -> None:
            async with gate:
                await self._merge_chunk(execution, item, dataset, chunk_no, now, plain=plain)

        results = await asyncio.gather(*(merge(n) for n in todo), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _merge_chunk(
        self,
        execution: Execution,
        item: Import,
        dataset: Dataset,
        chunk_no: int,
        now: dt.datetime,
        *,
        plain: bool,
    ) -> None:
        """Merges one chunk in one transaction (see :meth:`_merge_chunks`)."""
        async with self._uow() as uow:
            repo = uow.imports
            # FOR KEY SHARE: a cancel or another attempt's finish waits for this merge.
            shared = await repo.share_operation(execution.id)
            if shared is None or shared[1] != execution.attempt:
                raise LeaseLost(
                    f"operation {execution.id}: attempt {execution.attempt} no longer owns it"
                )
            if shared[0] not in (State.RUNNING, State.CANCELLING):
                raise LeaseLost(f"operation {execution.id} is {shared[0]}")
            chunk = await repo.get_chunk(item.id, chunk_no, for_update=True)
            if chunk is None or chunk.state != "DONE":
                return
            # UNLOGGED: a PostgreSQL crash empties the table while the chunk stays DONE.
            # Never merge part of a chunk: fail the import (a :retry starts over).
            staged = await repo.staged_count(item.id, chunk_no)
            if staged != chunk.rows_accepted:
                raise PermanentError(
                    f"{chunk.rows_accepted - staged} of the import's validated rows were lost"
                    " (PostgreSQL restarted while it ran?); retry the import",
                    reason="STAGED_ROWS_LOST",
                )
            inserted = (
                await repo.merge_chunk(
                    item.id, chunk_no, dataset, now, plain=plain, keys_sorted=chunk.keys_sorted
                )
                if staged
                else 0
            )
            await repo.mark_chunk_merged(chunk, inserted)
            await repo.drop_chunk_staging(item.id, chunk_no)
            await uow.commit()

    async def _drop_plain_copy(self, operation_id: uuid.UUID) -> None:
        """Removes the decompressed copy of a gzip upload once the import succeeded (the
        original stays for the dataset's life).
        """
        async with self._uow() as uow:
            item = await uow.imports.get_import_by_operation(operation_id)
            _, plain = await uow.imports.import_plan(item.id) if item else ([], None)
        if (
            item is not None
            and item.file_path
            and plain
            and plain != self.store.path(item.file_path)
        ):
            with contextlib.suppress(OSError):
                os.remove(plain)

    async def _totals_by_operation(self, operation_id: uuid.UUID) -> Any:
        async with self._uow() as uow:
            item = await uow.imports.get_import_by_operation(operation_id)
            return await uow.imports.chunk_totals(item.id) if item is not None else None

    # ---- endings -----------------------------------------------------------------------

    async def fail_import(self, operation_id: uuid.UUID, error: OperationError) -> None:
        """Ends an import as FAILED (file error, retries exhausted) and emits ImportFailed.

        Args:
            operation_id: The operation.
            error: What happened.
        """
        await self._fail(operation_id, error)

    async def _fail(
        self, operation_id: uuid.UUID, error: OperationError, *, attempt: int | None = None
    ) -> None:
        async with self._uow() as uow:
            op = await uow.operations.get(operation_id, for_update=True)
            if op is None or op.done or (attempt is not None and op.attempt != attempt):
                return
            now = utcnow()
            op.fail(now, error)
            await uow.operations.save(op)
            item = await uow.imports.get_import_by_operation(operation_id)
            if item is not None:
                totals = await uow.imports.chunk_totals(item.id)
                item.state = ImportState.FAILED
                item.error = error.message
                item.complete_time = now
                if totals.chunks:
                    item.rows_accepted = 0
                    item.rows_rejected = totals.rows_rejected
                await uow.imports.save_import(item)
                await uow.imports.delete_staged(item.id)
                dataset = await uow.imports.get_dataset(item.tenant, item.dataset_id)
                event = events.import_failed(
                    item, op.name, error.message, dataset.display_name if dataset else None
                )
                await uow.outbox.add(event_message(event, correlation_id=op.correlation_id))
            await uow.commit()

    async def _settle_cancel(self, operation_id: uuid.UUID) -> dict[str, Any] | None:
        """Ends a cancel request: staged rows deleted, import and operation CANCELLED.

        Once a chunk of the import is merged (its rows are in the records table) the cancel
        comes too late: the import completes instead (AIP-151 cancellation is best effort).

        Returns:
            The operation's response if the import completed instead, else ``None``.
        """
        async with self._uow() as uow:
            op = await uow.operations.get(operation_id, for_update=True)
            if op is None:
                return None
            item = await uow.imports.get_import_by_operation(operation_id)
            merging = (
                op.state == State.CANCELLING
                and item is not None
                and (await uow.imports.chunk_totals(item.id)).merged > 0
            )
        if merging and op is not None:
            execution = Execution(operation=op, attempt=op.attempt, _runner=self._runner)
            try:
                return await self._finalize(execution)
            except LeaseLost as exc:  # another finalize completed it
                return {"skipped": str(exc)}
        async with self._uow() as uow:
            op = await uow.operations.get(operation_id, for_update=True)
            if op is None:
                return None
            if op.state == State.CANCELLING:
                op.mark_cancelled(utcnow())
                await uow.operations.save(op)
            item = await uow.imports.get_import_by_operation(operation_id)
            if item is not None and op.state == State.CANCELLED:
                await uow.imports.delete_staged(item.id)
                if item.state not in TERMINAL:
                    item.state = ImportState.CANCELLED
                    item.complete_time = utcnow()
                    await uow.imports.save_import(item)
            await uow.commit()
        return None

    async def _discard_staged(self, import_id: uuid.UUID) -> None:
        """Drops staged rows of an import that ended without success (late chunk writes)."""
        async with self._uow() as uow:
            item = await uow.imports.get_import(import_id)
            if item is not None:
                await uow.imports.delete_staged(import_id)
                if item.state not in TERMINAL:
                    op = await uow.operations.get(item.operation_id)
                    if op is not None and op.done:
                        item.state = _state_of(op, item)
                        item.complete_time = op.end_time
                        await uow.imports.save_import(item)
            await uow.commit()


def _state_of(op: Operation, item: Import) -> str:
    mapping = {
        State.PENDING: ImportState.PENDING,
        State.RUNNING: ImportState.RUNNING,
        State.CANCELLING: ImportState.RUNNING,
        State.SUCCEEDED: ImportState.SUCCEEDED,
        State.FAILED: ImportState.FAILED,
        State.CANCELLED: ImportState.CANCELLED,
    }
    return str(mapping.get(op.state, item.state))
