"""Wiring of the reports domain: projections fed by ``imports.*`` and webhook delivery events,
report generation on queue ``reports``, the ``/v1/reports`` router and the ``reports.generate``
workflow (which the default daily digest schedule starts).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from app.wiring.module import DomainModule
from domains.reports.service import ReportsService
from domains.reports.tables import tables
from domains.reports.unit_of_work import ReportsUnitOfWork

if TYPE_CHECKING:
    from app.container import Container
    from app.workflows import StartContext, Workflow
    from domains.operations.model import Operation


@dataclasses.dataclass(frozen=True)
class ReportsServices:
    """The reports services (each is a container attribute of the same name).

    Attributes:
        reports: Projections and report generation.
    """

    reports: ReportsService


def build(container: Container) -> ReportsServices:
    """Builds the reports services.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        The services.
    """
    from domains.reports.service import ReportsPolicy

    settings = container.settings
    service = ReportsService(
        container.unit_of_work(MODULE),
        read_uow_factory=container.unit_of_work(MODULE, role="replica"),
        policy=ReportsPolicy(
            lease_seconds=settings.operation_lease_seconds,
            pending_deadline_seconds=settings.pending_deadline_seconds,
            max_period_days=settings.reports.max_period_days,
            max_report_bytes=settings.reports.max_report_bytes,
        ),
        progress_interval=settings.progress_interval_seconds,
    )
    return ReportsServices(reports=service)


async def _start_generate(container: Container, args: Any, context: StartContext) -> Operation:
    operation: Operation = await container.reports.create_report(
        tenant=context.tenant,
        type=args.type,
        period=args.period_spec(),
        format=args.format,
        request_id=context.request_id,
        correlation_id=context.correlation_id,
    )
    return operation


def workflows() -> list[Workflow]:
    """Returns the reports workflows: ``reports.generate`` (input: the ``POST /v1/reports`` body
    without ``request_id``, e.g. ``{"type": "digest", "period": "yesterday", "format": "csv"}``).
    """
    from api.v1.reports import ReportSpec
    from app.workflows import Workflow

    return [
        Workflow(
            name="reports.generate",
            input_model=ReportSpec,
            start=_start_generate,
            description="Generate a report (dataset_daily, endpoint_daily or digest) as CSV or"
            " JSON from the reports projections.",
        )
    ]


MODULE = DomainModule(
    name="reports",
    tables=tables,
    unit_of_work=ReportsUnitOfWork,
    services=build,
    routers=("api.v1.reports",),
    task_modules=("tasks.reports",),
    subscriptions=("imports.*", "webhooks.Delivery*"),
    workflows=workflows,
)
"""The reports domain."""
