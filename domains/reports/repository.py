"""Every query on reports tables lives here: reports and their files, applied event ids, and
the daily projections (only the ``reports`` schema is ever read).
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from domains.reports import tables
from domains.reports.events import DatasetDelta, EndpointDelta, latency_bucket
from domains.reports.model import Report, ReportFile, ReportFormat, ReportStatus, ReportType
from domains.shared.errors import InvalidArgument
from domains.shared.events import IntegrationEvent
from domains.shared.query import Condition, Keyset, after_keyset
from domains.shared.retention import delete_batch

FILTER_COLUMNS: dict[str, str] = {
    "type": "type",
    "format": "format",
    "create_time": "create_time",
}
"""API filter field -> ``reports`` column."""

_OPS = {
    "=": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
}


class ReportRepository(Protocol):
    """Storage of reports and their files: what the reports service needs."""

    async def add(self, report: Report) -> None:
        """Inserts ``report``."""
        ...

    async def get(
        self, report_id: uuid.UUID, *, tenant: str | None = None, for_update: bool = False
    ) -> Report | None:
        """Loads a report with its operation's state."""
        ...

    async def save(self, report: Report) -> None:
        """Writes back ``report``."""
        ...

    async def list(
        self,
        tenant: str,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> builtins.list[Report]:
        """Lists a tenant's reports in creation ``(create_time, id)`` order."""
        ...

    async def add_file(self, file: ReportFile, now: dt.datetime) -> None:
        """Stores ``file`` (once per report: the fencing token guards the caller)."""
        ...

    async def get_file(self, report_id: uuid.UUID, file_name: str = "") -> ReportFile | None:
        """Loads a report's file."""
        ...


class ProjectionRepository(Protocol):
    """The event-fed projections: what the reports service needs."""

    async def mark_applied(self, event: IntegrationEvent, outcome: str, now: dt.datetime) -> bool:
        """Records that ``event`` is applied, in the transaction that applies it."""
        ...

    async def add_dataset(self, delta: DatasetDelta, now: dt.datetime) -> None:
        """Adds an import event to its tenant/dataset/day row."""
        ...

    async def add_endpoint(self, delta: EndpointDelta, now: dt.datetime) -> None:
        """Adds a delivery event to its tenant/endpoint/day row (and its latency sample)."""
        ...

    async def dataset_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Returns a tenant's dataset-day rows in ``[start, end]``."""
        ...

    async def endpoint_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Returns a tenant's endpoint-day rows in ``[start, end]`` with p50/p95 latency."""
        ...

    async def digest_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Returns one row per day in ``[start, end]`` with the tenant's totals (zeros on quiet
        days) and the latency percentiles over all its endpoints.
        """
        ...

    async def purge_applied(self, applied_before: dt.datetime, limit: int) -> int:
        """Deletes applied-event ids recorded before ``applied_before`` (one batch)."""
        ...

    async def compact_latencies(self, before: dt.date) -> int:
        """Folds one tenant-day of latency samples older than ``before`` into frozen percentiles
        and deletes the samples (one batch of retention).
        """
        ...


def _report_columns() -> list[Any]:
    r, o = tables.reports, tables.operations
    return [*r.c, o.c.state.label("operation_state")]


def _report(row: Any) -> Report:
    return Report(
        id=row["id"],
        tenant=row["tenant"],
        type=ReportType(row["type"]),
        format=ReportFormat(row["format"]),
        period_label=row["period_label"],
        start_date=row["start_date"],
        end_date=row["end_date"],
        operation_id=row["operation_id"],
        create_time=row["create_time"],
        status=ReportStatus(row["status"]),
        complete_time=row["complete_time"],
        size_bytes=row["size_bytes"],
        row_count=row["row_count"],
        error=row["error"],
        operation_state=row["operation_state"],
    )


def _report_values(report: Report) -> dict[str, Any]:
    return {
        "id": report.id,
        "tenant": report.tenant,
        "type": report.type.value,
        "format": report.format.value,
        "period_label": report.period_label,
        "start_date": report.start_date,
        "end_date": report.end_date,
        "operation_id": report.operation_id,
        "create_time": report.create_time,
        "status": report.status.value,
        "complete_time": report.complete_time,
        "size_bytes": report.size_bytes,
        "row_count": report.row_count,
        "error": report.error,
    }


def _percentiles(counts: sa.Subquery, keys: Sequence[str]) -> sa.Subquery:
    """p50 and p95 per group of a latency histogram, exactly as ``percentile_cont`` over the
    samples it counts (linear interpolation between the two samples around the position).

    Args:
        counts: Rows of the group ``keys``, ``latency_ms`` (unique within a group) and
            ``samples`` (how many samples had it).
        keys: The group's columns.

    Returns:
        A subquery of ``keys``, ``p50`` and ``p95``.
    """
    group = [counts.c[k] for k in keys]
    running = sa.func.sum(counts.c.samples).over(partition_by=group, order_by=counts.c.latency_ms)
    ranked = sa.select(
        *group,
        counts.c.latency_ms,
        (running - counts.c.samples).label("first"),  # 0-based index of its first sample
        running.label("after"),
        sa.func.sum(counts.c.samples).over(partition_by=group).label("n"),
    ).subquery()
    r = ranked.c

    def at(index: Any) -> Any:
        return sa.func.max(r.latency_ms).filter(r.first <= index, index < r.after)

    columns = []
    for name, fraction in (("p50", 0.5), ("p95", 0.95)):
        position = fraction * (r.n - 1)
        low, high = sa.func.floor(position), sa.func.ceil(position)
        weight = sa.cast(sa.func.max(position - low), sa.Float)
        columns.append((at(low) + weight * (at(high) - at(low))).label(name))
    by = [r[k] for k in keys]
    return sa.select(*by, *columns).group_by(*by).subquery()


class SqlReportRepository:
    """Reports and files in the ``reports`` schema."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    def _select(self) -> sa.Select[Any]:
        r, o = tables.reports, tables.operations
        # The operation lives in the same schema: its state shows RUNNING/CANCELLED.
        return sa.select(*_report_columns()).select_from(r.outerjoin(o, o.c.id == r.c.operation_id))

    async def add(self, report: Report) -> None:
        """Inserts ``report``.

        Args:
            report: A new report.
        """
        await self._session.execute(sa.insert(tables.reports), _report_values(report))

    async def get(
        self, report_id: uuid.UUID, *, tenant: str | None = None, for_update: bool = False
    ) -> Report | None:
        """Loads a report with its operation's state.

        Args:
            report_id: Its id.
            tenant: Only this tenant's report (``None``: any, for workers).
            for_update: Lock the report row.

        Returns:
            The report or ``None``.
        """
        r = tables.reports
        query = self._select().where(r.c.id == report_id)
        if tenant is not None:
            query = query.where(r.c.tenant == tenant)
        if for_update:
            query = query.with_for_update(of=r)
        row = (await self._session.execute(query)).mappings().first()
        return _report(row) if row else None

    async def save(self, report: Report) -> None:
        """Writes back ``report``.

        Args:
            report: A loaded, changed report.
        """
        values = _report_values(report)
        values.pop("id")
        r = tables.reports
        await self._session.execute(sa.update(r).where(r.c.id == report.id).values(**values))

    async def list(
        self,
        tenant: str,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> builtins.list[Report]:
        """Lists a tenant's reports in creation ``(create_time, id)`` order.

        Args:
            tenant: Tenant.
            conditions: Parsed filter (a conjunction).
            after: Keyset position: only reports after this ``(create_time, id)``.
            limit: Maximum rows.

        Returns:
            The reports.

        Raises:
            InvalidArgument: If a condition names an unknown field.
        """
        query = self.list_query(tenant, conditions, after=after, limit=limit)
        rows = (await self._session.execute(query)).mappings()
        return [_report(row) for row in rows]

    def list_query(
        self,
        tenant: str,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> sa.Select[Any]:
        """The statement :meth:`list` runs, served by the indexes
        ``(tenant, [type|format,] create_time, id)``.

        Args:
            tenant: Tenant.
            conditions: Parsed filter (a conjunction).
            after: Keyset position.
            limit: Maximum rows.

        Returns:
            The SELECT.

        Raises:
            InvalidArgument: If a condition names an unknown field.
        """
        r, o = tables.reports, tables.operations
        query = sa.select(r).where(r.c.tenant == tenant)
        for cond in conditions:
            column_name = FILTER_COLUMNS.get(cond.field)
            if column_name is None:
                raise InvalidArgument(
                    f"filter: field {cond.field!r} is not filterable; use one of"
                    f" {', '.join(FILTER_COLUMNS)}",
                    reason="INVALID_FILTER",
                )
            query = query.where(_OPS[cond.op](r.c[column_name], cond.value))
        query = query.where(after_keyset(r, after))
        # The page first (index-served), then its operations' states: joining before the
        # limit would make the planner join and sort every match.
        page = query.order_by(r.c.create_time, r.c.id).limit(limit).subquery("page")
        return (
            sa.select(*page.c, o.c.state.label("operation_state"))
            .select_from(page.outerjoin(o, o.c.id == page.c.operation_id))
            .order_by(page.c.create_time, page.c.id)
        )

    async def add_file(self, file: ReportFile, now: dt.datetime) -> None:
        """Stores ``file`` (once per report: the fencing token guards the caller).

        Args:
            file: The file.
            now: Current time.
        """
        await self._session.execute(
            sa.insert(tables.report_files),
            {
                "report_id": file.report_id,
                "content": file.content,
                "content_type": file.content_type,
                "sha256": file.sha256,
                "create_time": now,
            },
        )

    async def get_file(self, report_id: uuid.UUID, file_name: str = "") -> ReportFile | None:
        """Loads a report's file.

        Args:
            report_id: The report.
            file_name: Download name to give it.

        Returns:
            The file or ``None``.
        """
        f = tables.report_files
        query = sa.select(f.c.content, f.c.content_type, f.c.sha256).where(
            f.c.report_id == report_id
        )
        row = (await self._session.execute(query)).mappings().first()
        if row is None:
            return None
        return ReportFile(
            report_id=report_id,
            content=bytes(row["content"]),
            content_type=row["content_type"],
            file_name=file_name,
            sha256=row["sha256"],
        )


class SqlProjectionRepository:
    """Applied event ids and the daily projections."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    async def mark_applied(self, event: IntegrationEvent, outcome: str, now: dt.datetime) -> bool:
        """Records that ``event`` is applied, in the transaction that applies it.

        A concurrent duplicate waits on the primary key until this transaction ends, then finds
        the id taken.

        Args:
            event: The event.
            outcome: ``applied`` or ``ignored``.
            now: Current time.

        Returns:
            ``True`` if the id is new (apply it), ``False`` for a duplicate (do nothing).
        """
        t = tables.applied_events
        query = (
            pg.insert(t)
            .values(
                event_id=event.id,
                type=event.type[:200],
                tenant=event.tenant,
                outcome=outcome,
                event_time=event.time,
                applied_time=now,
            )
            .on_conflict_do_nothing(index_elements=[t.c.event_id])
            .returning(t.c.event_id)
        )
        return (await self._session.execute(query)).first() is not None

    async def add_dataset(self, delta: DatasetDelta, now: dt.datetime) -> None:
        """Adds an import event to its tenant/dataset/day row.

        Args:
            delta: The change.
            now: Current time.
        """
        t = tables.dataset_daily
        insert = pg.insert(t).values(
            tenant=delta.tenant,
            dataset_id=delta.dataset_id,
            day=delta.day,
            dataset=delta.dataset,
            imports_completed=delta.imports_completed,
            imports_failed=delta.imports_failed,
            rows_total=delta.rows_total,
            rows_accepted=delta.rows_accepted,
            rows_rejected=delta.rows_rejected,
            update_time=now,
        )
        ex = insert.excluded
        await self._session.execute(
            insert.on_conflict_do_update(
                index_elements=[t.c.tenant, t.c.dataset_id, t.c.day],
                set_={
                    "dataset": ex.dataset,
                    "imports_completed": t.c.imports_completed + ex.imports_completed,
                    "imports_failed": t.c.imports_failed + ex.imports_failed,
                    "rows_total": t.c.rows_total + ex.rows_total,
                    "rows_accepted": t.c.rows_accepted + ex.rows_accepted,
                    "rows_rejected": t.c.rows_rejected + ex.rows_rejected,
                    "update_time": ex.update_time,
                },
            )
        )

    async def add_endpoint(self, delta: EndpointDelta, now: dt.datetime) -> None:
        """Adds a delivery event to its tenant/endpoint/day row (and its latency sample).

        Args:
            delta: The change.
            now: Current time.
        """
        t = tables.endpoint_daily
        insert = pg.insert(t).values(
            tenant=delta.tenant,
            endpoint_id=delta.endpoint_id,
            day=delta.day,
            endpoint=delta.endpoint,
            deliveries_succeeded=delta.succeeded,
            deliveries_failed=delta.failed,
            deliveries_dead=delta.dead,
            update_time=now,
        )
        ex = insert.excluded
        await self._session.execute(
            insert.on_conflict_do_update(
                index_elements=[t.c.tenant, t.c.endpoint_id, t.c.day],
                set_={
                    "endpoint": ex.endpoint,
                    "deliveries_succeeded": t.c.deliveries_succeeded + ex.deliveries_succeeded,
                    "deliveries_failed": t.c.deliveries_failed + ex.deliveries_failed,
                    "deliveries_dead": t.c.deliveries_dead + ex.deliveries_dead,
                    "update_time": ex.update_time,
                },
            )
        )
        if delta.latency_ms is not None:
            # Counted once per event: the caller recorded the event id in this transaction.
            lat = tables.delivery_latencies
            sample = pg.insert(lat).values(
                tenant=delta.tenant,
                day=delta.day,
                endpoint_id=delta.endpoint_id,
                latency_ms=latency_bucket(delta.latency_ms),
                samples=1,
            )
            await self._session.execute(
                sample.on_conflict_do_update(
                    index_elements=[lat.c.tenant, lat.c.day, lat.c.endpoint_id, lat.c.latency_ms],
                    set_={"samples": lat.c.samples + 1},
                )
            )

    async def dataset_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Returns a tenant's dataset-day rows in ``[start, end]``.

        Args:
            tenant: Tenant.
            start: First day.
            end: Last day.

        Returns:
            Rows keyed like :data:`~domains.reports.model.DATASET_COLUMNS`, by day then dataset.
        """
        t = tables.dataset_daily
        query = (
            sa.select(
                t.c.day,
                t.c.dataset_id,
                t.c.dataset,
                t.c.imports_completed,
                t.c.imports_failed,
                t.c.rows_total,
                t.c.rows_accepted,
                t.c.rows_rejected,
            )
            .where(t.c.tenant == tenant, t.c.day >= start, t.c.day <= end)
            .order_by(t.c.day, t.c.dataset, t.c.dataset_id)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [{**row, "day": row["day"].isoformat()} for row in rows]

    async def endpoint_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Returns a tenant's endpoint-day rows in ``[start, end]`` with p50/p95 latency.

        Args:
            tenant: Tenant.
            start: First day.
            end: Last day.

        Returns:
            Rows keyed like :data:`~domains.reports.model.ENDPOINT_COLUMNS`, by day then endpoint.
        """
        t, lat = tables.endpoint_daily, tables.delivery_latencies
        percentiles = _percentiles(
            sa.select(lat.c.endpoint_id, lat.c.day, lat.c.latency_ms, lat.c.samples)
            .where(lat.c.tenant == tenant, lat.c.day >= start, lat.c.day <= end)
            .subquery(),
            ["endpoint_id", "day"],
        )
        query = (
            sa.select(
                t.c.day,
                t.c.endpoint_id,
                t.c.endpoint,
                t.c.deliveries_succeeded,
                t.c.deliveries_failed,
                t.c.deliveries_dead,
                # A compacted day's frozen figures win over samples that arrived after it.
                sa.func.coalesce(t.c.latency_p50_ms, percentiles.c.p50).label("latency_p50_ms"),
                sa.func.coalesce(t.c.latency_p95_ms, percentiles.c.p95).label("latency_p95_ms"),
            )
            .select_from(
                t.outerjoin(
                    percentiles,
                    sa.and_(
                        percentiles.c.endpoint_id == t.c.endpoint_id, percentiles.c.day == t.c.day
                    ),
                )
            )
            .where(t.c.tenant == tenant, t.c.day >= start, t.c.day <= end)
            .order_by(t.c.day, t.c.endpoint, t.c.endpoint_id)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [{**row, "day": row["day"].isoformat()} for row in rows]

    async def digest_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Returns one row per day in ``[start, end]`` with the tenant's totals (zeros on quiet
        days) and the latency percentiles over all its endpoints.

        Args:
            tenant: Tenant.
            start: First day.
            end: Last day.

        Returns:
            Rows keyed like :data:`~domains.reports.model.DIGEST_COLUMNS`, by day.
        """
        d, e, lat = tables.dataset_daily, tables.endpoint_daily, tables.delivery_latencies
        frozen = tables.tenant_daily_latency
        days = (
            sa.select(
                sa.func.generate_series(
                    sa.cast(start, sa.Date), sa.cast(end, sa.Date), sa.text("interval '1 day'")
                ).label("day")
            )
        ).subquery()
        imports = (
            sa.select(
                d.c.day,
                sa.func.sum(d.c.imports_completed).label("imports_completed"),
                sa.func.sum(d.c.imports_failed).label("imports_failed"),
                sa.func.sum(d.c.rows_accepted).label("rows_accepted"),
                sa.func.sum(d.c.rows_rejected).label("rows_rejected"),
            )
            .where(d.c.tenant == tenant, d.c.day >= start, d.c.day <= end)
            .group_by(d.c.day)
            .subquery()
        )
        deliveries = (
            sa.select(
                e.c.day,
                sa.func.sum(e.c.deliveries_succeeded).label("deliveries_succeeded"),
                sa.func.sum(e.c.deliveries_failed).label("deliveries_failed"),
                sa.func.sum(e.c.deliveries_dead).label("deliveries_dead"),
            )
            .where(e.c.tenant == tenant, e.c.day >= start, e.c.day <= end)
            .group_by(e.c.day)
            .subquery()
        )
        latency = _percentiles(
            sa.select(lat.c.day, lat.c.latency_ms, sa.func.sum(lat.c.samples).label("samples"))
            .where(lat.c.tenant == tenant, lat.c.day >= start, lat.c.day <= end)
            .group_by(lat.c.day, lat.c.latency_ms)
            .subquery(),
            ["day"],
        )
        day = sa.cast(days.c.day, sa.Date)

        def zero(column: Any) -> Any:
            return sa.cast(sa.func.coalesce(column, 0), sa.BigInteger)

        query = (
            sa.select(
                day.label("day"),
                zero(imports.c.imports_completed).label("imports_completed"),
                zero(imports.c.imports_failed).label("imports_failed"),
                zero(imports.c.rows_accepted).label("rows_accepted"),
                zero(imports.c.rows_rejected).label("rows_rejected"),
                zero(deliveries.c.deliveries_succeeded).label("deliveries_succeeded"),
                zero(deliveries.c.deliveries_failed).label("deliveries_failed"),
                zero(deliveries.c.deliveries_dead).label("deliveries_dead"),
                sa.func.coalesce(frozen.c.latency_p50_ms, latency.c.p50).label("latency_p50_ms"),
                sa.func.coalesce(frozen.c.latency_p95_ms, latency.c.p95).label("latency_p95_ms"),
            )
            .select_from(
                days.outerjoin(imports, imports.c.day == day)
                .outerjoin(deliveries, deliveries.c.day == day)
                .outerjoin(latency, latency.c.day == day)
                .outerjoin(frozen, sa.and_(frozen.c.tenant == tenant, frozen.c.day == day))
            )
            .order_by(day)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [{**row, "day": row["day"].isoformat()} for row in rows]

    async def purge_applied(self, applied_before: dt.datetime, limit: int) -> int:
        """Deletes applied-event ids recorded before ``applied_before`` (one batch).

        Args:
            applied_before: Cut-off on ``applied_time``.
            limit: Most rows deleted.

        Returns:
            Rows deleted.
        """
        t = tables.applied_events
        return await delete_batch(self._session, t, t.c.applied_time < applied_before, limit)

    async def compact_latencies(self, before: dt.date) -> int:
        """Folds one tenant-day of latency samples older than ``before`` into frozen
        percentiles and deletes the samples (one batch of retention).

        The day's p50/p95 per endpoint go to ``endpoint_daily`` and over all endpoints to
        ``tenant_daily_latency``, computed as the reports compute them, so a report reads the
        same figures before and after. Figures already frozen stay (samples of a compacted day
        that arrive late are dropped).

        Args:
            before: Days before this one are compacted.

        Returns:
            Histogram rows deleted (0 once no day before ``before`` has samples).
        """
        lat = tables.delivery_latencies
        due = (
            await self._session.execute(
                sa.select(lat.c.tenant, lat.c.day).where(lat.c.day < before).limit(1)
            )
        ).first()
        if due is None:
            return 0
        tenant, day = due
        of_day = sa.and_(lat.c.tenant == tenant, lat.c.day == day)
        per_endpoint = _percentiles(
            sa.select(lat.c.endpoint_id, lat.c.latency_ms, lat.c.samples).where(of_day).subquery(),
            ["endpoint_id"],
        )
        e = tables.endpoint_daily
        await self._session.execute(
            sa.update(e)
            .where(
                e.c.tenant == tenant,
                e.c.day == day,
                e.c.endpoint_id == per_endpoint.c.endpoint_id,
                e.c.latency_p50_ms.is_(None),
            )
            .values(latency_p50_ms=per_endpoint.c.p50, latency_p95_ms=per_endpoint.c.p95)
        )
        overall = _percentiles(
            sa.select(
                sa.literal(tenant).label("tenant"),
                lat.c.latency_ms,
                sa.func.sum(lat.c.samples).label("samples"),
            )
            .where(of_day)
            .group_by(lat.c.latency_ms)
            .subquery(),
            ["tenant"],
        )
        frozen = tables.tenant_daily_latency
        await self._session.execute(
            pg.insert(frozen)
            .from_select(
                ["tenant", "day", "latency_p50_ms", "latency_p95_ms"],
                sa.select(overall.c.tenant, sa.literal(day, sa.Date), overall.c.p50, overall.c.p95),
            )
            .on_conflict_do_nothing(index_elements=[frozen.c.tenant, frozen.c.day])
        )
        result = await self._session.execute(sa.delete(lat).where(of_day))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
