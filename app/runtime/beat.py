"""The database-backed beat: a ``celery.beat.Scheduler`` that fires the schedules table.

``conveyor beat`` runs Celery beat with :class:`DatabaseScheduler`. Every tick it:

1. takes or renews the leader lease (a row in ``platform.beat_leader`` with an expiry, renewed
   every third of ``CONVEYOR_SCHEDULES__LEASE_SECONDS``). Only the leader fires; any number of
   beats may run, and when the leader dies another takes over once its lease lapses;
2. as leader, fires every due slot through :meth:`ScheduleService.fire_due` (a ``schedule_runs``
   row per slot, unique per schedule and fire time, then the workflow's operation through the
   normal outbox path, or a system task's outbox row);
3. sleeps until the next slot, the next renewal or ``sync_seconds``, whichever comes first, so an
   API change is seen within ``sync_seconds`` without restarting beat.

Nothing is kept in beat's memory or in a local schedule file: PostgreSQL holds the schedules,
their runs and the lease.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from celery.beat import Scheduler
from pydantic import ValidationError

from app.config import DOMAINS, Settings, get_settings
from domains.platform.schedules.service import (
    BuiltinSchedule,
    DefaultSchedule,
    SchedulePolicy,
    ScheduleService,
)
from domains.shared.clock import utcnow
from domains.shared.errors import InvalidArgument

if TYPE_CHECKING:
    from app.container import Container

log = logging.getLogger("conveyor.beat")
T = TypeVar("T")

NODE_NAME: str | None = None
"""This beat's display name, set by ``conveyor beat --name`` (default :func:`default_node_name`)."""

DIGEST_WORKFLOW = "reports.generate"
DIGEST_ARGS: dict[str, Any] = {"type": "digest", "period": "yesterday", "format": "csv"}


def _pydantic_message(exc: ValidationError, workflow: str) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "args"
        parts.append(f"args.{where}: {error.get('msg', 'invalid')}")
    return f"args do not fit workflow {workflow!r}: " + "; ".join(parts)


def task_queue(task: str) -> str:
    """Returns the queue a task name routes to (its prefix, as ``app.adapters.celery_app`` routes).

    Args:
        task: Task name.

    Returns:
        The queue.
    """
    prefix = task.split(".", 1)[0]
    return prefix if prefix in DOMAINS else "platform"


class WorkflowLauncher:
    """Validates and starts workflows from the registry (``app.workflows``) for schedules."""

    def __init__(self, container: Container, known_tasks: frozenset[str] | None = None) -> None:
        """Creates the launcher.

        Args:
            container: The process's container (workflows start through its services).
            known_tasks: Task names this build has (the beat passes Celery's registry); ``None``
                trusts every task.
        """
        self._container = container
        self._known = known_tasks

    def validate(self, workflow: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Checks ``args`` against the workflow's input model.

        Args:
            workflow: Workflow name.
            args: Arguments.

        Returns:
            The arguments as given (validated).

        Raises:
            InvalidArgument: Unknown workflow or arguments that do not fit, saying why.
        """
        from app.workflows import registry

        workflows = registry()
        found = workflows.get(workflow)
        if found is None:
            raise InvalidArgument(
                f"workflow {workflow!r} does not exist; known workflows:"
                f" {', '.join(sorted(workflows)) or 'none'}",
                reason="UNKNOWN_WORKFLOW",
                metadata={"field": "workflow"},
            )
        try:
            found.input_model.model_validate(dict(args))
        except ValidationError as exc:
            raise InvalidArgument(
                _pydantic_message(exc, workflow),
                reason="INVALID_WORKFLOW_ARGS",
                metadata={"field": "args"},
            ) from None
        return dict(args)

    async def start(
        self,
        workflow: str,
        args: Mapping[str, Any],
        *,
        tenant: str,
        request_id: str,
        correlation_id: str | None,
    ) -> str:
        """Starts the workflow through its domain service (idempotent per request id).

        Args:
            workflow: Workflow name.
            args: Arguments.
            tenant: Tenant of the operation.
            request_id: AIP-155 request id.
            correlation_id: Id for logs.

        Returns:
            The operation name.

        Raises:
            InvalidArgument: If the workflow is gone or the arguments no longer fit.
        """
        from app.workflows import StartContext, registry

        found = registry().get(workflow)
        if found is None:
            raise InvalidArgument(
                f"workflow {workflow!r} is no longer installed", reason="UNKNOWN_WORKFLOW"
            )
        try:
            model = found.input_model.model_validate(dict(args))
        except ValidationError as exc:
            raise InvalidArgument(
                _pydantic_message(exc, workflow), reason="INVALID_WORKFLOW_ARGS"
            ) from None
        context = StartContext(tenant=tenant, request_id=request_id, correlation_id=correlation_id)
        operation = await found.start(self._container, model, context)
        return operation.name

    def task_queue(self, task: str) -> str | None:
        """Returns the queue of ``task``, or ``None`` if this build lacks it.

        Args:
            task: Task name.

        Returns:
            The queue.
        """
        if self._known is not None and task not in self._known:
            return None
        return task_queue(task)


def builtin_schedules(settings: Settings) -> list[BuiltinSchedule]:
    """Returns the system schedules: each domain's ``DomainModule.system_schedules``.

    Args:
        settings: Their initial intervals.

    Returns:
        The definitions, in domain order.
    """
    from app.wiring import system_schedules

    return system_schedules(settings)


def default_schedules(settings: Settings) -> list[DefaultSchedule]:
    """Returns the default user-visible schedules whose workflow is installed.

    Args:
        settings: ``schedules.daily_digest`` turns the digest off.

    Returns:
        The daily digest when ``reports.generate`` exists.
    """
    from app.workflows import registry

    if not settings.schedules.daily_digest or DIGEST_WORKFLOW not in registry():
        return []
    return [
        DefaultSchedule(
            id="daily-digest",
            tenant="default",
            display_name="Daily digest report",
            workflow=DIGEST_WORKFLOW,
            args=DIGEST_ARGS,
            cron="0 6 * * *",
            time_zone="UTC",
        )
    ]


def schedule_service(
    container: Container, *, known_tasks: frozenset[str] | None = None
) -> ScheduleService:
    """Builds the schedules service for ``container``.

    Args:
        container: The process's container.
        known_tasks: Task names this build has (``None`` trusts every task).

    Returns:
        The service.
    """
    from app.wiring.platform import MODULE as PLATFORM

    settings = container.settings
    s = settings.schedules
    return ScheduleService(
        container.unit_of_work(PLATFORM),
        WorkflowLauncher(container, known_tasks),
        policy=SchedulePolicy(
            min_interval_seconds=s.min_interval_seconds,
            max_catch_up=s.max_catch_up,
            start_attempts=s.start_attempts,
            leader_name=s.leader_name,
        ),
        builtin=builtin_schedules(settings),
        defaults=default_schedules(settings),
    )


def default_node_name() -> str:
    """Returns this beat's display name, ``beat-<pid>@<host>``.

    Returns:
        The name.
    """
    return f"beat-{os.getpid()}@{socket.gethostname()}"


class BeatEngine:
    """Leader election and firing, on an event loop thread of its own."""

    def __init__(
        self,
        settings: Settings,
        *,
        node: str | None = None,
        known_tasks: frozenset[str] | None = None,
    ) -> None:
        """Builds engines, the container and the fast-path publisher.

        Args:
            settings: Settings.
            node: Display name (default :func:`default_node_name`).
            known_tasks: Task names of this build.
        """
        from app.container import Container
        from app.db import EngineRegistry
        from app.runtime.outbox import OutboxPublisher

        self.settings = settings
        self.node = node or default_node_name()
        # Unique per process even when two beats share a node name.
        self.holder = f"{self.node}#{secrets.token_hex(4)}"
        self.leader = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conveyor-beat", daemon=True
        )
        self._thread.start()
        self._registry = EngineRegistry(settings)
        self._publisher = OutboxPublisher(self._registry, settings)
        self.container = Container(
            settings, self._registry, after_commit=self._publisher.publish_now
        )
        self.service = schedule_service(self.container, known_tasks=known_tasks)
        self._next_renew = 0.0
        self._ensured = False

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Runs ``coro`` on the engine's loop.

        Args:
            coro: Coroutine.
            timeout: Seconds.

        Returns:
            Its result.
        """
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _step(self) -> float:
        s = self.settings.schedules
        renew_every = s.lease_seconds / 3
        if not self._ensured:
            await self.service.ensure_builtin(
                builtin_schedules(self.settings), default_schedules(self.settings)
            )
            self._ensured = True
        now = time.monotonic()
        if now >= self._next_renew:
            was = self.leader
            try:
                self.leader = await self.service.acquire_leadership(
                    self.holder, self.node, s.lease_seconds
                )
            except Exception:
                # Cannot reach the database: stop firing; the lease lapses for everyone.
                self.leader = False
                raise
            finally:
                self._next_renew = now + renew_every
            if self.leader != was:
                log.info(
                    "beat %s: %s leadership",
                    self.node,
                    "took" if self.leader else "does not hold",
                )
        if not self.leader:
            return max(0.05, self._next_renew - time.monotonic())
        report = await self.service.fire_due(self.holder)
        await self._publisher.drain()
        if not report.leader:
            self.leader = False
            self._next_renew = 0.0
            log.info("beat %s: lease lost", self.node)
        if report.fired or report.failed:
            log.info(
                "beat %s: fired %d slot(s), started %d, failed %d",
                self.node,
                report.fired,
                report.started,
                report.failed,
            )
        wait = min(s.sync_seconds, self._next_renew - time.monotonic())
        if report.next_due is not None:
            wait = min(wait, (report.next_due - utcnow()).total_seconds())
        return max(0.01, wait)

    def tick(self) -> float:
        """One pass; never raises (a failing pass is logged and retried).

        Returns:
            Seconds to sleep before the next pass.
        """
        try:
            return self.run(self._step())
        except Exception:
            log.exception("beat pass failed; retrying")
            return min(self.settings.schedules.sync_seconds * 2, 5.0)

    def close(self) -> None:
        """Gives the lease up (another beat takes over at once) and disposes the engines."""
        try:
            self.run(self.service.release_leadership(self.holder), timeout=10)
            if self.leader:
                log.info("beat %s: released leadership", self.node)
        except Exception:
            log.warning("beat %s: could not release the lease", self.node, exc_info=True)
        try:
            self.run(self._publisher.drain(), timeout=10)
            self.run(self._registry.dispose(), timeout=10)
        except Exception:
            log.warning("engine dispose failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class DatabaseScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat scheduler reading the ``platform.schedules`` table (one leader fires)."""

    #: Upper bound of one sleep (beat also reads it for its banner).
    max_interval = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Creates the scheduler; the engine is built on the first tick (beat also creates a
        throw-away instance for its banner).

        Args:
            *args: Celery's arguments.
            **kwargs: Celery's keyword arguments.
        """
        self._engine: BeatEngine | None = None
        super().__init__(*args, **kwargs)
        self.max_interval = 5.0

    def setup_schedule(self) -> None:
        """Nothing to load: the schedules live in PostgreSQL."""

    @property
    def schedule(self) -> dict[str, Any]:
        """Celery's in-memory entries: none."""
        return {}

    @property
    def info(self) -> str:
        """Banner line."""
        return "    . db -> platform.schedules (leader lease: platform.beat_leader)"

    def _settings(self) -> Settings:
        return getattr(self.app, "conveyor_settings", None) or get_settings()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Renews the lease and fires due slots.

        Args:
            *args: Unused.
            **kwargs: Unused.

        Returns:
            Seconds until the next pass.
        """
        if self._engine is None:
            self._engine = BeatEngine(
                self._settings(), node=NODE_NAME, known_tasks=frozenset(self.app.tasks.keys())
            )
            log.info("beat %s started (holder %s)", self._engine.node, self._engine.holder)
        return self._engine.tick()

    def should_sync(self) -> bool:
        """Nothing to persist locally."""
        return False

    def sync(self) -> None:
        """Nothing to persist locally."""

    def close(self) -> None:
        """Releases the lease and disposes the engines."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
