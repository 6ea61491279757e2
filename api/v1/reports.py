"""Reports: request a report (an Operation), get and list reports, download the file."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api import filtering, pagination
from api.auth import Principal, authorize, require_scope
from api.deps import ReportsDep, container, correlation_id
from api.errors import ERROR_RESPONSES
from api.v1.schemas import OperationOut, operation_response
from domains.reports.model import Report, ReportFormat, ReportType
from domains.shared.ids import parse_id

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=ERROR_RESPONSES)

FILTER_FIELDS: dict[str, filtering.FieldSpec] = {
    "type": filtering.FieldSpec("enum", tuple(t.value for t in ReportType)),
    "format": filtering.FieldSpec("enum", tuple(f.value for f in ReportFormat)),
    "create_time": filtering.FieldSpec("timestamp"),
}
# Served by the indexes (tenant, [type|format|type, format,] create_time, id).
INDEXED_EQUALITY = frozenset({"type", "format"})
INDEXED_TOGETHER = frozenset({INDEXED_EQUALITY})


class DateRange(BaseModel):
    """A custom period: UTC days, both ends included."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"start_date": "2026-11-01", "end_date": "2026-11-24"}},
    )

    start_date: dt.date = Field(description="First day (YYYY-MM-DD, UTC).")
    end_date: dt.date = Field(description="Last day, included (YYYY-MM-DD, UTC).")

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end_date < self.start_date:
            raise ValueError("end_date must be on or after start_date")
        return self


class ReportSpec(BaseModel):
    """What a report covers: the input of the ``reports.generate`` workflow (schedules use it)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"type": "digest", "period": "yesterday", "format": "csv"}},
    )

    type: Literal["dataset_daily", "endpoint_daily", "digest"] = Field(
        description="`dataset_daily`: per dataset and day, imports and rows;"
        " `endpoint_daily`: per webhook endpoint and day, deliveries and p50/p95 latency;"
        " `digest`: per day, the tenant's totals of both."
    )
    period: Literal["yesterday", "today"] | DateRange = Field(
        default="yesterday",
        description='`"yesterday"` or `"today"` (UTC, resolved when the report is requested) or'
        ' `{"start_date": "YYYY-MM-DD", "end_date": "YYYY-MM-DD"}`.',
    )
    format: Literal["csv", "json"] = Field(default="csv", description="File format.")

    def period_spec(self) -> str | dict[str, str]:
        """Returns the period in the service's form.

        Returns:
            ``"yesterday"``, ``"today"`` or ``{"start_date", "end_date"}`` as ISO dates.
        """
        if isinstance(self.period, DateRange):
            return {
                "start_date": self.period.start_date.isoformat(),
                "end_date": self.period.end_date.isoformat(),
            }
        return self.period


class CreateReportRequest(ReportSpec):
    """Body of ``POST /v1/reports``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "type": "dataset_daily",
                "period": {"start_date": "2026-11-01", "end_date": "2026-11-24"},
                "format": "json",
                "request_id": "3f1c9a52-8a43-4c57-9d0e-2b1f6d0f4a11",
            }
        },
    )

    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="AIP-155: a retried create returns the same operation.",
    )


class PeriodOut(BaseModel):
    """The days a report covers."""

    label: str = Field(description="`yesterday`, `today` or `custom`: how it was requested.")
    start_date: dt.date
    end_date: dt.date


_REPORT_EXAMPLE: dict[str, Any] = {
    "name": "reports/019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d",
    "type": "digest",
    "format": "csv",
    "period": {"label": "yesterday", "start_date": "2026-11-24", "end_date": "2026-11-24"},
    "state": "SUCCEEDED",
    "operation": "operations/reports.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c",
    "create_time": "2026-11-25T00:00:01Z",
    "complete_time": "2026-11-25T00:00:02Z",
    "size_bytes": 231,
    "row_count": 1,
    "content_type": "text/csv; charset=utf-8",
    "download_uri": "/v1/reports/019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d:download",
}


class ReportOut(BaseModel):
    """A report resource."""

    model_config = ConfigDict(json_schema_extra={"example": _REPORT_EXAMPLE})

    name: str = Field(description="reports/{id}")
    type: str
    format: str
    period: PeriodOut
    state: str = Field(
        description="PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING or CANCELLED (UNKNOWN if its"
        " unfinished operation was deleted); the file can be downloaded once SUCCEEDED."
    )
    operation: str = Field(description="The operation generating it.")
    create_time: dt.datetime
    complete_time: dt.datetime | None = None
    size_bytes: int | None = Field(default=None, description="File size once generated.")
    row_count: int | None = Field(default=None, description="Data rows once generated.")
    content_type: str
    download_uri: str | None = Field(default=None, description="Where to GET the file.")
    error: str | None = Field(default=None, description="Why generation failed.")


class ListReportsResponse(BaseModel):
    """A page of reports (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "reports": [_REPORT_EXAMPLE],
                "next_page_token": "eyJmIjoiYjE0YTRlIiwicCI6eyJhZnRlciI6IjAxOWE4ZjBlIn19x4Q",
            }
        }
    )

    reports: list[ReportOut]
    next_page_token: str = Field(
        default="", description="Pass as page_token for the next page; empty at the end."
    )


def report_out(report: Report) -> dict[str, Any]:
    """Renders a report as its JSON resource.

    Args:
        report: The report.

    Returns:
        The JSON body.
    """
    body: dict[str, Any] = {
        "name": report.name,
        "type": report.type.value,
        "format": report.format.value,
        "period": report.period.to_dict(),
        "state": report.state,
        "operation": f"operations/reports.{report.operation_id}",
        "create_time": report.create_time.isoformat(),
        "complete_time": report.complete_time.isoformat() if report.complete_time else None,
        "size_bytes": report.size_bytes,
        "row_count": report.row_count,
        "content_type": report.format.content_type,
        "download_uri": f"/v1/{report.name}:download" if report.state == "SUCCEEDED" else None,
    }
    if report.error:
        body["error"] = report.error
    return body


@router.post("", response_model=OperationOut, summary="Request a report")
async def create_report(
    body: CreateReportRequest,
    request: Request,
    request_id_param: Annotated[str | None, Query(alias="request_id", max_length=128)] = None,
) -> Any:
    """Requests a report and returns its operation; a worker on queue `reports` builds the file
    from the reports projections. When the operation is done, download it from
    `GET /v1/reports/{id}:download` (the id is in the operation's `metadata.target`).
    """
    # A hot route (docs/architecture.md, "Hot routes"): no dependencies.
    caller = authorize(request, "reports:write")
    correlation = correlation_id(request)
    op = await container(request).reports.create_report(
        tenant=caller.tenant,
        type=body.type,
        period=body.period_spec(),
        format=body.format,
        request_id=body.request_id or request_id_param,
        correlation_id=correlation,
    )
    return operation_response(op)


_CSV_EXAMPLE = (
    "day,imports_completed,imports_failed,rows_accepted,rows_rejected,deliveries_succeeded,"
    "deliveries_failed,deliveries_dead,latency_p50_ms,latency_p95_ms\r\n"
    "2026-11-24,12,1,10400,37,230,4,1,82.5,310.2\r\n"
)


@router.get(
    "/{report_id}:download",
    summary="Download a report file",
    response_class=Response,
    responses={
        200: {
            "description": "The file, with `Content-Disposition: attachment; filename=...`.",
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": _CSV_EXAMPLE},
                "application/json": {
                    "schema": {"type": "object"},
                    "example": {
                        "report": "reports/019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d",
                        "type": "endpoint_daily",
                        "period": {
                            "label": "yesterday",
                            "start_date": "2026-11-24",
                            "end_date": "2026-11-24",
                        },
                        "columns": ["day", "endpoint_id", "deliveries_succeeded"],
                        "rows": [
                            {"day": "2026-11-24", "endpoint_id": "e1", "deliveries_succeeded": 3}
                        ],
                        "totals": {"deliveries_succeeded": 3},
                    },
                },
            },
        }
    },
)
async def download_report(
    report_id: str,
    svc: ReportsDep,
    caller: Annotated[Principal, Depends(require_scope("reports:read"))],
) -> Response:
    """Returns the generated file: CSV (`text/csv`) or JSON (`application/json`).
    FAILED_PRECONDITION while the report is still being generated, or if generation failed.
    """
    _, file = await svc.download(parse_id(report_id, what="report id"), tenant=caller.tenant)
    return Response(
        content=file.content,
        media_type=file.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{file.file_name}"',
            "ETag": f'"{file.sha256}"',
            "Cache-Control": "private, max-age=0",
        },
    )


@router.get("/{report_id}", response_model=ReportOut, summary="Get a report")
async def get_report(
    report_id: str,
    svc: ReportsDep,
    caller: Annotated[Principal, Depends(require_scope("reports:read"))],
) -> Any:
    """Returns a report: type, period, format, state, its operation and, once generated, size."""
    report = await svc.get_report(parse_id(report_id, what="report id"), tenant=caller.tenant)
    return report_out(report)


@router.get("", response_model=ListReportsResponse, summary="List reports")
async def list_reports(
    svc: ReportsDep,
    caller: Annotated[Principal, Depends(require_scope("reports:read"))],
    filter_: Annotated[
        str | None,
        Query(
            alias="filter",
            max_length=filtering.MAX_FILTER_LENGTH,
            description='AIP-160 filter, e.g. `type = "digest" AND create_time >'
            ' "2026-11-01T00:00:00Z"`; fields: ' + ", ".join(FILTER_FIELDS),
        ),
    ] = None,
    page_size: Annotated[int | None, Query(description="At most 1000; default 50.")] = None,
    page_token: Annotated[
        str | None, Query(max_length=4096, description="next_page_token of the previous page.")
    ] = None,
) -> Any:
    """Lists the caller's reports in creation order, filtered and paged (AIP-158)."""
    conditions = filtering.require_indexed(
        filtering.parse_filter(filter_, FILTER_FIELDS),
        filter_,
        equality=INDEXED_EQUALITY,
        combined=INDEXED_TOGETHER,
    )
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.query_fingerprint("reports", caller.tenant, filter_)
    after = pagination.decode_after_keyset(page_token, query_fingerprint=fingerprint)
    page = await svc.list_reports(
        tenant=caller.tenant, conditions=conditions, page_size=size, after=after
    )
    token = pagination.next_keyset_token(page.last, query_fingerprint=fingerprint)
    return {"reports": [report_out(r) for r in page.reports], "next_page_token": token}
