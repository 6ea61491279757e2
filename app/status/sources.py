"""Reads of the running system that ``conveyor status``, ``GET /v1/system/status`` and
``conveyor metrics`` share: the messages waiting in each broker queue, and which beat holds the
leader lease.

Each caller keeps its own output and error handling (a status screen, a JSON document, gauges);
this module only reads. Broker and database clients are imported when first used, so importing it
stays cheap for the CLI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings
    from app.db import EngineRegistry
    from domains.platform.schedules.model import BeatNode, LeaderLease

# The exporter's logger: these debug lines were its own before the reads moved here.
log = logging.getLogger("conveyor.metrics")

REDIS_SCHEMES = ("redis://", "rediss://")
"""Broker URL prefixes read with Redis ``LLEN``."""

AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
"""Broker URL prefixes :func:`queue_depths` reads with a passive ``queue.declare``."""


# ------------------------------------------------------------------------------ queue depths


def redis_queue_depths(
    broker_url: str, queues: Sequence[str], timeout: float, *, unacked: bool = False
) -> tuple[dict[str, int], int | None]:
    """Counts the messages waiting in each queue of a Redis broker, in one round trip.

    kombu keeps one list per priority step (``<queue>``, then ``<queue>`` with kombu's separator
    and the step appended): a queue's depth is the sum of their ``LLEN``.

    Args:
        broker_url: ``redis://`` or ``rediss://`` URL.
        queues: Queue names.
        timeout: Connect/socket timeout in seconds.
        unacked: Also count the messages delivered to a worker and not yet acknowledged
            (``HLEN unacked``).

    Returns:
        ``({queue: depth}, unacked count)``; the count is None unless ``unacked`` is set.
    """
    import redis
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    def names(queue: str) -> list[str]:
        return [queue if not pri else f"{queue}{Channel.sep}{pri}" for pri in PRIORITY_STEPS]

    client = redis.Redis.from_url(
        broker_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for name in names(queue):
                    pipe.llen(name)
            if unacked:
                pipe.hlen("unacked")
            sizes = pipe.execute()
    finally:
        client.close()
    steps = len(PRIORITY_STEPS)
    depths = {q: int(sum(sizes[i * steps : (i + 1) * steps])) for i, q in enumerate(queues)}
    return depths, (int(sizes[-1]) if unacked else None)


def amqp_queue_depths(
    broker_url: str,
    queues: Sequence[str],
    timeout: float,
    *,
    absent: tuple[type[BaseException], ...],
) -> dict[str, int | None]:
    """Counts the messages waiting in each queue with a passive ``queue.declare`` (kombu).

    Args:
        broker_url: A kombu broker URL (``amqp://`` and the like).
        queues: Queue names.
        timeout: Connect timeout in seconds.
        absent: Errors of a queue's passive declare that mean "this queue is not there" (its
            depth is None); any other error propagates.

    Returns:
        ``{queue: depth}``, None for a queue whose declare raised one of ``absent``.

    Raises:
        kombu.exceptions.OperationalError: If the broker cannot be reached.
    """
    import kombu

    connection_cls: Any = getattr(kombu, "Connection")  # noqa: B009 - kombu is untyped
    depths: dict[str, int | None] = {}
    with connection_cls(broker_url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        for queue in queues:
            # A failed passive declare closes the channel: one channel per queue.
            channel = conn.channel()
            try:
                _, count, _ = channel.queue_declare(queue=queue, passive=True)
                depths[queue] = int(count)
            except absent:
                depths[queue] = None
            finally:
                try:
                    channel.close()
                except Exception:
                    log.debug("closing channel failed", exc_info=True)
    return depths


def queue_depths(broker_url: str, queues: Sequence[str], timeout: float = 5.0) -> dict[str, int]:
    """Counts the messages waiting in each queue (not those already delivered to a worker).

    Redis: ``LLEN`` of the queue's list and of its priority lists (kombu's layout). RabbitMQ: the
    ``message_count`` of a passive ``queue.declare``; a queue that does not exist is left out.

    Args:
        broker_url: ``redis://``, ``rediss://`` or ``amqp://`` URL.
        queues: Queue names.
        timeout: Connect/socket timeout in seconds.

    Returns:
        ``{queue: depth}``.

    Raises:
        ValueError: For another kind of broker.
    """
    if broker_url.startswith(REDIS_SCHEMES):
        return redis_queue_depths(broker_url, queues, timeout)[0]
    if broker_url.startswith(AMQP_SCHEMES):
        from amqp.exceptions import NotFound

        depths: dict[str, int] = {}
        for queue, count in amqp_queue_depths(
            broker_url, queues, timeout, absent=(NotFound,)
        ).items():
            if count is None:
                log.debug("queue %s does not exist", queue)
            else:
                depths[queue] = count
        return depths
    raise ValueError(f"queue depth: unsupported broker {broker_url.split(':', 1)[0]}://")


def unreachable_reason(exc: BaseException) -> str:
    """A one-line reason for a failed read, for people (no traceback, at most 200 chars).

    Args:
        exc: The error.

    Returns:
        ``connection refused`` for a refused connection, else the error's first line.
    """
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:200]


def queue_depths_for_status(broker_url: str, queues: list[str], timeout: float) -> dict[str, Any]:
    """Messages waiting per queue, as the status screens show them.

    Redis: ``LLEN`` over kombu's priority lists, plus ``"_unacked"`` (delivered, not acked).
    AMQP: a passive declare per queue; a queue whose declare fails reads ``"not declared"``.

    Args:
        broker_url: The broker URL.
        queues: Queue names.
        timeout: Connect/socket timeout in seconds.

    Returns:
        ``{queue: count or "not declared"}`` (and ``"_unacked"`` on Redis).

    Raises:
        ConnectionError: If an AMQP broker cannot be reached.
    """
    if broker_url.startswith(REDIS_SCHEMES):
        waiting, unacked = redis_queue_depths(broker_url, queues, timeout, unacked=True)
        return {**waiting, "_unacked": unacked}
    from kombu.exceptions import OperationalError

    try:
        # Any error of a queue's passive declare (NOT_FOUND closes the channel): not declared yet.
        counts = amqp_queue_depths(broker_url, queues, timeout, absent=(Exception,))
    except OperationalError as exc:
        raise ConnectionError(str(exc)) from None
    return {queue: "not declared" if count is None else count for queue, count in counts.items()}


def live_workers(celery: Any, timeout: float) -> dict[str, list[str]]:
    """The workers answering a ping within ``timeout``, with the queues each consumes.

    Args:
        celery: A Celery app on the broker.
        timeout: Seconds to wait for the replies.

    Returns:
        ``{worker: [queues]}``.
    """
    pongs = celery.control.inspect(timeout=timeout).ping() or {}
    if not pongs:
        return {}
    names = sorted(pongs)
    queues = (
        celery.control.inspect(destination=names, timeout=timeout, limit=len(names)).active_queues()
        or {}
    )
    return {name: sorted(q.get("name", "?") for q in queues.get(name) or []) for name in names}


# ------------------------------------------------------------------------------ beat leader


@dataclasses.dataclass(frozen=True)
class BeatLeadership:
    """The beat leader lease and the beats seen recently, as ``conveyor beat`` writes them.

    Attributes:
        lease: The lease row (possibly expired), or None if no beat ever took it.
        nodes: The beats whose heartbeat is recent (within two lease periods).
    """

    lease: LeaderLease | None
    nodes: list[BeatNode]

    @property
    def leader(self) -> LeaderLease | None:
        """The lease while it is held (unexpired), else None: no beat leads."""
        return self.lease if self.lease is not None and self.lease.valid else None

    def leads(self, node: BeatNode) -> bool:
        """Whether ``node`` holds the unexpired lease.

        Args:
            node: A beat of :attr:`nodes`.

        Returns:
            True for the leader's process.
        """
        leader = self.leader
        return leader is not None and node.holder == leader.holder


async def read_beat_leadership(
    registry: EngineRegistry, settings: Settings, *, lease_timeout: float | None = None
) -> BeatLeadership:
    """Reads the leader lease and the recent beats (platform schema).

    Args:
        registry: Engines; the platform database's primary is read.
        settings: Settings (the lease name and period).
        lease_timeout: Seconds the lease read may take (None: no bound of its own).

    Returns:
        The lease and the beats seen within two lease periods (older heartbeats are deleted).

    Raises:
        Exception: Whatever the database raises (callers report it as unreachable).
    """
    from domains.platform.schedules.repository import SqlBeatRepository

    async with registry.sessionmaker("platform")() as session:
        repo = SqlBeatRepository(session)
        lease = await asyncio.wait_for(
            repo.lease(settings.schedules.leader_name), timeout=lease_timeout
        )
        nodes = await repo.nodes(seen_within=settings.schedules.lease_seconds * 2)
    return BeatLeadership(lease, nodes)
