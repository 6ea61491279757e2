"""Schedules: a workflow (or a system task) started on a cron expression or a fixed interval.

Pure model: validation of the timing fields and the computation of due slots. Times are stored
in UTC; a cron expression is evaluated in the schedule's time zone (``zoneinfo``), so
``0 6 * * *`` in ``Europe/Paris`` fires at 06:00 Paris time across daylight-saving changes.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import math
import zoneinfo
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from domains.shared.errors import FailedPrecondition, InvalidArgument

SYSTEM_TENANT = "system"
"""Tenant of the built-in platform schedules (listed to every caller, marked ``system``)."""

MAX_INTERVAL_SECONDS = 366 * 86400.0
"""Longest interval a schedule may have (one year)."""

_CRON_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class RunState:
    """States of a schedule run (one fired slot)."""

    PENDING = "PENDING"
    """Recorded; the workflow is not started yet (the leader starts it, retrying if needed)."""
    STARTED = "STARTED"
    """The workflow's operation exists (or the system task's message is in the outbox)."""
    FAILED = "FAILED"
    """The workflow could not be started (unknown workflow, arguments no longer valid...)."""


def parse_time_zone(name: str) -> zoneinfo.ZoneInfo:
    """Returns the IANA time zone ``name``.

    Args:
        name: E.g. ``UTC`` or ``Europe/Paris``.

    Returns:
        The zone.

    Raises:
        InvalidArgument: If the zone is unknown.
    """
    try:
        if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            f"time_zone {name!r} is not an IANA time zone; use a name like 'UTC' or 'Europe/Paris'",
            reason="INVALID_TIME_ZONE",
            metadata={"field": "time_zone"},
        ) from None


def validate_cron(expression: str) -> str:
    """Checks a cron expression: five fields (minute hour day-of-month month day-of-week) or an
    alias such as ``@daily``.

    Args:
        expression: The expression.

    Returns:
        The expression, whitespace-normalized.

    Raises:
        InvalidArgument: Saying why it is not valid.
    """
    text = " ".join(expression.split())
    fields = text.split(" ")
    if text.lower() in _CRON_ALIASES:
        return text.lower()
    if len(fields) != 5:
        raise InvalidArgument(
            f"cron {expression!r} has {len(fields)} field(s); use five fields"
            " 'minute hour day-of-month month day-of-week' (e.g. '0 6 * * *') or an alias"
            " such as '@daily'",
            reason="INVALID_CRON",
            metadata={"field": "cron"},
        )
    try:
        croniter(text, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).get_next(dt.datetime)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise InvalidArgument(
            f"cron {expression!r} is not valid: {exc}; fields are 'minute hour day-of-month"
            " month day-of-week' (e.g. '*/15 * * * *')",
            reason="INVALID_CRON",
            metadata={"field": "cron"},
        ) from None
    return text


def validate_timing(
    cron: str | None, interval_seconds: float | None, *, min_interval_seconds: float
) -> tuple[str | None, float | None]:
    """Checks that exactly one of ``cron`` and ``interval_seconds`` is given, and is valid.

    Args:
        cron: Cron expression.
        interval_seconds: Interval.
        min_interval_seconds: Smallest interval allowed.

    Returns:
        ``(cron, interval_seconds)`` normalized.

    Raises:
        InvalidArgument: If both or neither are given, or one is invalid.
    """
    if (cron is None) == (interval_seconds is None):
        raise InvalidArgument(
            "give exactly one of cron (e.g. '0 6 * * *') and interval_seconds (e.g. 3600)",
            reason="INVALID_TIMING",
            metadata={"field": "cron"},
        )
    if cron is not None:
        return validate_cron(cron), None
    assert interval_seconds is not None
    if not (
        math.isfinite(interval_seconds)
        and min_interval_seconds <= interval_seconds <= MAX_INTERVAL_SECONDS
    ):
        raise InvalidArgument(
            f"interval_seconds must be between {min_interval_seconds:g} and"
            f" {MAX_INTERVAL_SECONDS:g} (got {interval_seconds:g})",
            reason="INVALID_INTERVAL",
            metadata={"field": "interval_seconds"},
        )
    return None, float(interval_seconds)


@dataclasses.dataclass
class Schedule:
    """A schedule: what to start (a workflow with arguments, or a system task) and when.

    Attributes:
        id: Schedule id (the resource is ``schedules/{id}``).
        tenant: Owning tenant (``system`` for built-in schedules).
        display_name: Free text shown in lists.
        workflow: Workflow name (``platform.ping``...), for user schedules.
        task: Celery task name sent through the outbox, for system schedules.
        args: Workflow arguments (validated against its input model) or task kwargs.
        cron: Cron expression (exclusive with ``interval_seconds``).
        interval_seconds: Fixed interval.
        time_zone: IANA zone the cron expression is evaluated in.
        enabled: Whether it fires.
        catch_up: After downtime, fire every missed slot (bounded) instead of only the latest.
        system: Built-in platform schedule: only its interval (and enabled flag) can change,
            it cannot be deleted.
        create_time: Creation time.
        update_time: Last change.
        next_run_time: Next slot to fire (UTC), ``None`` while disabled.
        last_run_time: Last slot fired.
        last_operation: Operation started by the last fire.
        request_id: AIP-155 request id of the create call, if it sent one.
        request_hash: Fingerprint of that create request (a replay must match it).
    """

    id: str
    tenant: str
    display_name: str
    workflow: str | None
    task: str | None
    args: dict[str, Any]
    cron: str | None
    interval_seconds: float | None
    time_zone: str
    enabled: bool
    catch_up: bool
    system: bool
    create_time: dt.datetime
    update_time: dt.datetime
    next_run_time: dt.datetime | None = None
    last_run_time: dt.datetime | None = None
    last_operation: str | None = None
    request_id: str | None = None
    request_hash: str | None = None

    @property
    def name(self) -> str:
        """Resource name ``schedules/{id}``."""
        return f"schedules/{self.id}"

    @property
    def target(self) -> str:
        """What it starts: the workflow or the task name."""
        return self.workflow or self.task or ""

    def slot_after(self, moment: dt.datetime) -> dt.datetime:
        """Returns the first slot strictly after ``moment``.

        Args:
            moment: A UTC time.

        Returns:
            The slot, in UTC.
        """
        if self.interval_seconds is not None:
            return moment + dt.timedelta(seconds=self.interval_seconds)
        assert self.cron is not None
        zone = parse_time_zone(self.time_zone)
        nxt: dt.datetime = croniter(self.cron, moment.astimezone(zone)).get_next(dt.datetime)
        return nxt.astimezone(dt.UTC)

    def due_slots(
        self, now: dt.datetime, *, max_catch_up: int
    ) -> tuple[list[dt.datetime], dt.datetime | None]:
        """Returns the slots to fire at ``now`` and the next slot after them.

        Without ``catch_up`` a schedule that missed several slots (beat down) fires once, for
        the latest missed slot; with it, every missed slot fires, at most ``max_catch_up`` (the
        most recent ones).

        Args:
            now: Current UTC time.
            max_catch_up: Bound on slots fired at once with ``catch_up``.

        Returns:
            ``(slots, next_run_time)``; no slots when not enabled or not due.
        """
        start = self.next_run_time
        if not self.enabled or start is None or start > now:
            return [], start
        if self.interval_seconds is not None:
            step = dt.timedelta(seconds=self.interval_seconds)
            behind = int((now - start) / step)
            first = max(0, behind - max_catch_up + 1) if self.catch_up else behind
            slots = [start + step * k for k in range(first, behind + 1)]
            return slots, start + step * (behind + 1)
        assert self.cron is not None
        zone = parse_time_zone(self.time_zone)
        if not self.catch_up:
            # The latest slot at or before now: step back from just after now.
            probe = (now + dt.timedelta(microseconds=1)).astimezone(zone)
            latest: dt.datetime = croniter(self.cron, probe).get_prev(dt.datetime)
            latest = max(latest.astimezone(dt.UTC), start)
            return [latest], self.slot_after(now)
        recent: collections.deque[dt.datetime] = collections.deque(maxlen=max_catch_up)
        recent.append(start)
        walker = croniter(self.cron, start.astimezone(zone))
        while True:
            slot: dt.datetime = walker.get_next(dt.datetime).astimezone(dt.UTC)
            if slot > now:
                return list(recent), slot
            recent.append(slot)

    def mark_fired(self, slots: list[dt.datetime], next_run_time: dt.datetime | None) -> None:
        """Records that ``slots`` fired.

        Args:
            slots: Fired slots, oldest first.
            next_run_time: The next slot.
        """
        if slots:
            self.last_run_time = max(slots[-1], self.last_run_time or slots[-1])
        self.next_run_time = next_run_time

    def reschedule(self, now: dt.datetime) -> None:
        """Recomputes the next slot from ``now`` (after an edit, or when enabled).

        Args:
            now: Current UTC time.
        """
        self.next_run_time = self.slot_after(now) if self.enabled else None

    def check_deletable(self) -> None:
        """Refuses to delete a system schedule.

        Raises:
            FailedPrecondition: For a system schedule.
        """
        if self.system:
            raise FailedPrecondition(
                f"{self.name} is a system schedule and cannot be deleted; change its"
                " interval_seconds instead",
                reason="SYSTEM_SCHEDULE",
            )


@dataclasses.dataclass
class ScheduleRun:
    """One fired slot of a schedule; (schedule_id, fire_time) is unique, so a slot fires once.

    Attributes:
        schedule_id: The schedule.
        fire_time: The slot (UTC); for ``:run`` the time of the call.
        tenant: Tenant the work runs for.
        workflow: Workflow started (snapshot at fire time), if a workflow schedule.
        task: Task sent, if a system schedule.
        args: Arguments (snapshot at fire time).
        state: :class:`RunState`.
        create_time: When the slot was recorded.
        fired_by: Beat node (or ``api``) that fired it.
        manual: Fired by ``:run`` rather than by the clock.
        operation: Operation started (``operations/{domain}.{id}``).
        attempts: Failed start attempts.
        error: Last start error.
    """

    schedule_id: str
    fire_time: dt.datetime
    tenant: str
    workflow: str | None
    task: str | None
    args: dict[str, Any]
    state: str
    create_time: dt.datetime
    fired_by: str
    manual: bool = False
    operation: str | None = None
    attempts: int = 0
    error: str | None = None

    @property
    def request_id(self) -> str:
        """AIP-155 request id of the start: the target domain's idempotency protects the slot."""
        return f"schedule:{self.schedule_id}:{self.fire_time.isoformat()}"


@dataclasses.dataclass(frozen=True)
class LeaderLease:
    """The beat leader lease.

    Attributes:
        name: Lease name.
        holder: Unique id of the holding beat process.
        node: Display name of the holding beat.
        acquired_at: When it took the lease.
        expires_at: When the lease lapses unless renewed.
        now: Database time when read.
    """

    name: str
    holder: str
    node: str
    acquired_at: dt.datetime
    expires_at: dt.datetime
    now: dt.datetime

    @property
    def valid(self) -> bool:
        """Whether the lease is held (not expired)."""
        return self.expires_at > self.now


@dataclasses.dataclass(frozen=True)
class BeatNode:
    """A beat process seen recently.

    Attributes:
        node: Display name.
        holder: Unique process id.
        last_seen: Last heartbeat.
        leader: Whether it held the lease at its last heartbeat.
    """

    node: str
    holder: str
    last_seen: dt.datetime
    leader: bool
