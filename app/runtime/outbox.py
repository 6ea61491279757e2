"""Publishing outbox rows to the broker: the fast path after commit, and the relay."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename

from app.adapters.celery_app import create_celery
from app.config import DOMAINS, Settings
from app.db import EngineRegistry
from app.wiring import domain_tables, subscribers
from domains.operations.service import OperationsService
from domains.shared.clock import utcnow
from domains.shared.driver import autocommit_connection
from domains.shared.events import EVENT_TASK, handler_task_name
from domains.shared.inbox import InboxEntry, SqlInboxRepository
from domains.shared.outbox import OutboxMessage, SqlOutboxRepository
from monitoring.redaction import redacted_repr, task_reprs

log = logging.getLogger(__name__)
_TABLES = domain_tables()
"""Each domain's tables (outbox, inbox), from the one list of domains."""

BROKER_EPOCH_KEY = "conveyor:broker-epoch"
"""Redis key every publisher sets when it declares the queues. A broker that loses it (FLUSHALL,
a restart without persistence) lost every message too: the relay then re-dispatches the pending
operations at once instead of after their deadline."""
# RabbitMQ's counterpart of the epoch key: a durable queue that nothing consumes. A restart keeps
# it (and the durable task queues with their persistent messages); a reset or a lost node
# deletes it with everything else.
BROKER_EPOCH_QUEUE = "conveyor.broker-epoch"


def workflow_reprs(message: OutboxMessage) -> tuple[str, str] | None:
    """Names a workflow's first task for people: ``operation``, ``target`` and its labels.

    A workflow task's one argument is its operation id, a bare UUID in Flower. Shown instead (as
    Celery's ``argsrepr``/``kwargsrepr``, never as the arguments themselves)::

        {'operation': 'operations/imports.0192...', 'dataset': 'Orders', 'source': ..., ...}

    Args:
        message: The outbox message.

    Returns:
        ``(argsrepr, kwargsrepr)``, or None for other tasks.
    """
    operation = message.headers.get("operation")
    if not operation or message.args != [message.task_id] or message.kwargs:
        return None
    labels = message.headers.get("display") or {}
    shown = {"operation": operation, **{str(k): str(v) for k, v in dict(labels).items()}}
    return "()", redacted_repr(shown)


_SendOutcome = tuple[list[uuid.UUID], list[tuple[uuid.UUID, str]]]
"""Ids sent, and (id, error) of those not sent."""

_StartedSend = tuple[str, list[OutboxMessage], "asyncio.Future[_SendOutcome]"]
"""A fast-path send already under way: (domain, rows, the thread's future)."""


def _due(messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
    """The rows the fast path may publish now (delayed ones wait for the relay)."""
    now = utcnow()
    return [m for m in messages if m.available_time is None or m.available_time <= now]


class OutboxPublisher:
    """Publishes outbox rows and marks them sent.

    The relay claims due rows (``FOR UPDATE SKIP LOCKED``), publishes them and marks them sent in
    one transaction per batch. The fast path publishes the rows a commit just wrote from memory
    and marks them sent in one statement. Either way a crash before the mark leaves them unsent
    for the next relay, and a repeat is harmless (task ids are operation ids, writes are fenced).
    """

    def __init__(
        self, registry: EngineRegistry, settings: Settings, celery: Celery | None = None
    ) -> None:
        """Creates the publisher.

        Args:
            registry: Engines.
            settings: Broker and relay settings.
            celery: Publish-only Celery app (default: built from ``settings`` without results).
        """
        self._registry = registry
        self._celery = celery or create_celery(settings, results=False)
        self._settings = settings
        self.enabled = settings.fast_path_publish
        # After a failed publish the fast path stands aside for a while (the relay owns the
        # backlog), so an outage does not add a connect timeout to every request.
        self._fast_path_paused_until = 0.0
        self._declared = False
        self._pending: dict[str, list[OutboxMessage]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._declare_lock = threading.Lock()
        self._amqp_armed = False  # set by the first RabbitMQ broker watch
        self._known_queues = frozenset(q.name for q in self._celery.conf.task_queues or ())
        # The router's answer that send_task works out on every call from the task's name
        # and queue only, worked out once per pair (None: send_task itself); see _route.
        self._routes: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._origin: tuple[int, str] | None = None

    def _declare_once(self) -> None:
        # Declare every queue before the first publish: with Redis, a message published to the
        # exchange before its queue binding exists is silently dropped, and concurrent first
        # publishes from several threads race on that declaration.
        if self._declared:
            return
        with self._declare_lock:
            if self._declared:
                return
            with self._celery.connection_for_write() as conn:
                conn.ensure_connection(
                    max_retries=1, timeout=self._settings.broker_connect_timeout_seconds
                )
                channel = conn.default_channel
                for queue in self._celery.conf.task_queues:
                    queue(channel).declare()
                if conn.transport.driver_type == "redis":
                    channel.client.set(BROKER_EPOCH_KEY, uuid.uuid4().hex, nx=True)
                elif conn.transport.driver_type == "amqp":
                    channel.queue_declare(queue=BROKER_EPOCH_QUEUE, durable=True, auto_delete=False)
            self._declared = True

    def _redeclare(self) -> None:
        # The broker lost its queues (and bindings): declare everything again.
        with self._declare_lock:
            self._declared = False
        self._declare_once()

    @staticmethod
    def _amqp_epoch_missing(conn: Any) -> bool:
        # A passive declare of a missing queue closes its channel: use a channel of its own.
        channel = conn.channel()
        try:
            channel.queue_declare(queue=BROKER_EPOCH_QUEUE, passive=True)
            return False
        except conn.channel_errors:
            return True
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def _amqp_broker_wiped(self, conn: Any) -> bool:
        missing = self._amqp_epoch_missing(conn)
        armed, self._amqp_armed = self._amqp_armed, True
        if not armed:
            log.info("broker watch armed (RabbitMQ epoch queue %s)", BROKER_EPOCH_QUEUE)
        if not missing:
            return False
        self._redeclare()
        if not armed:
            return False  # see broker_wiped: a wipe before this process started is not ours
        log.warning("the broker lost its state (queue %s is gone)", BROKER_EPOCH_QUEUE)
        return True

    def broker_wiped(self) -> bool:
        """Tells whether the broker lost its state since the last call (Redis: the epoch key
        is gone or was replaced), and re-declares the queues if so (their bindings went too,
        and publishes to an unbound exchange are dropped).

        The first call only arms the watch: it remembers the epoch, or sets one on a broker
        that has none. A broker found without an epoch at start is not counted as wiped:
        another relay may be publishing its first rows at that very moment (re-dispatching
        them would send each twice), and whatever a wipe before this process started lost is
        recovered by the pending deadline. RabbitMQ keeps durable queues and persistent
        messages across restarts; a reset deletes them, and the durable ``conveyor.broker-epoch``
        queue with them, which is what is watched there.

        Returns:
            ``True`` if the messages published before now may be gone.
        """
        with self._celery.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, timeout=self._settings.broker_connect_timeout_seconds
            )
            if conn.transport.driver_type == "amqp":
                return self._amqp_broker_wiped(conn)
            if conn.transport.driver_type != "redis":
                return False
            client = conn.default_channel.client
            raw = client.get(BROKER_EPOCH_KEY)
            epoch = raw.decode() if isinstance(raw, bytes) else raw
            seen, self._epoch = getattr(self, "_epoch", None), epoch
            if epoch is not None and seen is None:
                log.info("broker watch armed (epoch %s)", epoch)
                return False
            if epoch is not None and seen == epoch:
                return False
        # Gone (or replaced by another relay that saw the wipe first): declare again.
        self._redeclare()
        with self._celery.connection_for_write() as conn:
            raw = conn.default_channel.client.get(BROKER_EPOCH_KEY)
            self._epoch = raw.decode() if isinstance(raw, bytes) else raw
        if seen is None:
            log.info("broker watch armed (the broker had no epoch: set %s)", self._epoch)
            return False
        log.warning("the broker lost its state (epoch %s -> %s)", seen, epoch)
        return True

    def _send(self, message: OutboxMessage, producer: Any = None) -> None:
        if message.task_name == EVENT_TASK:
            self._fan_out(message, producer)
            return
        # Flower, task events and worker logs show these reprs instead of the real arguments.
        argsrepr, kwargsrepr = workflow_reprs(message) or task_reprs(message.args, message.kwargs)
        self._send_task(
            producer,
            message.task_name,
            message.queue,
            args=message.args,
            kwargs=message.kwargs,
            task_id=message.task_id,
            headers=dict(message.headers),
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
        )

    def _send_task(
        self,
        producer: Any,
        name: str,
        queue: str,
        *,
        args: Any,
        kwargs: Any,
        task_id: str,
        headers: dict[str, Any],
        argsrepr: str,
        kwargsrepr: str,
    ) -> None:
        """Publishes like ``send_task(..., queue=queue, routing_key=queue, retry=False)``.

        The message is built and sent by the same Celery calls (``create_task_message``,
        ``send_task_message``: signals, delivery mode, task-sent events as configured), but
        what ``send_task`` works out per call from the name and queue alone is reused and the
        ``AsyncResult`` nobody reads is not built: CPU per message in batches of 50 on Redis
        went from 84 to 58 us for an event, 96 to 69 us for a workflow task (one per submit,
        one per webhook outcome). ``send_task`` itself still sends what this cannot reuse (no
        producer, a queue not configured).
        """
        app = self._celery
        options: dict[str, Any] = {
            "queue": queue,
            "routing_key": queue,
            "headers": headers,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "retry": False,
            "declare": self._declare_for(queue),
        }
        route = self._route(name, queue) if producer is not None else None
        if route is None:
            app.send_task(
                name, args=args, kwargs=kwargs, task_id=task_id, producer=producer, **options
            )
            return
        options = {**route, **options, "queue": route["queue"]}
        parent = app.current_worker_task
        root_id = parent_id = None
        if parent:
            root_id, parent_id = parent.request.root_id or parent.request.id, parent.request.id
            if app.conf.task_inherit_parent_priority:
                options.setdefault("priority", parent.request.delivery_info.get("priority"))
        app.backend.on_task_call(producer, task_id)  # a no-op without a result backend
        message = app.amqp.create_task_message(
            task_id,
            name,
            args,
            kwargs,
            None,  # countdown
            None,  # eta
            None,  # group_id
            None,  # group_index
            None,  # expires
            0,  # retries
            None,  # chord
            None,  # link
            None,  # link_error
            app.thread_oid,  # reply_to
            None,  # time_limit: the worker's (see _route)
            None,  # soft_time_limit
            app.conf.task_send_sent_event,
            root_id,
            parent_id,
            None,  # shadow
            None,  # chain
            ignore_result=None,
            origin=self._nodename(),
            **options,
        )
        app.amqp.send_task_message(producer, name, message, **options)

    def _route(self, name: str, queue: str) -> dict[str, Any] | None:
        # send_task's routing for a name and an explicit queue (route_task routes by name
        # alone), worked out once. No task options: this publish-only app is never finalized,
        # so send_task found no registered task in it and sent none of the publishing
        # process's options; time limits and the like are the worker's own (its
        # CONVEYOR_TASK_TIME_LIMITS), and must stay so.
        key = (name, queue)
        if key in self._routes:
            return self._routes[key]
        route: dict[str, Any] | None = None
        if queue in self._known_queues:
            options = self._celery.amqp.router.route(
                {"queue": queue, "routing_key": queue}, name, (), {}, None
            )
            if not options.get("stamped_headers"):
                route = options
        self._routes[key] = route
        return route

    def _nodename(self) -> str:
        # The message's origin, as send_task gives it (gen<pid>@<host>), once per process.
        pid = os.getpid()
        if self._origin is None or self._origin[0] != pid:
            self._origin = (pid, anon_nodename())
        return self._origin[1]

    def _declare_for(self, queue: str) -> list[Any] | None:
        # The queues of the configuration were declared by _declare_once (and again after a
        # broker wipe): no per-message declare, which costs kombu a bound copy of the queue
        # per publish. Any other queue is declared by Celery as usual (None).
        return [] if queue in self._known_queues else None

    def _fan_out(self, message: OutboxMessage, producer: Any = None) -> None:
        # One integration event -> one handle_event task per subscribing domain. If a send
        # fails midway the row stays unsent and the whole fan-out repeats: consumers dedupe
        # by event id, and the task id per (event, domain) is stable.
        event = message.kwargs["event"]
        for domain in subscribers(str(event["type"])):
            self._send_task(
                producer,
                handler_task_name(domain),
                domain,
                args=None,
                kwargs={"event": event},
                task_id=f"{event['id']}.{domain}",
                headers=dict(message.headers),
                argsrepr="()",
                kwargsrepr=f"{{'event': {event['type']} {event['id']}}}",
            )

    def _send_all(self, messages: Sequence[OutboxMessage]) -> _SendOutcome:
        try:
            self._declare_once()
        except Exception as exc:
            return [], [(m.id, f"{type(exc).__name__}: {exc}") for m in messages]
        # One pipeline for the batch (kombu's Producer.batch: Redis sends the LPUSHes in one
        # write; other transports publish each at once). A failure anywhere leaves the whole
        # batch unsent: the relay publishes it again, and a repeat is harmless (task ids are
        # operation ids, and every write is fenced).
        try:
            with self._celery.producer_or_acquire() as producer, producer.batch():
                for message in messages:
                    self._send(message, producer)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            return [], [(m.id, error) for m in messages]
        return [m.id for m in messages], []

    async def _receive_events(
        self, messages: Sequence[OutboxMessage]
    ) -> tuple[list[OutboxMessage], list[tuple[uuid.UUID, str]]]:
        """Writes a PENDING inbox row per (event, consumer) in each consumer's database before
        the events are sent, so the inbox sweeper re-dispatches whatever the broker loses.

        Returns the messages still to send and the event rows whose inbox write failed (left
        unsent: the relay tries again; the inbox insert is idempotent).
        """
        by_consumer: dict[str, list[InboxEntry]] = {}
        consumers_of: dict[uuid.UUID, set[str]] = {}
        for message in messages:
            if message.task_name != EVENT_TASK:
                continue
            event = message.kwargs["event"]
            for consumer in subscribers(str(event["type"])):
                if _TABLES[consumer].inbox is None:
                    continue
                entry = InboxEntry(
                    event_id=uuid.UUID(str(event["id"])),
                    consumer=consumer,
                    event_type=str(event["type"]),
                    envelope=event,
                )
                by_consumer.setdefault(consumer, []).append(entry)
                consumers_of.setdefault(message.id, set()).add(consumer)
        if not by_consumer:
            return list(messages), []
        broken: dict[str, str] = {}
        for consumer, entries in by_consumer.items():
            inbox = _TABLES[consumer].inbox
            assert inbox is not None
            try:
                async with self._registry.sessionmaker(consumer)() as session, session.begin():
                    await SqlInboxRepository(session, inbox).receive(entries, utcnow())
            except Exception as exc:
                broken[consumer] = f"inbox of {consumer}: {type(exc).__name__}: {exc}"
        if not broken:
            return list(messages), []
        keep: list[OutboxMessage] = []
        failed: list[tuple[uuid.UUID, str]] = []
        for message in messages:
            bad = sorted(consumers_of.get(message.id, set()) & set(broken))
            if bad:
                failed.append((message.id, broken[bad[0]]))
            else:
                keep.append(message)
        return keep, failed

    async def _publish(self, domain: str, limit: int) -> tuple[int, int]:
        # The relay: claims due rows older than the grace period (younger ones are the fast
        # path's), publishes them and marks them sent in one transaction.
        tables = _TABLES[domain]
        maker = self._registry.sessionmaker(domain)
        grace = dt.timedelta(seconds=self._settings.relay_grace_seconds)
        # Idle polls (the usual case: the fast path published everything) cost one indexed
        # probe in autocommit, not a transaction around a locking claim.
        async with autocommit_connection(maker.kw["bind"]) as conn:
            if not await SqlOutboxRepository(conn, tables.outbox).has_due(grace):
                return 0, 0
        async with maker() as session, session.begin():
            repo = SqlOutboxRepository(session, tables.outbox)
            claimed = await repo.claim(limit=limit, grace=grace)
            if not claimed:
                return 0, 0
            messages, unreceived = await self._receive_events(claimed)
            sent, failed = await asyncio.to_thread(self._send_all, messages)
            failed += unreceived
            await repo.mark_sent(sent, utcnow())
            for message_id, error in failed:
                attempts = next(m.publish_attempts for m in claimed if m.id == message_id)
                delay = min(60.0, 0.5 * 2**attempts) * random.uniform(0.5, 1.0)
                await repo.mark_failed(message_id, error, utcnow() + dt.timedelta(seconds=delay))
            if failed:
                log.warning(
                    "outbox %s: %d rows not published: %s", domain, len(failed), failed[0][1]
                )
        return len(sent), len(failed)

    async def publish_now(
        self, domain: str, messages: list[OutboxMessage], /, *, urgent: bool = False
    ) -> None:
        """The fast path: hands rows a commit just wrote to the background publisher.

        The caller does not wait for the broker: the commit already made the work durable, and
        rows that concurrent requests commit meanwhile go out in the same batch (one thread hop,
        one broker pipeline, one UPDATE marking them sent). Rows not published (crash, broker
        down) stay unsent for the relay.

        Args:
            domain: The domain whose outbox holds the rows.
            messages: The rows, as written.
            urgent: The commit was a lone submit's (nothing else committing alongside): when
                the publisher is idle, the send starts on its thread right now, while the
                request writes its answer, instead of after it (about 1 ms sooner at low load;
                under load commits are grouped and batch as before).
        """
        if not self.enabled or time.monotonic() < self._fast_path_paused_until:
            return
        idle = not self._pending and not self.busy
        if urgent and idle and not any(m.task_name == EVENT_TASK for m in messages):
            due = _due(messages)
            if due and len(due) == len(messages) and len(due) <= self._settings.relay_batch_size:
                loop = asyncio.get_running_loop()
                sending = loop.run_in_executor(None, self._send_all, due)
                self._drainer = loop.create_task(self._drain_pending((domain, due, sending)))
                return
        self._pending.setdefault(domain, []).extend(messages)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain_pending())

    async def _drain_pending(self, started: _StartedSend | None = None) -> None:
        if started is not None:
            domain, due, sending = started
            try:
                if await self._publish_written(domain, due, sending=sending):
                    self._fast_path_paused_until = time.monotonic() + 5.0
            except Exception:
                log.warning("fast-path publish failed; the relay will publish", exc_info=True)
        await asyncio.sleep(0)  # let requests committing right now join this batch
        while self._pending:
            domain, messages = self._pending.popitem()
            due = _due(messages)
            try:
                for start in range(0, len(due), self._settings.relay_batch_size):
                    chunk = due[start : start + self._settings.relay_batch_size]
                    if await self._publish_written(domain, chunk):
                        self._fast_path_paused_until = time.monotonic() + 5.0
            except Exception:
                log.warning("fast-path publish failed; the relay will publish", exc_info=True)

    async def _publish_written(
        self,
        domain: str,
        written: Sequence[OutboxMessage],
        *,
        sending: asyncio.Future[_SendOutcome] | None = None,
    ) -> int:
        """Publishes rows a commit just wrote, from memory (no claim), and marks them sent.

        Args:
            domain: The domain whose outbox holds the rows.
            written: The rows.
            sending: Their send, already started on a thread (rows without events).

        Returns:
            How many failed (left unsent, with a retry time, for the relay).
        """
        if sending is not None:
            sent, failed = await sending
        else:
            messages, unreceived = await self._receive_events(written)
            sent, failed = await asyncio.to_thread(self._send_all, messages)
            failed += unreceived
        tables = _TABLES[domain]
        if sent:
            # One statement in autocommit: no claim, no transaction around the publish.
            engine = self._registry.sessionmaker(domain).kw["bind"]
            # By primary key (id = ANY): a generic plan, not one planned per batch.
            async with autocommit_connection(engine, generic_plans=True) as conn:
                await SqlOutboxRepository(conn, tables.outbox).mark_sent(sent, utcnow())
        if failed:
            attempts = {m.id: m.publish_attempts for m in written}
            async with self._registry.sessionmaker(domain)() as session, session.begin():
                repo = SqlOutboxRepository(session, tables.outbox)
                for message_id, error in failed:
                    delay = min(60.0, 0.5 * 2 ** attempts[message_id]) * random.uniform(0.5, 1.0)
                    await repo.mark_failed(
                        message_id, error, utcnow() + dt.timedelta(seconds=delay)
                    )
            log.warning("outbox %s: %d rows not published: %s", domain, len(failed), failed[0][1])
        return len(failed)

    @property
    def busy(self) -> bool:
        """Whether a fast-path publish is under way (its background task has not finished)."""
        return self._drainer is not None and not self._drainer.done()

    async def drain(self) -> None:
        """Waits until the fast path has published what it was handed (shutdown, tests)."""
        while self._drainer is not None and not self._drainer.done():
            await asyncio.shield(self._drainer)

    async def relay_once(self, domains: Sequence[str] = DOMAINS) -> int:
        """Publishes due rows the fast path left behind.

        Args:
            domains: Domains to relay.

        Returns:
            Rows published.
        """
        total = 0
        for domain in domains:
            while True:
                count, failed = await self._publish(domain, self._settings.relay_batch_size)
                total += count
                if failed or count < self._settings.relay_batch_size:
                    break
        return total


async def run_relay(
    publisher: OutboxPublisher,
    operations: OperationsService,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    """Relay loop: publish unsent rows every ``relay_interval`` and sweep lost operations every
    ``sweeper_interval``, until ``stop`` is set. Errors are logged and retried.

    Args:
        publisher: The outbox publisher.
        operations: The operations service (sweeper).
        settings: Intervals.
        stop: Set to end the loop.
    """
    loop = asyncio.get_running_loop()
    next_sweep = loop.time()
    while not stop.is_set():
        try:
            count = await publisher.relay_once()
            if count:
                log.info("relay: published %d outbox rows", count)
            if loop.time() >= next_sweep:
                # A wiped broker lost every queued message: put the pending operations back
                # now, not after their deadline (a healthy backlog is never re-dispatched).
                checked_at = utcnow()
                if await asyncio.to_thread(publisher.broker_wiped):
                    await operations.redispatch_lost_in_broker(checked_at)
                    await publisher.relay_once()
                await operations.sweep()
                next_sweep = loop.time() + settings.sweeper_interval_seconds
        except Exception:
            log.exception("relay iteration failed; retrying")
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.relay_interval_seconds)
        except TimeoutError:
            pass
