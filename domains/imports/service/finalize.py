"""Workflow step 3 (``imports.finalize``): merge the staged rows and complete the import."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import uuid
from typing import Any, cast

from domains.imports import events
from domains.imports.model import Dataset, Import, ImportState
from domains.imports.service.base import ServiceBase
from domains.imports.unit_of_work import ImportsUoW
from domains.operations.execution import Cancelled, Execution, LeaseLost
from domains.operations.model import Operation, OperationError, Progress, State
from domains.operations.unit_of_work import UnitOfWork
from domains.shared.clock import utcnow
from domains.shared.errors import PermanentError, TransientError
from domains.shared.events import event_message


class FinalizePart(ServiceBase):
    """The finalize step of :class:`~domains.imports.service.ImportsService`."""

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
        try:
            return await self._finalize(execution)
        except Cancelled:
            # Asked to stop before the load table went in (see _merge_load).
            return await self._settle_cancel(operation_id) or {"cancelled": True}

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
            load = await uow.imports.has_load_table(item.id)
            todo = await uow.imports.chunks_to_merge(item.id)
            # Worth trying plain INSERTs only into an empty dataset (a conflict falls back).
            plain = dataset.record_count == 0 and not await uow.imports.has_records(dataset.id)
        if not todo:
            return
        if load:
            await self._merge_load(execution, item, dataset)
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

    @staticmethod
    async def _owned(uow: ImportsUoW, execution: Execution) -> str:
        """The operation's state, once this transaction holds it ``FOR KEY SHARE`` (a cancel or
        another attempt's finish waits for it) and the attempt is still ``execution``'s.

        Raises:
            LeaseLost: If the operation is gone or another attempt owns it.
        """
        shared = await uow.imports.share_operation(execution.id)
        if shared is None or shared[1] != execution.attempt:
            raise LeaseLost(
                f"operation {execution.id}: attempt {execution.attempt} no longer owns it"
            )
        return shared[0]

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
            shared = await self._owned(uow, execution)
            if shared not in (State.RUNNING, State.CANCELLING):
                raise LeaseLost(f"operation {execution.id} is {shared}")
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

    async def _merge_load(self, execution: Execution, item: Import, dataset: Dataset) -> None:
        """Puts an import's load table into the records table, in one transaction.

        The chunks COPYed their rows into the load table (``ImportsPolicy.direct_load``).
        If no key repeats and the dataset holds no records, the table is swapped in for the
        records table (no row is written again); otherwise it is merged by key like staged
        chunks (``DISTINCT ON`` and the line-order guard: the last line wins). Every chunk
        is marked MERGED in that transaction, fenced by the attempt, under the import's row
        lock: applied once, and a finalize that resumes after a kill finds it done.

        Raises:
            Cancelled: If a cancel came first (nothing of the import reached the records).
            LeaseLost: If another attempt owns the operation.
        """
        async with self._uow() as uow:
            repo = uow.imports
            shared = await self._owned(uow, execution)
            if shared == State.CANCELLING:
                raise Cancelled()
            if shared != State.RUNNING:
                raise LeaseLost(f"operation {execution.id} is {shared}")
            # One swap or merge at a time (a duplicate finalize waits here, then finds it done).
            await repo.get_import(item.id, for_update=True)
            if not await repo.has_load_table(item.id):
                return
            totals = await repo.chunk_totals(item.id)
            if totals.done != totals.chunks or totals.merged:
                raise TransientError(f"{totals.chunks - totals.done} chunks are not done yet")
            # No count of the loaded rows (the per-chunk path counts its UNLOGGED tables): the
            # load table is LOGGED, and each chunk's COPY commits with its DONE mark.
            inserted: int | None = None
            if not await repo.swap_in_load_table(item.id, dataset):
                plain = not await repo.has_records(dataset.id)
                inserted = await repo.merge_load(item.id, dataset, utcnow(), plain=plain)
            await repo.mark_loaded_chunks_merged(item.id, inserted)
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
