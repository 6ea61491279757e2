"""The running ``conveyor up`` of a data directory: its lock, its pid and its servers' URLs.

``conveyor up`` holds an exclusive ``flock`` on ``<data_dir>/up.pid`` (with its pid in it) for as
long as it runs, and once its servers are up writes ``<data_dir>/up.json``: the database and
broker URLs (embedded or configured) and the API, Flower and metrics URLs. The lock, not the pid,
says whether it still runs: the kernel drops it when the process dies, even by SIGKILL, so a stale
file left behind never blocks the next ``up`` nor misleads a command.

Every other ``conveyor`` command calls :func:`apply_to_environ` first: with no database or broker
URL configured it uses the running stack's (so ``conveyor keys create``, ``status``, ``metrics``,
``migrate`` work against the embedded servers), and ``conveyor ops`` talks to its API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

__all__ = [
    "AlreadyRunning",
    "StackLock",
    "apply_to_environ",
    "find_data_dir",
    "not_running_hint",
    "read_running",
]

LOCK_NAME = "up.pid"
STATE_NAME = "up.json"

# Environment variable -> key in up.json. Only variables the user left unset are filled in.
_ENV_KEYS = {
    "CONVEYOR_DATABASE_URL": "database_url",
    "CONVEYOR_BROKER_URL": "broker_url",
    "CONVEYOR_API_URL": "api_url",
}


class AlreadyRunning(RuntimeError):
    """Another ``conveyor up`` holds the lock of this data directory.

    Attributes:
        pid: Its process id (0 when unreadable).
    """

    def __init__(self, pid: int, data_dir: pathlib.Path) -> None:
        """Creates the error.

        Args:
            pid: The running ``up``'s process id.
            data_dir: The data directory it runs in.
        """
        self.pid = pid
        super().__init__(
            f"already running (pid {pid}) with data in {data_dir}: stop it with Ctrl-C in its"
            f" terminal or `kill {pid}`, or run this one with another CONVEYOR_DATA_DIR"
        )


class StackLock:
    """The lock a running ``conveyor up`` holds on ``<data_dir>/up.pid``."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        """Creates the lock object (nothing is taken yet).

        Args:
            data_dir: The data directory (``CONVEYOR_DATA_DIR``).
        """
        self.data_dir = data_dir.resolve()
        self._handle: Any = None

    def acquire(self) -> None:
        """Takes the lock and writes this process's pid.

        Raises:
            AlreadyRunning: When another live ``up`` holds it.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Opened without truncating: the holder's pid must stay readable when we fail.
        handle = open(self.data_dir / LOCK_NAME, "a+")
        for attempt in range(5):
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A command's read_running() holds a shared lock for an instant: retry a little.
                if attempt < 4:
                    time.sleep(0.1)
                    continue
                handle.seek(0)
                text = handle.read().strip()
                handle.close()
                raise AlreadyRunning(int(text) if text.isdigit() else 0, self.data_dir) from None
        # The lock's descriptor must not leak into children (they would keep it after `up` dies).
        os.set_inheritable(handle.fileno(), False)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_NAME).unlink()  # a previous run's, killed before cleaning up

    def publish(self, state: dict[str, Any]) -> None:
        """Writes ``up.json`` (atomically: readers never see half a file).

        Args:
            state: The URLs and facts to publish (``pid`` is added).
        """
        path = self.data_dir / STATE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), **state}, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)

    def release(self) -> None:
        """Removes ``up.json`` and ``up.pid`` and drops the lock (safe to call twice)."""
        if self._handle is None:
            return
        for name in (STATE_NAME, LOCK_NAME):
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / name).unlink()
        self._handle.close()
        self._handle = None


@dataclasses.dataclass(frozen=True)
class RunningStack:
    """What ``read_running`` found.

    Attributes:
        pid: The ``up`` process id.
        state: The contents of ``up.json``; empty while ``up`` is still starting.
    """

    pid: int
    state: dict[str, Any]


def read_running(data_dir: pathlib.Path) -> RunningStack | None:
    """Returns the ``conveyor up`` running on ``data_dir``, or None.

    Args:
        data_dir: The data directory.

    Returns:
        The running stack (its ``state`` is empty until its servers are up), or None when no
        process holds the lock.
    """
    lock_path = data_dir / LOCK_NAME
    try:
        handle = open(lock_path)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
        else:
            return None  # nobody holds it: a leftover of a killed `up`
    try:
        state = json.loads((data_dir / STATE_NAME).read_text())
    except (OSError, ValueError):
        state = {}
    return RunningStack(
        int(text) if text.isdigit() else 0, state if isinstance(state, dict) else {}
    )


def find_data_dir(data_dir: str, explicit: bool) -> pathlib.Path:
    """Where to look for a running stack.

    Args:
        data_dir: The configured data directory (``.conveyor`` by default, relative to the
            current directory).
        explicit: Whether ``CONVEYOR_DATA_DIR`` was set; if not, and no stack runs here, the
            parent directories are searched too (a command run from a subdirectory of the
            project finds the ``up`` running at its root).

    Returns:
        The data directory holding a running stack's lock, else ``data_dir`` resolved.
    """
    here = pathlib.Path(data_dir).resolve()
    relative = not pathlib.Path(data_dir).is_absolute()
    if explicit or not relative or read_running(here) is not None:
        return here
    for parent in pathlib.Path.cwd().resolve().parents:
        candidate = parent / data_dir
        if read_running(candidate) is not None:
            return candidate
    return here


def apply_to_environ(
    environ: MutableMapping[str, str],
    data_dir: pathlib.Path,
    configured: Iterable[str] = (),
) -> RunningStack | None:
    """Points unset ``CONVEYOR_*`` URLs at the stack ``conveyor up`` runs on ``data_dir``.

    Args:
        environ: The environment to fill in (``os.environ``).
        data_dir: The data directory.
        configured: Variables set by other means (e.g. a ``.env`` file), left alone.

    Returns:
        The running stack, or None when there is none (``environ`` is then unchanged).
    """
    running = read_running(data_dir)
    if running is None or not running.state:
        return running
    skip = set(configured)
    for variable, key in _ENV_KEYS.items():
        value = running.state.get(key)
        if value and not environ.get(variable) and variable not in skip:
            environ[variable] = str(value)
    return running


def not_running_hint(data_dir: pathlib.Path) -> str:
    """The one line shown when a command needs servers and none is configured or running.

    Args:
        data_dir: The data directory that was looked in.

    Returns:
        What is missing and how to fix it.
    """
    running = read_running(data_dir)
    if running is not None:
        return (
            f"conveyor up (pid {running.pid}) is still starting in {data_dir}; try again in a"
            " moment"
        )
    return (
        f"no database configured and no `conveyor up` running here (looked in {data_dir}):"
        " start one with `make run` in another terminal, or set CONVEYOR_DATABASE_URL and"
        " CONVEYOR_BROKER_URL"
    )
