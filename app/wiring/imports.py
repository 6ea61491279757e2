"""Wiring of the imports domain: datasets, imports and records."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from app.wiring.module import DomainModule
from domains.imports.service import ImportsService
from domains.imports.tables import tables
from domains.imports.unit_of_work import ImportsUnitOfWork

if TYPE_CHECKING:
    from app.container import Container
    from app.workflows import StartContext, Workflow
    from domains.operations.model import Operation


@dataclasses.dataclass(frozen=True)
class ImportsServices:
    """The imports services (each is a container attribute of the same name).

    Attributes:
        imports: Datasets, their imports and records.
    """

    imports: ImportsService


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


def build(container: Container) -> ImportsServices:
    """Builds the imports services.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        The services.
    """
    from app.adapters.imports_fetcher import HttpSourceFetcher, source_guard
    from domains.imports.service import ImportsPolicy
    from domains.imports.storage import FileStore

    settings = container.settings
    section = settings.imports
    guard = source_guard(section.source_allowlist, allow_private=section.allow_private_sources)
    service = ImportsService(
        container.unit_of_work(MODULE),
        read_uow_factory=container.unit_of_work(MODULE, role="replica"),
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
    return ImportsServices(imports=service)


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

    service = container.imports
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


MODULE = DomainModule(
    name="imports",
    tables=tables,
    unit_of_work=ImportsUnitOfWork,
    services=build,
    routers=("api.v1.datasets",),
    task_modules=("tasks.imports",),
    workflows=workflows,
)
"""The imports domain."""
