"""Workflow step 1 (``imports.run``): claim, fetch, split the file into chunks."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from typing import Any

from domains.imports import parsing
from domains.imports.model import Chunk, ImportState
from domains.imports.repository import ImportContext
from domains.imports.service.base import CHUNK_VALIDATED, ServiceBase
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
        # PENDING -> RUNNING and the import with its dataset: one statement in autocommit.
        context = await self._uow().autocommit(
            lambda uow: uow.imports.start_import(op_id), by_key=True
        )
        if context is not None and context.item.state == ImportState.FAILED:
            context = await self._restart(op_id)
        if context is None or context.dataset is None:
            raise PermanentError(
                "the import or its dataset was deleted before it ran", reason="IMPORT_GONE"
            )
        item = context.item
        if item.chunks_total is None:
            async with self._keepalive(op_id, "reading the file"):
                context = await self._split(context)
            item = context.item
        if context.chunk is not None:
            # This run recorded the split: every chunk is pending, no row is done yet.
            pending, rows_done = list(range(item.chunks_total or 0)), 0
        else:
            # Resumed (or another run split it): the chunks as they stand, one statement.
            chunks = await self._uow().autocommit(
                lambda uow: uow.imports.chunks(item.id), by_key=True
            )
            pending = [c.chunk_no for c in chunks if c.state not in CHUNK_VALIDATED]
            rows_done = sum(c.rows for c in chunks if c.state in CHUNK_VALIDATED)
            context.chunk = next((c for c in chunks if c.state not in CHUNK_VALIDATED), None)
        await execution.checkpoint(rows_done, item.rows_total, "importing")
        if not pending:
            return await self._finalize(execution)
        if item.chunks_total == 1 and self.policy.inline_single_chunk:
            # A one-chunk import (up to ``chunk_rows`` rows) has nothing to fan out: the chunk
            # and the finalize run here, which spares two task hops and the chord's counting
            # (most of a small import's time). Same steps, same fencing as the fan-out; the
            # chunk starts from what this run loaded (no second read).
            # No progress mirror for the chunk: the finish follows at once in this task, and
            # its outcome replaces the mirror (which cost two Redis round trips and an event).
            async with self._keepalive(op_id, "importing"):
                outcome = await self._process_chunk(execution.operation, context, sink=None)
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

    async def _restart(self, operation_id: uuid.UUID) -> ImportContext | None:
        """Starts a failed import over (a :retry): its chunks, staged rows and row errors are
        dropped so that they are not counted twice, and it is RUNNING again.
        """
        async with self._uow() as uow:
            item = await uow.imports.get_import_by_operation(operation_id)
            if item is None:
                return None
            dataset = await uow.imports.get_dataset_by_id(item.dataset_id)
            if item.state == ImportState.FAILED:
                await uow.imports.reset_import(item.id)
                item.chunks_total = item.rows_total = None
                item.rows_accepted = item.rows_rejected = None
                item.error = item.complete_time = None
            if item.state in (ImportState.PENDING, ImportState.FAILED):
                item.state = ImportState.RUNNING
                await uow.imports.save_import(item)
                await uow.commit()
            columns, plain = await uow.imports.import_plan(item.id)
        return ImportContext(item=item, dataset=dataset, columns=columns, plain_path=plain)

    async def _split(self, context: ImportContext) -> ImportContext:
        """Splits the file into chunks and records them with the import's counts.

        Returns:
            The import as recorded; its ``chunk`` is the first chunk if this run recorded the
            split (``None`` if another run had: then it is read again).
        """
        item, dataset = context.item, context.dataset
        assert dataset is not None
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
        chunks = [
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
        split = dataclasses.replace(
            item, format=fmt, rows_total=plan.rows_total, chunks_total=len(chunks)
        )
        async with self._uow() as uow:
            # One statement: the import's counts (only if no split is recorded yet: its row
            # lock settles concurrent runs), the chunks, and whether the dataset holds records.
            won, has_records = await uow.imports.record_split(
                split,
                chunks,
                columns=plan.columns,
                plain_path=plain,
                probe_records=self.policy.direct_load,
            )
            if won and self.policy.direct_load and not has_records:
                # Chunks COPY straight into a table the finalize can swap in (see
                # ImportsPolicy.direct_load); created with the chunks, dropped with them.
                await uow.imports.create_load_table(item.id, dataset.fields)
            await uow.commit()
        if not won:
            found = await self._uow().autocommit(
                lambda uow: uow.imports.import_context(item.operation_id), by_key=True
            )
            if found is None:
                raise PermanentError("the import was deleted while it ran", reason="IMPORT_GONE")
            found.dataset = found.dataset or dataset
            return found
        return ImportContext(
            item=split,
            dataset=dataset,
            columns=list(plan.columns),
            plain_path=plain,
            chunk=chunks[0] if chunks else None,
            load=self.policy.direct_load and not has_records,
        )
