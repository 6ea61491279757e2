"""Endings of an import other than success: failure and cancel."""

from __future__ import annotations

import uuid
from typing import Any

from domains.imports.model import TERMINAL, ImportState
from domains.imports.service.base import ServiceBase
from domains.operations.execution import Execution, LeaseLost
from domains.operations.model import OperationError, State
from domains.shared.clock import utcnow


class EndingsPart(ServiceBase):
    """Failure and cancel of :class:`~domains.imports.service.ImportsService`."""

    # ---- endings -----------------------------------------------------------------------

    async def fail_import(self, operation_id: uuid.UUID, error: OperationError) -> None:
        """Ends an import as FAILED (file error, retries exhausted) and emits ImportFailed.

        Args:
            operation_id: The operation.
            error: What happened.
        """
        await self._fail(operation_id, error)

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
