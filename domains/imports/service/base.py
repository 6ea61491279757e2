"""Shared state and helpers of the imports service parts: constructor, policy, constants."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from domains.imports import events, parsing
from domains.imports.model import TERMINAL, Dataset, Import, ImportState
from domains.imports.repository import ImportContext
from domains.imports.storage import FileStore, SourceFetcher
from domains.imports.unit_of_work import ImportsUoW
from domains.operations.execution import Execution, OperationRunner, ProgressSink
from domains.operations.model import Operation, OperationError, State
from domains.shared.clock import utcnow
from domains.shared.errors import NotFound
from domains.shared.events import event_message
from domains.shared.ssrf import UrlGuard

# The name the logger had before the service became a package.
log = logging.getLogger("domains.imports.service")

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
        direct_load: Into a dataset without records, chunks COPY their rows into one
            import-wide load table shaped like the records table, and the finalize swaps it
            in when no key repeats (else merges it): the rows are written once, not staged
            and then merged. Off: per-chunk staging tables and merges, as into a dataset
            with records.
        inline_single_chunk: A one-chunk import's ``imports.run`` processes the chunk and
            finalizes in the same task: no chord, no two more task hops (most of a small
            import's time). Off: every import fans out (tests that drive each step).
    """

    chunk_rows: int = 50_000
    merge_concurrency: int = 2
    lease_seconds: float = 30.0
    pending_deadline_seconds: float = 300.0
    max_file_bytes: int = 1024**3
    max_cell_bytes: int = parsing.MAX_CELL_BYTES
    max_row_bytes: int = parsing.MAX_ROW_BYTES
    direct_load: bool = True
    inline_single_chunk: bool = True


def _not_found_dataset(dataset_id: uuid.UUID) -> NotFound:
    return NotFound(f"datasets/{dataset_id} does not exist", reason="DATASET_NOT_FOUND")


class ServiceBase:
    """Constructor and state shared by the parts of the imports service, and the helpers that
    several parts call.
    """

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

    # ---- helpers shared by several sections ---------------------------------------------

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

    if TYPE_CHECKING:
        # Methods of one part that another part calls, declared for the type checker only.
        # No docstring, so that the reference docs do not list it: DatasetsPart documents it.
        async def get_dataset(self, tenant: str, dataset_id: uuid.UUID) -> Dataset: ...  # noqa: D102

        async def process_chunk(  # noqa: D102
            self,
            operation_id: uuid.UUID,
            attempt: int,
            chunk_no: int,
            *,
            sink: ProgressSink | None = None,
        ) -> dict[str, Any]: ...

        async def _process_chunk(
            self, op: Operation, context: ImportContext, *, sink: ProgressSink | None
        ) -> dict[str, Any]: ...

        async def _finalize(
            self, execution: Execution, context: ImportContext | None = None
        ) -> dict[str, Any]: ...

        async def _settle_cancel(self, operation_id: uuid.UUID) -> dict[str, Any] | None: ...


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
