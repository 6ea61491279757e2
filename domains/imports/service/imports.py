"""Imports: create (and dispatch), read, list, and the row errors download."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import cast

from domains.imports import parsing
from domains.imports.model import TERMINAL, Import, ImportState
from domains.imports.service.base import (
    DOMAIN,
    RUN_TASK,
    ServiceBase,
    _not_found_dataset,
    _state_of,
)
from domains.imports.storage import StoredFile
from domains.imports.unit_of_work import ImportsUoW
from domains.operations import service as operations_service
from domains.operations.model import DispatchSpec, Operation
from domains.operations.unit_of_work import UnitOfWork
from domains.shared.errors import InvalidArgument, NotFound
from domains.shared.ids import new_id


class ImportsPart(ServiceBase):
    """Import use cases of :class:`~domains.imports.service.ImportsService`."""

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
