"""Reports use cases: tally integration events into projections (once per event id), request
reports, generate their files on a worker, and serve them.

Called by the API (create, get, list, download), the ``reports.generate`` task (run) and the
``reports.handle_event`` task (apply an event).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

from domains.operations import service as operations_service
from domains.operations.execution import (
    Cancelled,
    Execution,
    LeaseLost,
    OperationRunner,
    ProgressSink,
)
from domains.operations.model import DispatchSpec, Operation, OperationError
from domains.operations.unit_of_work import UnitOfWork
from domains.reports import events as report_events
from domains.reports.model import (
    DATASET_COLUMNS,
    DIGEST_COLUMNS,
    ENDPOINT_COLUMNS,
    Period,
    Report,
    ReportFile,
    ReportType,
    Table,
    parse_format,
    parse_type,
    render,
    sum_columns,
)
from domains.reports.unit_of_work import ReportsUoW
from domains.shared.clock import utcnow
from domains.shared.errors import DomainError, NotFound, PermanentError, TransientError
from domains.shared.ids import new_id
from domains.shared.query import Condition, Keyset
from domains.shared.retention import MAX_BATCHES, purge_batches

log = logging.getLogger(__name__)

DOMAIN = "reports"
GENERATE_TASK = "reports.generate"

Outcome = Literal["applied", "duplicate", "ignored"]


@dataclasses.dataclass(frozen=True)
class ReportsPolicy:
    """Limits and deadlines of the reports domain.

    Attributes:
        lease_seconds: Heartbeat lease of a running generation.
        pending_deadline_seconds: Re-dispatch deadline of a pending generation.
        max_period_days: Longest period a report may cover.
        max_report_bytes: Largest file stored; a bigger one fails the operation.
    """

    lease_seconds: float = 30.0
    pending_deadline_seconds: float = 300.0
    max_period_days: int = 366
    max_report_bytes: int = 50_000_000


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    """What handling one integration event did.

    Attributes:
        outcome: ``applied`` (projections changed), ``duplicate`` (the id was applied before:
            nothing changed) or ``ignored`` (a type reports do not tally; recorded).
        event_id: The event id.
        type: The event type.
    """

    outcome: Outcome
    event_id: uuid.UUID
    type: str


@dataclasses.dataclass(frozen=True)
class ReportPage:
    """One page of reports.

    Attributes:
        reports: The reports, in creation order.
        last_id: Keyset position of the next page, ``None`` at the end.
    """

    reports: list[Report]
    last_id: uuid.UUID | None

    @property
    def last(self) -> Keyset | None:
        """Keyset ``(create_time, id)`` of the next page, ``None`` at the end."""
        if self.last_id is None:
            return None
        return (self.reports[-1].create_time, self.reports[-1].id)


def _period_body(period: object) -> object:
    # The fingerprint of an AIP-155 request: dates as ISO text, whatever the caller passed.
    if isinstance(period, Mapping):
        return {str(k): str(v) for k, v in sorted(period.items())}
    return period


class ReportsService:
    """Projections, reports and their generation."""

    def __init__(
        self,
        uow_factory: Callable[[], ReportsUoW],
        *,
        read_uow_factory: Callable[[], ReportsUoW] | None = None,
        policy: ReportsPolicy | None = None,
        progress_interval: float = 1.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        """Creates the service.

        Args:
            uow_factory: Reports unit of work factory (primary).
            read_uow_factory: Unit of work on the replica, for lists. Report data is read from
                the primary: a stored report must not miss what a lagging replica has not
                replayed yet.
            policy: Limits and deadlines.
            progress_interval: Minimum seconds between progress writes.
            clock: Current UTC time (resolves ``yesterday`` and ``today``).
        """
        self._uow = uow_factory
        self._read_uow = read_uow_factory or uow_factory
        self._policy = policy or ReportsPolicy()
        self._clock = clock
        self._runner = OperationRunner(uow_factory, progress_interval=progress_interval)

    @property
    def policy(self) -> ReportsPolicy:
        """Limits and deadlines in force."""
        return self._policy

    # ------------------------------------------------------------------ events

    async def handle_event(self, envelope: Mapping[str, Any]) -> ApplyResult:
        """Applies an integration event to the projections, once per event id.

        The event id is recorded in ``applied_events`` in the same transaction as the
        projection change; a second delivery finds it and changes nothing.

        Args:
            envelope: The event envelope (``IntegrationEvent.to_dict()``).

        Returns:
            What was done.

        Raises:
            MalformedEvent: If the envelope or a field of the event's contract is unusable
                (retrying cannot help; the task logs and drops it).
        """
        event = report_events.parse_envelope(envelope)
        delta = report_events.to_delta(event)
        outcome: Outcome = "applied" if delta is not None else "ignored"
        async with self._uow() as uow:
            # The inbox records that this consumer handled the event, with the effect.
            if uow.inbox is not None:
                await uow.inbox.mark_handled(event.id, "reports", envelope, self._clock())
            if not await uow.projections.mark_applied(event, outcome, self._clock()):
                log.info("event %s (%s) already applied; skipped", event.id, event.type)
                await uow.commit()
                return ApplyResult("duplicate", event.id, event.type)
            if isinstance(delta, report_events.DatasetDelta):
                await uow.projections.add_dataset(delta, self._clock())
            elif isinstance(delta, report_events.EndpointDelta):
                await uow.projections.add_endpoint(delta, self._clock())
            await uow.commit()
        if delta is None:
            log.info("event %s of type %s is not tallied by reports; ignored", event.id, event.type)
        return ApplyResult(outcome, event.id, event.type)

    async def dataset_days(self, tenant: str, period: Period) -> list[dict[str, Any]]:
        """Returns the dataset-day projection rows of a tenant.

        Read from the primary, like every read a stored report is built from.

        Args:
            tenant: Tenant.
            period: Days to cover.

        Returns:
            Rows keyed like ``DATASET_COLUMNS``.
        """
        async with self._uow() as uow:
            return await uow.projections.dataset_days(tenant, period.start_date, period.end_date)

    async def endpoint_days(self, tenant: str, period: Period) -> list[dict[str, Any]]:
        """Returns the endpoint-day projection rows of a tenant, with p50/p95 latency.

        Read from the primary, like every read a stored report is built from.

        Args:
            tenant: Tenant.
            period: Days to cover.

        Returns:
            Rows keyed like ``ENDPOINT_COLUMNS``.
        """
        async with self._uow() as uow:
            return await uow.projections.endpoint_days(tenant, period.start_date, period.end_date)

    async def digest_days(self, tenant: str, period: Period) -> list[dict[str, Any]]:
        """Returns one row per day with a tenant's totals.

        Read from the primary, like every read a stored report is built from.

        Args:
            tenant: Tenant.
            period: Days to cover.

        Returns:
            Rows keyed like ``DIGEST_COLUMNS``.
        """
        async with self._uow() as uow:
            return await uow.projections.digest_days(tenant, period.start_date, period.end_date)

    # ------------------------------------------------------------------ reports

    def resolve_period(self, period: object) -> Period:
        """Resolves a requested period against today's UTC date.

        Args:
            period: ``"yesterday"``, ``"today"`` or ``{"start_date", "end_date"}``.

        Returns:
            The period.

        Raises:
            InvalidArgument: If the period is malformed or too long.
        """
        return Period.resolve(period, self._clock().date(), max_days=self._policy.max_period_days)

    async def create_report(
        self,
        *,
        tenant: str,
        type: str,
        period: object,
        format: str = "csv",
        request_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Operation:
        """Requests a report: writes it with its operation and outbox row in one transaction.

        Args:
            tenant: Caller's tenant (the report only tallies this tenant's events).
            type: ``dataset_daily``, ``endpoint_daily`` or ``digest``.
            period: ``"yesterday"``, ``"today"`` or ``{"start_date", "end_date"}`` (UTC days,
                both included), resolved now.
            format: ``csv`` or ``json``.
            request_id: AIP-155 request id.
            correlation_id: HTTP request id for logs.

        Returns:
            The PENDING operation (or the earlier one for a repeated request id).

        Raises:
            InvalidArgument: If the type, format or period is wrong.
            AlreadyExists: If the request id was used with another body.
        """
        report_type = parse_type(type)
        report_format = parse_format(format)
        resolved = self.resolve_period(period)
        body = {"type": report_type.value, "period": _period_body(period), "format": format}
        request_hash = operations_service.request_fingerprint(body)

        async def build(uow: UnitOfWork) -> Operation:
            report_id = new_id()
            op = operations_service.new_operation(
                domain=DOMAIN,
                type_="generate",
                target=f"reports/{report_id}",
                dispatch=DispatchSpec(task_name=GENERATE_TASK, queue=DOMAIN, args=[]),
                request_id=request_id,
                request_hash=request_hash,
                lease_seconds=self._policy.lease_seconds,
                pending_deadline_seconds=self._policy.pending_deadline_seconds,
                correlation_id=correlation_id,
                tenant=tenant,
            )
            op.dispatch.args = [str(op.id)]
            report = Report(
                id=report_id,
                tenant=tenant,
                type=report_type,
                format=report_format,
                period_label=resolved.label,
                start_date=resolved.start_date,
                end_date=resolved.end_date,
                operation_id=op.id,
                create_time=op.create_time,
            )
            await cast(ReportsUoW, uow).reports.add(report)
            return op

        return await operations_service.create_idempotently(
            self._uow,
            request_id=request_id,
            request_hash=request_hash,
            build=build,
            tenant=tenant,
        )

    async def get_report(self, report_id: uuid.UUID, *, tenant: str) -> Report:
        """Returns a tenant's report.

        Args:
            report_id: Its id.
            tenant: Caller's tenant.

        Returns:
            The report.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        async with self._uow() as uow:
            report = await uow.reports.get(report_id, tenant=tenant)
        if report is None:
            raise NotFound(f"reports/{report_id} does not exist", reason="REPORT_NOT_FOUND")
        return report

    async def list_reports(
        self,
        *,
        tenant: str,
        conditions: Sequence[Condition] = (),
        page_size: int = 50,
        after: Keyset | None = None,
    ) -> ReportPage:
        """Lists a tenant's reports in creation order.

        Args:
            tenant: Caller's tenant.
            conditions: Parsed filter (``type``, ``format``, ``create_time``).
            page_size: Page size.
            after: Keyset ``(create_time, id)`` from the previous page.

        Returns:
            The page.
        """
        async with self._read_uow() as uow:
            found = await uow.reports.list(tenant, conditions, after=after, limit=page_size + 1)
        page = found[:page_size]
        return ReportPage(page, page[-1].id if len(found) > page_size else None)

    async def purge_applied(self, applied_before: dt.datetime, *, limit: int = 1000) -> int:
        """Deletes applied-event ids recorded before ``applied_before``, in batches (retention).

        Args:
            applied_before: Cut-off.
            limit: Rows per batch.

        Returns:
            Rows deleted.
        """

        async def batch() -> int:
            async with self._uow() as uow:
                deleted = await uow.projections.purge_applied(applied_before, limit)
                await uow.commit()
            return deleted

        return await purge_batches(batch, limit)

    async def compact_latencies(self, before: dt.date) -> int:
        """Folds the latency samples of days before ``before`` into frozen p50/p95 figures and
        deletes them (retention: one transaction per tenant-day).

        Args:
            before: Days before this one are compacted.

        Returns:
            Samples deleted.
        """
        total = 0
        for _ in range(MAX_BATCHES):
            async with self._uow() as uow:
                deleted = await uow.projections.compact_latencies(before)
                await uow.commit()
            if not deleted:
                break
            total += deleted
        return total

    async def download(self, report_id: uuid.UUID, *, tenant: str) -> tuple[Report, ReportFile]:
        """Returns a tenant's generated report file.

        Args:
            report_id: The report.
            tenant: Caller's tenant.

        Returns:
            The report and its file.

        Raises:
            NotFound: If the report does not exist for this tenant.
            FailedPrecondition: If the file is not generated (yet, or ever).
        """
        async with self._uow() as uow:
            report = await uow.reports.get(report_id, tenant=tenant)
            if report is None:
                raise NotFound(f"reports/{report_id} does not exist", reason="REPORT_NOT_FOUND")
            report.check_downloadable()
            file = await uow.reports.get_file(report_id, report.file_name)
        if file is None:  # pragma: no cover - written with the SUCCEEDED status
            raise NotFound(f"reports/{report_id} has no stored file", reason="REPORT_FILE_MISSING")
        return report, file

    async def build_table(self, report: Report) -> Table:
        """Reads the projections a report covers.

        Args:
            report: The report.

        Returns:
            Its columns, rows and totals.
        """
        period = report.period
        if report.type is ReportType.DATASET_DAILY:
            rows = await self.dataset_days(report.tenant, period)
            return Table(DATASET_COLUMNS, rows, sum_columns(rows, DATASET_COLUMNS[3:]))
        if report.type is ReportType.ENDPOINT_DAILY:
            rows = await self.endpoint_days(report.tenant, period)
            return Table(ENDPOINT_COLUMNS, rows, sum_columns(rows, ENDPOINT_COLUMNS[3:6]))
        rows = await self.digest_days(report.tenant, period)
        return Table(DIGEST_COLUMNS, rows, sum_columns(rows, DIGEST_COLUMNS[1:8]))

    async def run_generate(
        self, operation_id: uuid.UUID, *, sink: ProgressSink | None = None
    ) -> dict[str, Any]:
        """Generates a report's file and stores it with the report, the operation SUCCEEDED,
        in one transaction guarded by the attempt's fencing token.

        Args:
            operation_id: The operation (the task's only argument).
            sink: Progress mirror.

        Returns:
            The operation's response.

        Raises:
            Skip: If no work is needed (done, cancelled).
            Busy: If another attempt runs it.
            PermanentError: If the file exceeds the size limit.
            TransientError: On an infrastructure failure (the operation is released for retry).
        """
        execution = await self._runner.claim(operation_id, sink=sink)
        report_id = uuid.UUID(execution.operation.target.removeprefix("reports/"))
        try:
            async with self._uow() as uow:
                report = await uow.reports.get(report_id)
            if report is None:
                raise NotFound(f"reports/{report_id} does not exist", reason="REPORT_NOT_FOUND")
            await execution.checkpoint(0, 3, "reading projections")
            table = await self.build_table(report)
            await execution.checkpoint(1, 3, f"rendering {len(table.rows)} rows")
            generated = self._clock()
            content = render(report, table, generated)
            if len(content) > self._policy.max_report_bytes:
                raise PermanentError(
                    f"the report is {len(content)} bytes, over the limit of"
                    f" {self._policy.max_report_bytes}; request a shorter period",
                    reason="REPORT_TOO_LARGE",
                )
            await execution.checkpoint(2, 3, "storing the file")
        except Cancelled:
            await self._runner.cancelled(execution)
            return {"cancelled": True}
        except TransientError as exc:
            await self._release(execution, exc.message)
            raise
        except (DomainError, LeaseLost):
            raise  # a permanent error fails the operation; a lost lease means stop
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            await self._release(execution, message)
            raise TransientError(message) from exc

        digest = hashlib.sha256(content).hexdigest()

        async def apply(uow: UnitOfWork, op: Operation) -> dict[str, Any]:
            reports = cast(ReportsUoW, uow).reports
            locked = await reports.get(report_id, for_update=True)
            if locked is None:
                raise NotFound(f"reports/{report_id} does not exist", reason="REPORT_NOT_FOUND")
            now = self._clock()
            locked.complete(now, len(content), len(table.rows))
            await reports.add_file(
                ReportFile(
                    report_id=report_id,
                    content=content,
                    content_type=locked.format.content_type,
                    file_name=locked.file_name,
                    sha256=digest,
                ),
                now,
            )
            await reports.save(locked)
            return {
                "report": locked.name,
                "size_bytes": len(content),
                "row_count": len(table.rows),
                "sha256": digest,
                "download_uri": f"/v1/{locked.name}:download",
            }

        op = await self._runner.finish(execution, apply)
        return op.response or {}

    async def _release(self, execution: Execution, message: str) -> None:
        try:
            await self._runner.release(execution, message)
        except Exception:
            # The database may be the thing that failed: the lease expires and the sweeper
            # hands the operation to the next attempt anyway.
            log.warning("could not release %s for retry", execution.operation.name, exc_info=True)

    async def fail_operation(self, operation_id: uuid.UUID, error: OperationError) -> None:
        """Ends a generation as FAILED (retries exhausted or a permanent error) and records the
        failure on its report.

        Args:
            operation_id: The operation.
            error: What happened.
        """
        op = await self._runner.fail(operation_id, error)
        if op is None or not op.target.startswith("reports/"):
            return
        report_id = uuid.UUID(op.target.removeprefix("reports/"))
        async with self._uow() as uow:
            report = await uow.reports.get(report_id, for_update=True)
            if report is None:
                return
            report.fail(self._clock(), error.message)
            await uow.reports.save(report)
            await uow.commit()
