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
from domains.imports.repository import ImportContext
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

        async def load(uow: ImportsUoW) -> tuple[Operation | None, ImportContext | None]:
            # Two statements in autocommit: the operation; the import and its chunks' state.
            op = await uow.operations.get(operation_id)
            return op, await uow.imports.import_context(operation_id)

        op, context = await self._uow().autocommit(load, by_key=True)
        if op is None or context is None:
            return {"skipped": "operation or import no longer exists"}
        if op.done:
            if op.state != State.SUCCEEDED:
                await self._discard_staged(context.item.id)
            return {"skipped": f"operation is {op.state}"}
        if op.state == State.CANCELLING:
            # Once a chunk is merged the import completes (cancel is best effort).
            return await self._settle_cancel(operation_id) or {"cancelled": True}
        if op.attempt != attempt:
            return {"skipped": f"attempt {attempt} was superseded by {op.attempt}"}
        if context.pending:
            return {"waiting": len(context.pending)}
        execution = Execution(operation=op, attempt=attempt, _runner=self._runner)
        try:
            return await self._finalize(execution, context)
        except Cancelled:
            # Asked to stop before the load table went in (see _merge_load).
            return await self._settle_cancel(operation_id) or {"cancelled": True}

    async def _finalize(
        self, execution: Execution, context: ImportContext | None = None
    ) -> dict[str, Any]:
        """Merges the validated chunks and completes the import (see :meth:`finalize`).

        Args:
            execution: The attempt.
            context: The import as just read (:meth:`SqlImportsRepository.import_context`);
                read here if not given.

        Returns:
            The operation's response, or a note.
        """
        op_id = execution.id
        if context is None:
            context = await self._uow().autocommit(
                lambda uow: uow.imports.import_context(op_id), by_key=True
            )
        totals = context.totals if context is not None else None
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
            await self._merge_chunks(execution, context)

        async def apply(uow: UnitOfWork, op: Operation) -> dict[str, Any]:
            # finish() holds the operation FOR UPDATE and checked the attempt (fencing token).
            repo = cast(ImportsUoW, uow).imports
            found = await repo.lock_import_with_totals(op.id)
            if found is None:
                raise PermanentError("the import was deleted while it ran", reason="IMPORT_GONE")
            item, sums = found
            if sums.merged != sums.chunks:
                raise TransientError(f"{sums.chunks - sums.merged} chunks are not merged yet")
            now = utcnow()
            item.state = ImportState.SUCCEEDED
            item.rows_total = sums.rows_done
            item.rows_accepted = sums.rows_accepted
            item.rows_rejected = sums.rows_rejected
            item.complete_time = now
            # The import written and the dataset's record_count grown in one statement (the
            # dataset's row lock serializes the increments); nothing if the dataset is gone.
            display_name = await repo.complete_import(item, sums.rows_inserted)
            if display_name is None:
                raise PermanentError("the dataset was deleted while the import ran")
            await repo.drop_staging(item.id)
            event = events.import_completed(item, op.name, now, display_name)
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
        if context is not None:
            self._drop_plain_copy(context)
        return op.response or {}

    async def _merge_chunks(self, execution: Execution, context: ImportContext | None) -> None:
        """Merges the DONE chunks into the records table, several at a time.

        Each chunk merges in its own transaction on its own connection (so on its own
        PostgreSQL backend), fenced by the operation's attempt and the chunk's row lock, and
        is marked MERGED with what it inserted in that same transaction: a merge is applied
        once, and a resumed finalize merges only the chunks left. The line-order guard of the
        upsert keeps "last line wins" whatever order the chunks commit in.

        What is merged comes from ``context`` (read in one statement before the merges): the
        merges themselves lock and re-check each chunk.

        Raises:
            PermanentError: If rows of the import were lost or staged by an older version.
            LeaseLost: If another attempt owns the operation.
        """
        if context is None:
            raise PermanentError("the import was deleted while it ran", reason="IMPORT_GONE")
        item, dataset = context.item, context.dataset
        if dataset is None:
            raise PermanentError("the dataset was deleted while the import ran")
        if context.legacy:
            raise PermanentError(
                "rows of this import were staged by an older version of Conveyor; retry the import",
                reason="STAGED_BY_OLDER_VERSION",
            )
        todo = context.todo
        if not todo:
            return
        if context.load:
            await self._merge_load(execution, item, dataset)
            return
        # Worth trying plain INSERTs only into an empty dataset (a conflict falls back).
        plain = dataset.record_count == 0 and not await self._uow().autocommit(
            lambda uow: uow.imports.has_records(dataset.id)
        )
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
            load, totals = await repo.load_state(item.id)
            if not load:
                return
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

    def _drop_plain_copy(self, context: ImportContext) -> None:
        """Removes the decompressed copy of a gzip upload once the import succeeded (the
        original stays for the dataset's life). File and copy are the split's: ``context``
        read them.
        """
        item, plain = context.item, context.plain_path
        if item.file_path and plain and plain != self.store.path(item.file_path):
            with contextlib.suppress(OSError):
                os.remove(plain)
