"""Workflow step 2 (``imports.process_chunk``): validate a chunk and stage its rows."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from domains.imports import parsing
from domains.imports.columnar import ColumnarValidator, read_one_row_per_line
from domains.imports.model import FieldDef, Import
from domains.imports.repository import ImportContext
from domains.imports.service.base import CHUNK_VALIDATED, HEARTBEAT_ROWS, ServiceBase
from domains.imports.tables import KEY
from domains.imports.unit_of_work import ImportsUoW
from domains.operations.execution import ProgressSink
from domains.operations.model import Operation, State
from domains.shared.clock import utcnow


class ChunksPart(ServiceBase):
    """The chunk step of :class:`~domains.imports.service.ImportsService`."""

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

        async def load(uow: ImportsUoW) -> tuple[Operation | None, ImportContext | None]:
            # Two statements in autocommit: the operation; the import, dataset, plan, chunk.
            op = await uow.operations.get(operation_id)
            return op, await uow.imports.chunk_context(operation_id, chunk_no)

        op, context = await self._uow().autocommit(load, by_key=True)
        if (
            op is None
            or context is None
            or context.chunk is None
            or context.dataset is None
            or context.plain_path is None
        ):
            return {"skipped": "import, chunk or dataset no longer exists"}
        if op.done:
            if op.state != State.SUCCEEDED:
                await self._discard_staged(context.item.id)
            return {"skipped": f"operation is {op.state}"}
        if op.state == State.CANCELLING:
            await self._settle_cancel(operation_id)
            return {"cancelled": True}
        return await self._process_chunk(op, context, sink=sink)

    async def _process_chunk(
        self, op: Operation, context: ImportContext, *, sink: ProgressSink | None
    ) -> dict[str, Any]:
        """Validates ``context.chunk`` and stages its rows (see :meth:`process_chunk`).

        Args:
            op: The import's operation, as read before (its state is checked again, under
                its lock, before anything is written).
            context: The import, its dataset, plan and the chunk.
            sink: Progress mirror.

        Returns:
            What happened: counts, or a skip/cancel note.
        """
        operation_id = op.id
        item, dataset, chunk = context.item, context.dataset, context.chunk
        columns, plain = context.columns, context.plain_path
        if chunk is None or dataset is None or plain is None:
            return {"skipped": "import, chunk or dataset no longer exists"}
        chunk_no = chunk.chunk_no
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
            # The operation FOR KEY SHARE (a cancel or finish waits for this write), with the
            # commit relaxed (see share_operation); then the chunk's row lock, with whether
            # the import loads directly.
            shared = await uow.imports.share_operation(operation_id, relax_commit=True)
            if shared is None or shared[0] != State.RUNNING:
                state = shared[0] if shared else None
                cancel = state == State.CANCELLING
            else:
                cancel = False
                locked, direct = await uow.imports.lock_chunk(item.id, chunk_no)
                if locked is None or locked.state in CHUNK_VALIDATED:
                    return {"skipped": f"chunk {chunk_no} already done"}
                head = ["line", KEY]
                if direct:
                    # Straight into the import's load table (ImportsPolicy.direct_load).
                    await uow.imports.copy_loaded(
                        item.id, [*head, *(f.name for f in dataset.fields)], rows=staged
                    )
                    await uow.imports.copy_loaded(item.id, [*head, *columns], payload=staged_copy)
                else:
                    await uow.imports.create_staging(item.id, chunk_no, dataset.fields)
                    await uow.imports.copy_staged(
                        item.id, chunk_no, [*head, *(f.name for f in dataset.fields)], staged
                    )
                    await uow.imports.copy_staged_text(
                        item.id, chunk_no, [*head, *columns], staged_copy
                    )
                await uow.imports.copy_row_errors(errors)
                locked.rows_accepted, locked.rows_rejected = accepted, rejected
                locked.keys_sorted = keys_sorted
                now = utcnow()
                progress: dict[str, Any] | None = None
                if item.chunks_total == 1:
                    # The only chunk: the import's progress is this chunk's, no sums to read.
                    progress = {
                        "done": locked.rows,
                        "total": item.rows_total,
                        "message": "1 of 1 chunks done",
                    }
                # DONE, and the operation's row lock taken (its heartbeat), in one statement.
                await uow.imports.complete_chunk(locked, operation_id, progress, now)
                if progress is None:
                    # Summed after the lock: this statement sees every chunk committed before.
                    progress = await uow.imports.touch_with_totals(
                        operation_id, item.id, item.rows_total, now
                    )
                await uow.commit()
                if sink is not None and progress is not None:
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
