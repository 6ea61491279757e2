"""Workflow step 1 (``imports.run``): claim, fetch, split the file into chunks."""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

from domains.imports import parsing
from domains.imports.model import Chunk, Dataset, Import, ImportState
from domains.imports.service.base import ServiceBase
from domains.operations.execution import Cancelled, Execution, ProgressSink
from domains.shared.errors import PermanentError, TransientError


class RunPart(ServiceBase):
    """The run step of :class:`~domains.imports.service.ImportsService`."""

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
            return await self._run(execution, sink)
        except Cancelled:
            await self._settle_cancel(operation_id)
            return {"cancelled": True}
        except TransientError as exc:
            await self._runner.release(execution, exc.message)
            raise

    async def _run(self, execution: Execution, sink: ProgressSink | None) -> dict[str, Any]:
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
        if item.chunks_total == 1 and self.policy.inline_single_chunk:
            # A one-chunk import (up to ``chunk_rows`` rows) has nothing to fan out: the chunk
            # and the finalize run here, which spares two task hops and the chord's counting
            # (most of a small import's time). Same steps, same fencing as the fan-out.
            async with self._keepalive(op_id, "importing"):
                outcome = await self.process_chunk(op_id, execution.attempt, pending[0], sink=sink)
            if outcome.get("cancelled"):
                return {"cancelled": True}
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
            if self.policy.direct_load and not await uow.imports.has_records(dataset.id):
                # Chunks COPY straight into a table the finalize can swap in (see
                # ImportsPolicy.direct_load); created with the chunks, dropped with them.
                await uow.imports.create_load_table(item.id, dataset.fields)
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
