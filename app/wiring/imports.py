"""Wiring of the imports domain: datasets, imports and records."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from fastapi import APIRouter

    from app.container import Container
    from app.workflows import StartContext, Workflow
    from domains.operations.model import Operation
    from domains.operations.unit_of_work import SqlUnitOfWork

DOMAIN = "imports"
TASK_MODULES: list[str] = ["tasks.imports"]
SUBSCRIPTIONS: list[str] = []


def uow_class() -> type[SqlUnitOfWork]:
    """Returns the imports unit of work class."""
    from domains.imports.unit_of_work import ImportsUnitOfWork

    return ImportsUnitOfWork


def storage_dir(container: Container) -> str:
    """Returns the import file directory (shared by the API and the workers).

    Args:
        container: The container.

    Returns:
        An absolute path.
    """
    settings = container.settings
    return os.path.abspath(
        settings.imports.storage_dir or os.path.join(settings.data_dir, "imports")
    )


def build(container: Container) -> dict[str, Any]:
    """Builds the imports services.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        Services by name: ``imports``.
    """
    from app.imports_fetcher import HttpSourceFetcher, source_guard
    from domains.imports.service import ImportsPolicy, ImportsService
    from domains.imports.storage import FileStore

    settings = container.settings
    section = settings.imports
    guard = source_guard(section.source_allowlist, allow_private=section.allow_private_sources)
    service = ImportsService(
        container.uow_factory(DOMAIN),  # type: ignore[arg-type]
        read_uow_factory=container.uow_factory(DOMAIN, role="replica"),  # type: ignore[arg-type]
        # One cap for the upload, the fetched source and the decompressed file (the smaller of
        # the security and imports settings): a small gzip cannot expand past it on disk.
        store=FileStore(storage_dir(container), max_bytes=settings.upload_limit_bytes()),
        fetcher=HttpSourceFetcher(guard, timeout=section.fetch_timeout_seconds),
        guard=guard,
        policy=ImportsPolicy(
            chunk_rows=section.chunk_rows,
            lease_seconds=settings.operation_lease_seconds,
            pending_deadline_seconds=settings.pending_deadline_seconds,
            max_file_bytes=settings.upload_limit_bytes(),
            max_cell_bytes=section.max_cell_bytes,
            max_row_bytes=section.max_row_bytes,
        ),
        progress_interval=settings.progress_interval_seconds,
    )
    return {"imports": service}


def routers() -> list[APIRouter]:
    """Returns the imports routers (datasets, their imports and records)."""
    from api.v1 import datasets

    return [datasets.router]


class FromSourceInput(BaseModel):
    """Arguments of the ``imports.fromSource`` workflow."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(
        min_length=1, max_length=200, description='"datasets/<id>" or the dataset id.'
    )
    source_uri: str | None = Field(
        default=None,
        max_length=2048,
        description="http(s) URL to import; defaults to the dataset's source_uri.",
    )


async def _start_from_source(
    container: Container, args: FromSourceInput, context: StartContext
) -> Operation:
    from domains.shared.errors import FailedPrecondition
    from domains.shared.ids import parse_id

    service = container.services["imports"]
    dataset_id = parse_id(args.dataset.removeprefix("datasets/"), what="dataset id")
    dataset = await service.get_dataset(context.tenant, dataset_id)
    source = args.source_uri or dataset.source_uri
    if not source:
        raise FailedPrecondition(
            f"{dataset.name} has no source_uri; set one on the dataset or pass source_uri",
            reason="NO_SOURCE_URI",
        )
    op: Operation = await service.create_import(
        tenant=context.tenant,
        dataset_id=dataset_id,
        source_uri=source,
        request_id=context.request_id,
        correlation_id=context.correlation_id,
    )
    return op


def workflows() -> list[Workflow]:
    """Returns the imports workflows (``imports.fromSource``)."""
    from app.workflows import Workflow

    return [
        Workflow(
            name="imports.fromSource",
            input_model=FromSourceInput,
            start=_start_from_source,
            description="Import a dataset's source_uri (http/https, SSRF-guarded) into it.",
        )
    ]
