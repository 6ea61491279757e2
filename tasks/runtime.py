"""Per-worker-process runtime: one asyncio loop (in a thread) and the engines, created after fork.

A task is a thin sync function that calls ``runtime.run(service.method(...))``. The loop and
the engines live as long as the worker process; they are never shared across a fork
(``worker_process_init`` builds them in the child) and are disposed at shutdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import signals

from app.config import Settings, get_settings
from app.container import Container
from app.db import EngineRegistry
from app.runtime.outbox import OutboxPublisher

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runtime:
    """The event loop thread and the container of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._container: Container | None = None
        self._settings: Settings | None = None
        self._publisher: OutboxPublisher | None = None
        self.pid_started: int | None = None

    def configure(self, settings: Settings) -> None:
        """Sets the settings used on the next start (tests and the CLI).

        Args:
            settings: Settings to use instead of the environment.
        """
        self._settings = settings

    @property
    def started(self) -> bool:
        """Whether the loop runs in this process."""
        return self._loop is not None

    def start(self) -> None:
        """Starts the loop thread and builds the container (idempotent)."""
        import os

        with self._lock:
            if self._loop is not None and self.pid_started == os.getpid():
                return
            settings = self._settings or get_settings()
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="conveyor-runtime", daemon=True)
            thread.start()
            registry = EngineRegistry(settings)
            publisher = OutboxPublisher(registry, settings)
            self._publisher = publisher
            self._container = Container(settings, registry, after_commit=publisher.publish_now)
            self._loop, self._thread = loop, thread
            self.pid_started = os.getpid()
            log.debug("runtime started in pid %s", self.pid_started)

    @property
    def container(self) -> Container:
        """The process's container (starts the runtime on first use)."""
        self.start()
        assert self._container is not None
        return self._container

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs ``coro`` on the process loop and waits for its result (thread-safe).

        Args:
            coro: The coroutine (usually a service call).
            timeout: Seconds to wait, ``None`` for no limit.

        Returns:
            The coroutine's result.
        """
        self.start()
        assert self._loop is not None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            # The wait was interrupted (soft time limit, timeout): stop the work on the loop too,
            # so it writes nothing after the task gave up.
            future.cancel()
            raise

    def stop(self) -> None:
        """Disposes the engines and stops the loop."""
        with self._lock:
            loop, thread, container = self._loop, self._thread, self._container
            self._loop = self._thread = self._container = None
        if loop is None:
            return
        if container is not None:
            try:
                if self._publisher is not None:
                    asyncio.run_coroutine_threadsafe(self._publisher.drain(), loop).result(10)
                asyncio.run_coroutine_threadsafe(container.registry.dispose(), loop).result(10)
            except Exception:
                log.warning("engine dispose failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)


runtime = Runtime()


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    # A forked pool child: drop anything inherited from the parent, then start fresh.
    runtime._loop = None
    runtime._container = None
    runtime.start()


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    runtime.stop()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    runtime.stop()
