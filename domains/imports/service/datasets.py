"""Datasets: create, read, list, change, delete, and the retention of import files."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Sequence

from domains.imports.model import Dataset, FieldDef, validate_schema
from domains.imports.service.base import ServiceBase, _not_found_dataset
from domains.shared import idempotency
from domains.shared.clock import utcnow
from domains.shared.errors import FailedPrecondition
from domains.shared.ids import new_id
from domains.shared.retention import purge_batches


class DatasetsPart(ServiceBase):
    """Dataset use cases of :class:`~domains.imports.service.ImportsService`."""

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
