"""Wiring of the reports domain: projections fed by ``imports.*`` and webhook delivery events,
report generation on queue ``reports``, the ``/v1/reports`` router and the ``reports.generate``
workflow (which the default daily digest schedule starts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

    from app.container import Container
    from app.workflows import StartContext, Workflow
    from domains.operations.model import Operation
    from domains.operations.unit_of_work import SqlUnitOfWork

DOMAIN = "reports"
TASK_MODULES: list[str] = ["tasks.reports"]
SUBSCRIPTIONS: list[str] = ["imports.*", "webhooks.Delivery*"]


def uow_class() -> type[SqlUnitOfWork]:
    """Returns the reports unit of work class."""
    from domains.reports.unit_of_work import ReportsUnitOfWork

    return ReportsUnitOfWork


def build(container: Container) -> dict[str, Any]:
    """Builds the reports services.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        Services by name: ``reports``.
    """
    from domains.reports.service import ReportsPolicy, ReportsService

    settings = container.settings
    service = ReportsService(
        container.uow_factory(DOMAIN),  # type: ignore[arg-type]
        read_uow_factory=container.uow_factory(DOMAIN, role="replica"),  # type: ignore[arg-type]
        policy=ReportsPolicy(
            lease_seconds=settings.operation_lease_seconds,
            pending_deadline_seconds=settings.pending_deadline_seconds,
            max_period_days=settings.reports.max_period_days,
            max_report_bytes=settings.reports.max_report_bytes,
        ),
        progress_interval=settings.progress_interval_seconds,
    )
    return {"reports": service}


def routers() -> list[APIRouter]:
    """Returns the reports routers."""
    from api.v1 import reports

    return [reports.router]


async def _start_generate(container: Container, args: Any, context: StartContext) -> Operation:
    operation: Operation = await container.services["reports"].create_report(
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
