"""Records: list and read the rows imports merged into a dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domains.imports.model import Dataset
from domains.imports.service.base import ServiceBase
from domains.shared.errors import NotFound
from domains.shared.query import Condition


class RecordsPart(ServiceBase):
    """Record reads of :class:`~domains.imports.service.ImportsService`."""

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
