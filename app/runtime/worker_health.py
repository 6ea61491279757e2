"""Worker self-healing: a liveness heartbeat file, ``conveyor worker --check``, and a watchdog that
makes a worker stuck in its shutdown after an unrecoverable error exit non-zero.

Why: a worker can stay alive yet consume nothing. When the broker vanished mid-ack, kombu's
``restore_unacked_once`` raised ``AttributeError('NoneType' object has no attribute 'hostname')``;
Celery logged "Unrecoverable error" and began a warm shutdown that never ended (the main process
waiting in ``do_wait`` for a pool child blocked writing its result pipe). A supervisor that only
restarts processes which *exit* never noticed. So:

- the worker's event loop (the main process's hub timer, the same loop that consumes) rewrites a
  heartbeat file every ``interval`` seconds; ``conveyor worker --check`` fails once the file is
  older than ``max_age`` (or its process is gone): a liveness probe for systemd, Docker,
  Kubernetes and ``conveyor up``;
- a worker stopping with a non-zero exit code (unrecoverable error, pool that could not start)
  gets ``shutdown_timeout`` seconds to stop cleanly, then exits with that code anyway
  (``acks_late``: unacknowledged tasks go back to the queue, the sweeper covers the rest).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
import time
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 5.0
"""How often a healthy worker rewrites its heartbeat file."""
HEARTBEAT_MAX_AGE_SECONDS = 60.0
"""Default ``--max-age`` of ``conveyor worker --check``."""
SHUTDOWN_TIMEOUT_SECONDS = 30.0
"""How long a worker failing with a non-zero code may take to stop before it is forced out."""

_config: dict[str, Any] = {"path": None, "interval": HEARTBEAT_INTERVAL_SECONDS}


def heartbeat_path(data_dir: str, key: str) -> pathlib.Path:
    """Returns the heartbeat file of a worker.

    Args:
        data_dir: ``CONVEYOR_DATA_DIR``.
        key: The worker's ``--name`` if it has one, else its comma-separated ``--queues``.

    Returns:
        ``<data_dir>/run/worker-<key>.heartbeat``.
    """
    safe = key.replace(",", "+").replace("/", "_").replace(os.sep, "_")
    return pathlib.Path(data_dir) / "run" / f"worker-{safe}.heartbeat"


def write_heartbeat(path: pathlib.Path, **extra: Any) -> None:
    """Atomically rewrites the heartbeat file (pid and time).

    Args:
        path: The file.
        **extra: More fields (node name...).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "time": time.time(), **extra}))
    os.replace(tmp, path)


def check(path: pathlib.Path, max_age: float) -> tuple[bool, str]:
    """Tells whether the worker that writes ``path`` is alive and looping.

    Args:
        path: Its heartbeat file.
        max_age: Seconds after which a heartbeat is stale.

    Returns:
        ``(healthy, one-line explanation)``.
    """
    try:
        beat = json.loads(path.read_text())
        pid, stamp = int(beat["pid"]), float(beat["time"])
    except FileNotFoundError:
        return False, f"no heartbeat file {path}: the worker is not running (or not started yet)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"unreadable heartbeat file {path}: {exc}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"worker pid {pid} is gone (heartbeat file {path})"
    except PermissionError:
        pass  # alive, another user's process
    age = time.time() - stamp
    if age > max_age:
        return False, (
            f"worker pid {pid} is hung: last heartbeat {age:.0f} s ago (limit {max_age:g} s);"
            " restart it"
        )
    return True, f"worker pid {pid} alive, heartbeat {age:.1f} s ago"


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: rewrites the heartbeat file from the worker's timer (the event loop)."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        """Writes the first heartbeat and schedules the next ones.

        Args:
            worker: The worker.
        """
        path = _config["path"]
        if path is None:
            return

        def beat() -> None:
            consumer = getattr(worker, "consumer", None)
            # Only while the consumer holds a broker connection: reconnecting is not consuming.
            if consumer is None or getattr(consumer, "connection", None) is not None:
                try:
                    write_heartbeat(path, node=worker.hostname)
                except OSError:
                    log.warning("heartbeat file %s not written", path, exc_info=True)

        beat()
        self.tref = worker.timer.call_repeatedly(_config["interval"], beat)

    def stop(self, worker: Any) -> None:
        """Stops the heartbeats (the file goes stale).

        Args:
            worker: The worker.
        """
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


def arm_shutdown_watchdog(exitcode: int, timeout: float = SHUTDOWN_TIMEOUT_SECONDS) -> None:
    """Forces the process out with ``exitcode`` if it has not exited ``timeout`` seconds from now.

    Args:
        exitcode: Non-zero status to exit with.
        timeout: Grace period for a clean stop.
    """

    def force() -> None:
        time.sleep(timeout)
        log.critical(
            "worker did not stop within %.0f s after an unrecoverable error; exiting with %d",
            timeout,
            exitcode,
        )
        logging.shutdown()
        os._exit(exitcode)

    threading.Thread(target=force, name="conveyor-shutdown-watchdog", daemon=True).start()


def install(app: Celery, *, path: pathlib.Path, interval: float, shutdown_timeout: float) -> None:
    """Makes ``app``'s workers write ``path`` and never hang on a failing shutdown.

    Args:
        app: The Celery app the worker runs.
        path: Heartbeat file.
        interval: Seconds between heartbeats.
        shutdown_timeout: Grace period of a failing worker's shutdown.
    """
    _config.update(path=path, interval=interval)
    app.steps["worker"].add(Heartbeat)
    base = app.Worker

    class Worker(base):  # type: ignore[misc, valid-type]
        """Celery's worker, with a bounded shutdown when it stops with a failure code."""

        def stop(self, in_sighandler: bool = False, exitcode: int | None = None) -> None:
            if exitcode:
                arm_shutdown_watchdog(int(exitcode), shutdown_timeout)
            super().stop(in_sighandler=in_sighandler, exitcode=exitcode)

    app.Worker = Worker
