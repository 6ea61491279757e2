"""Per-worker-process runtime: one asyncio loop and the engines, created after fork.

A task is a thin sync function that calls ``runtime.run(service.method(...))``. The loop and
the engines live as long as the worker process; they are never shared across a fork
(``worker_process_init`` builds them in the child) and are disposed at shutdown.

Two ways to run the loop:

- **inline** (prefork pool children, where the main thread runs every task): ``run`` drives
  the loop on the calling thread with ``run_until_complete``, then lets the background work
  the job started (the outbox fast path's publish) finish before it returns. No thread hop:
  the hop (self-pipe write, futex wait and wake, one more loop wake-up per job) cost ~15% of a
  pool child's CPU per ping. Celery's soft time limit (``SIGUSR1``, which billiard turns into
  ``SoftTimeLimitExceeded`` raised wherever the main thread is) must not land inside the loop
  or inside service code that catches ``Exception``: while a job runs inline, the signal
  cancels the job's asyncio task instead, and ``run`` raises ``SoftTimeLimitExceeded`` once the
  task has unwound.
- **threaded** (everything else: the in-process test worker, thread pools, scripts): the loop
  runs forever in a daemon thread and ``run`` hands coroutines to it
  (``run_coroutine_threadsafe``), so any thread may call it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from app.config import Settings, get_settings
from app.container import Container
from app.db import EngineRegistry
from app.runtime.heap import freeze_heap
from app.runtime.outbox import OutboxPublisher

log = logging.getLogger(__name__)
T = TypeVar("T")


_SOFT_LIMIT_SIGNAL = getattr(signal, "SIGUSR1", None)


class Runtime:
    """The event loop and the container of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._container: Container | None = None
        self._settings: Settings | None = None
        self._publisher: OutboxPublisher | None = None
        self.pid_started: int | None = None
        self.inline = False
        """Run coroutines on the calling (main) thread; set in prefork pool children."""
        self._job: asyncio.Task[Any] | None = None  # the inline job now running
        self._soft_limit_hit = False
        self._previous_handler: Any = None
        self._handler = self._on_soft_limit  # one bound method, so identity checks hold

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
            thread: threading.Thread | None = None
            if not self.inline:
                thread = threading.Thread(
                    target=loop.run_forever, name="conveyor-runtime", daemon=True
                )
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
        if self._thread is None:
            return self._run_inline(coro, timeout)
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            # The wait was interrupted (soft time limit, timeout): stop the work on the loop too,
            # so it writes nothing after the task gave up.
            future.cancel()
            raise

    def _run_inline(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        loop = self._loop
        assert loop is not None
        if threading.current_thread() is not threading.main_thread() or loop.is_running():
            coro.close()
            raise RuntimeError(
                "the inline runtime runs coroutines on the main thread only, one at a time"
            )
        self._watch_soft_limit()
        job = loop.create_task(coro)
        timed_out: list[bool] = []

        def time_out() -> None:
            timed_out.append(True)
            job.cancel()

        timer = None if timeout is None else loop.call_later(timeout, time_out)
        self._job, self._soft_limit_hit = job, False
        try:
            return loop.run_until_complete(job)
        except asyncio.CancelledError:
            if self._soft_limit_hit:
                raise SoftTimeLimitExceeded() from None
            if timed_out:
                raise TimeoutError(f"no result within {timeout} s") from None
            raise
        except BaseException:
            # Interrupted from outside the job (SIGTERM's SystemExit...): stop the job too, so it
            # writes nothing after the task gave up.
            if not job.done():
                job.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.wait([job], timeout=5))
            raise
        finally:
            self._job = None
            if timer is not None:
                timer.cancel()
            self._settle(loop)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        # The fast path publishes what the job committed from a background task; with no loop
        # running between jobs, finish it now (the relay would otherwise wait out its grace).
        publisher = self._publisher
        if publisher is not None and publisher.busy:
            with contextlib.suppress(Exception):
                loop.run_until_complete(publisher.drain())

    def _watch_soft_limit(self) -> None:
        # billiard installs its SIGUSR1 handler after worker_process_init, so wrap it on use.
        if _SOFT_LIMIT_SIGNAL is None:
            return
        current = signal.getsignal(_SOFT_LIMIT_SIGNAL)
        if current is not self._handler:
            self._previous_handler = current
            signal.signal(_SOFT_LIMIT_SIGNAL, self._handler)

    def _on_soft_limit(self, signum: int, frame: Any) -> None:
        job, loop = self._job, self._loop
        if job is not None and not job.done() and loop is not None:
            # Cancel at the job's next await; ``_run_inline`` turns it into the exception.
            self._soft_limit_hit = True
            loop.call_soon_threadsafe(job.cancel)
            return
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)

    def stop(self) -> None:
        """Disposes the engines and stops the loop."""
        with self._lock:
            loop, thread, container = self._loop, self._thread, self._container
            self._loop = self._thread = self._container = None
        if loop is None:
            return
        if thread is None:  # inline: nothing runs the loop but us
            if container is not None and not loop.is_running():
                try:
                    if self._publisher is not None:
                        loop.run_until_complete(self._publisher.drain())
                    loop.run_until_complete(container.registry.dispose())
                except Exception:
                    log.warning("engine dispose failed", exc_info=True)
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
    # A forked pool child: drop anything inherited from the parent, then start fresh. Its main
    # thread runs every task, so the loop runs inline there (see the module docstring).
    runtime._loop = None
    runtime._thread = None
    runtime._container = None
    runtime.inline = True
    runtime.start()
    # What the child inherited and just built lives as long as it: out of every full
    # collection's walk (and its pages stay shared with the parent, untouched by the GC).
    freeze_heap()


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    runtime.stop()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    runtime.stop()
