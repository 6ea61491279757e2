"""Read replica routing: fallback to the primary, bounded staleness, read-your-writes.

A domain's reads that may be served by its read replica (lists, row errors) open their
transaction through a :class:`ReplicaSessionSource`, which picks the database per transaction,
*before* anything is read (so a streamed download never starts on a database that then fails):

1. the replica failed recently (breaker open for ``retry_seconds``): the primary;
2. the replica's lag, measured at most every ``check_seconds`` (:class:`LagTracker`), is over
   ``max_lag_seconds``: the primary;
3. the request carries a read-your-writes fence (:data:`domains.shared.consistency.read_fence`,
   set by the API for a caller that wrote recently) the replica has not replayed yet: the
   primary;
4. otherwise the replica; if it cannot be reached, the breaker opens and the primary serves.

A 503 comes only when the primary cannot be reached either; its message names the domain's
primary database. Every decision is counted (``conveyor_replica_reads_total``,
``conveyor_replica_fallbacks_total``), and each check records the replica's lag and whether it
answered (``conveyor_replica_lag_seconds``, ``conveyor_replica_up``).

Lag is measured by WAL position, not by ``pg_last_xact_replay_timestamp()`` alone: with no
writes on the primary that timestamp ages while the replica is perfectly current.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from typing import Literal

import asyncpg
import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import DOMAINS, ConfigError
from app.db import EngineRegistry
from domains.shared.consistency import read_fence
from domains.shared.errors import Unavailable
from monitoring import metrics

log = logging.getLogger(__name__)

Target = Literal["replica", "primary"]
Reason = Literal["unreachable", "breaker_open", "lag", "read_your_writes"]

_PRIMARY_LSN = sa.text(
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END)::text"
)
_REPLICA_STATE = sa.text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
    " extract(epoch FROM pg_last_xact_replay_timestamp())::float8"
)


def parse_lsn(text: str) -> int:
    """Returns a PostgreSQL LSN (``16/B374D848``) as a byte position.

    Args:
        text: The LSN as PostgreSQL prints it.

    Returns:
        The position in bytes.
    """
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclasses.dataclass(frozen=True)
class LagReading:
    """One measurement of a replica against its primary.

    Attributes:
        measured_at: Wall-clock time the primary's position was read.
        lag_seconds: How stale the replica may be (an upper bound); ``inf`` when unknown.
        lag_bytes: WAL bytes written on the primary and not yet replayed (0 when unknown).
        fresh_as_of: Wall-clock time such that everything committed on the primary before it is
            on the replica (``-inf`` when unknown); read-your-writes fences compare with it.
        primary_reachable: Whether the primary answered the measurement.
    """

    measured_at: float
    lag_seconds: float
    lag_bytes: int
    fresh_as_of: float
    primary_reachable: bool = True


class LagTracker:
    """Turns WAL positions sampled over time into a replica's staleness in seconds.

    Each check reads the primary's position (``pg_current_wal_lsn()``) at time *t*, then the
    replica's replayed position. If the replica has replayed that position, it is current as of
    *t* (lag 0, however old its last replayed transaction is: an idle primary is not a lagging
    replica). Otherwise it is current as of the latest earlier sample it has replayed past, or
    as of its last replayed commit's timestamp, whichever is later; the lag is the time since.
    Both are upper bounds, so a replica is never judged fresher than it is.
    """

    def __init__(self, window_seconds: float) -> None:
        """Creates an empty tracker.

        Args:
            window_seconds: Samples older than this are dropped (one older sample is kept, so a
                replica further behind than the window still measures at least the window).
        """
        self._window = window_seconds
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(
        self,
        at: float,
        primary_lsn: int | None,
        *,
        in_recovery: bool,
        replay_lsn: int | None,
        replay_time: float | None,
    ) -> LagReading:
        """Records one check and returns the replica's lag.

        Args:
            at: Wall-clock time the primary's position was read (before the replica's).
            primary_lsn: The primary's WAL position, ``None`` if it did not answer.
            in_recovery: Whether the replica is a standby (a promoted one is its own primary).
            replay_lsn: The replica's replayed position (``pg_last_wal_replay_lsn()``).
            replay_time: Commit time of the replica's last replayed transaction (epoch seconds).

        Returns:
            The reading.
        """
        if not in_recovery:
            return LagReading(at, 0.0, 0, at, primary_lsn is not None)
        by_commit = replay_time if replay_time is not None else -math.inf
        if primary_lsn is None:
            # Nothing can be compared; the last replayed commit still bounds the staleness.
            return LagReading(at, max(0.0, at - by_commit), 0, -math.inf, False)
        self._samples.append((at, primary_lsn))
        while len(self._samples) > 1 and self._samples[1][0] < at - self._window:
            self._samples.popleft()
        if replay_lsn is None:
            return LagReading(at, math.inf, 0, -math.inf)
        if replay_lsn >= primary_lsn:
            return LagReading(at, 0.0, 0, at)
        by_sample = next((t for t, lsn in reversed(self._samples) if lsn <= replay_lsn), -math.inf)
        current_as_of = max(by_sample, by_commit)
        lag = at - current_as_of if current_as_of > -math.inf else math.inf
        return LagReading(at, max(0.0, lag), primary_lsn - replay_lsn, by_sample)


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means a database could not be reached (walks SQLAlchemy's wrapping)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(
            current,
            OSError
            | TimeoutError
            | asyncpg.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.InterfaceError
            | sqlalchemy.exc.DisconnectionError,
        ):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def _database_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database or the way to it (not a domain error)."""
    return isinstance(
        exc, sqlalchemy.exc.SQLAlchemyError | asyncpg.PostgresError | OSError
    ) or _unreachable(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class _Replica:
    """Health and lag of one replica (shared by the domains that use the same pair of URLs)."""

    def __init__(self, registry: EngineRegistry, domain: str) -> None:
        self.domains = [domain]
        self._registry = registry
        settings = registry.settings.replicas
        self._settings = settings
        self._tracker = LagTracker(window_seconds=max(30.0, 3 * settings.max_lag_seconds))
        self.reading: LagReading | None = None
        self._checked_at = -math.inf  # monotonic
        self._down_until = -math.inf  # monotonic
        self.last_error: str | None = None
        self._lagging = False
        self._lock: asyncio.Lock | None = None

    # Engines come from the registry at each use: it may dispose and re-create them.
    @property
    def primary(self) -> AsyncEngine:
        return self._registry.engine(self.domains[0])

    @property
    def replica(self) -> AsyncEngine:
        return self._registry.engine(self.domains[0], "replica")

    def primary_session(self) -> AsyncSession:
        return self._registry.sessionmaker(self.domains[0])()

    def replica_session(self) -> AsyncSession:
        return self._registry.sessionmaker(self.domains[0], "replica")()

    @property
    def breaker_open(self) -> bool:
        return time.monotonic() < self._down_until

    def mark_down(self, exc: BaseException) -> None:
        """Opens the breaker: the replica failed; reads use the primary for ``retry_seconds``."""
        was_up = not self.breaker_open and self.last_error is None
        self._down_until = time.monotonic() + self._settings.retry_seconds
        self.last_error = _one_line(exc)
        self.reading = None
        self._checked_at = -math.inf  # measure again as soon as the breaker closes
        for domain in self.domains:
            metrics.REPLICA_ERRORS.labels(domain).inc()
            metrics.REPLICA_UP.labels(domain).set(0)
        if was_up:
            log.warning(
                "read replica of %s failed (%s): its reads go to the primary; trying it again in"
                " %.0f s",
                ", ".join(self.domains),
                self.last_error,
                self._settings.retry_seconds,
            )

    async def current(self) -> LagReading | None:
        """Returns the latest reading, measuring again when it is older than ``check_seconds``.

        Returns:
            The reading, or ``None`` if the replica could not be measured (breaker now open).
        """
        if time.monotonic() - self._checked_at < self._settings.check_seconds:
            return self.reading
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one measurement at a time; the others use its result
            if time.monotonic() - self._checked_at < self._settings.check_seconds:
                return self.reading
            try:
                self.reading = await self._measure()
            except Exception as exc:
                self.mark_down(exc)  # measured again once the breaker closes
                return None
            self._checked_at = time.monotonic()
            self._record(self.reading)
            return self.reading

    async def _measure(self) -> LagReading:
        timeout = self._settings.connect_timeout_seconds
        at = time.time()
        primary_lsn: int | None = None
        try:
            async with asyncio.timeout(timeout):
                async with self.primary.connect() as conn:
                    value = (await conn.execute(_PRIMARY_LSN)).scalar()
            primary_lsn = parse_lsn(value) if value else None
        except Exception as exc:
            # The primary's own outage is reported where the primary is used; any other failure
            # (a role not allowed to read the position...) must not leave the lag unbounded.
            if not _unreachable(exc):
                raise
            log.debug("replica check: primary position unavailable: %s", _one_line(exc))
        async with asyncio.timeout(timeout):
            async with self.replica.connect() as conn:
                in_recovery, replay, replay_time = (await conn.execute(_REPLICA_STATE)).one()
        return self._tracker.observe(
            at,
            primary_lsn,
            in_recovery=bool(in_recovery),
            replay_lsn=parse_lsn(replay) if replay else None,
            replay_time=replay_time,
        )

    def _record(self, reading: LagReading) -> None:
        if self.last_error is not None:
            log.info("read replica of %s answers again", ", ".join(self.domains))
            self.last_error = None
        lagging = reading.lag_seconds > self._settings.max_lag_seconds
        if lagging != self._lagging:
            self._lagging = lagging
            log.info(
                "read replica of %s is %s (lag %.1f s, limit %.1f s)",
                ", ".join(self.domains),
                "behind: its reads go to the primary" if lagging else "within the lag limit",
                reading.lag_seconds,
                self._settings.max_lag_seconds,
            )
        lag = reading.lag_seconds if math.isfinite(reading.lag_seconds) else float("nan")
        for domain in self.domains:
            metrics.REPLICA_UP.labels(domain).set(1)
            metrics.REPLICA_LAG.labels(domain).set(lag)
            metrics.REPLICA_LAG_BYTES.labels(domain).set(reading.lag_bytes)

    async def choose(self) -> tuple[Target, Reason | None]:
        """Picks the database for one replica read.

        Returns:
            ``(target, reason)``: the reason is set when the primary serves instead.
        """
        if self.breaker_open:
            return "primary", "breaker_open"
        reading = await self.current()
        if reading is None:
            return "primary", "unreachable"
        fence = read_fence.get()
        if not reading.primary_reachable:
            # The primary is down: the replica is the best there is (nothing new is being
            # written), unless the caller needs a write the replica cannot be shown to have.
            return ("primary", "read_your_writes") if fence is not None else ("replica", None)
        if reading.lag_seconds > self._settings.max_lag_seconds:
            return "primary", "lag"
        if fence is not None and reading.fresh_as_of < fence:
            return "primary", "read_your_writes"
        return "replica", None

    def status(self) -> str:
        """One line for ``/readyz``: ``ok``, ``unreachable: ...`` or ``behind: ...``."""
        if self.breaker_open or self.last_error is not None:
            return f"unreachable: {self.last_error}"
        reading = self.reading
        if reading is None:
            return "not checked yet"
        if reading.lag_seconds > self._settings.max_lag_seconds:
            return (
                f"behind: lag {reading.lag_seconds:.1f} s > {self._settings.max_lag_seconds:g} s;"
                " reads go to the primary"
            )
        return "ok"


class ReplicaSessionSource:
    """Opens the read transactions of one domain on its replica or, when needed, its primary."""

    def __init__(self, domain: str, replica: _Replica) -> None:
        """Creates the source.

        Args:
            domain: The domain (metrics label, error messages).
            replica: Shared health and lag of the domain's replica.
        """
        self.domain = domain
        self._replica = replica

    async def open_session(self) -> AsyncSession:
        """Returns a session with its transaction begun on a checked-out connection of the
        chosen database.

        Returns:
            The session.

        Raises:
            Unavailable: If the primary is needed and cannot be reached.
        """
        target, reason = await self._replica.choose()
        if target == "replica":
            session = self._replica.replica_session()
            try:
                await session.begin()
                await session.connection()  # connect now: fall back before anything is read
            except Exception as exc:
                await session.close()
                self._replica.mark_down(exc)
                reason = "unreachable"
            else:
                metrics.REPLICA_READS.labels(self.domain, "replica").inc()
                return session
        assert reason is not None
        metrics.REPLICA_FALLBACKS.labels(self.domain, reason).inc()
        # Primaries' pools do not pre-ping (the hot path's round trips): on this rare path a
        # pooled connection is checked with one SELECT, so a primary that restarted (its old
        # connections dropped) or is down is told here, not by the read, and a dropped
        # connection is replaced once.
        for last_try in (False, True):
            session = self._replica.primary_session()
            try:
                await session.begin()
                await session.execute(sqlalchemy.text("SELECT 1"))
            except Exception as exc:
                await session.close()
                if not _unreachable(exc):
                    raise
                if last_try:
                    raise self._primary_down(reason, exc) from exc
            else:
                metrics.REPLICA_READS.labels(self.domain, "primary").inc()
                return session
        raise AssertionError("unreachable")  # pragma: no cover

    def _primary_down(self, reason: Reason, exc: BaseException) -> Unavailable:
        why = {
            "unreachable": "its read replica is unreachable too",
            "breaker_open": "its read replica is unreachable too",
            "lag": "its read replica is too far behind to serve this read",
            "read_your_writes": "its read replica has not replayed this caller's latest write",
        }[reason]
        log.warning("%s primary database unreachable (%s) and %s", self.domain, _one_line(exc), why)
        return Unavailable(
            f"the {self.domain} primary database is unreachable and {why}; retry later",
            reason="DEPENDENCY_UNAVAILABLE",
            metadata={
                "dependency": "database",
                "domain": self.domain,
                "role": "primary",
                "replica": reason,
            },
        )

    def session_failed(self, session: AsyncSession, exc: BaseException) -> None:
        """Counts a failed read on the replica; a lost connection opens the breaker.

        Args:
            session: A session from :meth:`open_session`.
            exc: What ended its unit of work.
        """
        if session.bind is not self._replica.replica or not _database_error(exc):
            return
        if _unreachable(exc):
            self._replica.mark_down(exc)
        else:
            metrics.REPLICA_ERRORS.labels(self.domain).inc()


class ReplicaRouter:
    """Replica routing for every domain of a process (one per process, like the engines)."""

    def __init__(self, registry: EngineRegistry) -> None:
        """Creates the router; domains without a replica of their own are not routed.

        Args:
            registry: The process's engines (and settings).
        """
        settings = registry.settings
        self._replicas: dict[str, _Replica] = {}
        shared: dict[tuple[str, str], _Replica] = {}
        for domain in DOMAINS:
            try:
                if not settings.has_replica(domain):
                    continue
            except ConfigError:  # no database configured yet: nothing to route (checked on use)
                continue
            key = (registry.url(domain), registry.url(domain, "replica"))
            replica = shared.get(key)
            if replica is None:
                replica = shared[key] = _Replica(registry, domain)
            elif domain not in replica.domains:
                replica.domains.append(domain)
            self._replicas[domain] = replica

    @property
    def domains(self) -> list[str]:
        """Domains that have a read replica."""
        return list(self._replicas)

    def source(self, domain: str) -> ReplicaSessionSource | None:
        """Returns the session source of ``domain``'s replica reads.

        Args:
            domain: The domain.

        Returns:
            The source, or ``None`` if the domain has no replica (its reads use the primary).
        """
        replica = self._replicas.get(domain)
        return None if replica is None else ReplicaSessionSource(domain, replica)

    async def status(self) -> dict[str, str]:
        """Checks every replica now (within ``check_seconds`` the last check counts).

        Returns:
            ``{domain: "ok" | "unreachable: ..." | "behind: ..."}`` for domains with a replica.
        """
        out: dict[str, str] = {}
        for domain, replica in self._replicas.items():
            if not replica.breaker_open:
                await replica.current()
            out[domain] = replica.status()
        return out
