"""The process supervisor behind ``conveyor up``.

Each child runs in a session of its own, so a Ctrl-C or a closed terminal reaches ``up`` only, and
``up`` stops the children in order (SIGTERM, then SIGKILL of the child's whole process group after
a grace period). If ``up`` itself dies by SIGKILL, the children notice: ``up`` passes its pid in
``CONVEYOR_UP_PARENT_PID`` and every ``conveyor`` command started with it asks the kernel for a
SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, see :func:`die_with_parent`).

Output: every line a child prints is shown with a short coloured prefix (``api |``, ``imports |``),
as Procfile runners do. honcho's manager does that too, but it stops everything when any child
exits, where ``up`` restarts a dead worker, relay or beat with backoff; so the few lines it would
save are written here.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from app.runtime import worker_health

__all__ = ["PARENT_PID_ENV", "Child", "Output", "Supervisor", "die_with_parent"]

PARENT_PID_ENV = "CONVEYOR_UP_PARENT_PID"
_PR_SET_PDEATHSIG = 1

# Restart backoff: 1 s, 2 s, 4 s ... at most 30 s; a child that ran a minute starts over at 1 s.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0

_COLOURS = ("36", "33", "32", "35", "34", "91", "92", "93", "94", "95", "96")


def die_with_parent(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Asks for SIGTERM when the ``conveyor up`` that started this process dies.

    Does nothing unless ``CONVEYOR_UP_PARENT_PID`` is set (only ``up`` sets it). If that parent
    is already gone (it died between fork and here), exits at once.

    Args:
        environ: The environment to read the parent pid from.
    """
    value = environ.get(PARENT_PID_ENV, "")
    if not value.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(value):
        os._exit(0)


class Output:
    """Writes prefixed lines to a stream; never fails (the terminal may be gone)."""

    def __init__(self, stream: IO[str] | None = None, width: int = 8) -> None:
        """Creates the writer.

        Args:
            stream: Where to write (default stdout).
            width: Prefix width.
        """
        self.stream = stream or sys.stdout
        self.width = width
        self.colour = bool(getattr(self.stream, "isatty", lambda: False)()) and not os.environ.get(
            "NO_COLOR"
        )
        self._lock = threading.Lock()
        self._colours: dict[str, str] = {}

    def prefix(self, name: str) -> str:
        """Returns ``name`` padded, coloured on a terminal, followed by ``|``.

        Args:
            name: The process name.

        Returns:
            The prefix text.
        """
        text = f"{name:<{self.width}} |"
        if not self.colour:
            return text
        code = self._colours.setdefault(name, _COLOURS[len(self._colours) % len(_COLOURS)])
        return f"\033[{code}m{text}\033[0m"

    def line(self, name: str, text: str) -> None:
        """Writes one prefixed line.

        Args:
            name: The process name.
            text: The line (without newline).
        """
        self.write(f"{self.prefix(name)} {text}\n")

    def write(self, text: str) -> None:
        """Writes raw text (a summary block).

        Args:
            text: What to write.
        """
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()


@dataclasses.dataclass
class Child:
    """One supervised process.

    Attributes:
        name: Short name, used as the output prefix.
        argv: The command line.
        restart: Restart it with backoff when it exits (else stop everything).
        heartbeat: Its liveness heartbeat file (workers): once it is older than
            ``heartbeat_max_age`` the child counts as hung and is killed, then restarted.
        heartbeat_max_age: Seconds after which the heartbeat is stale.
    """

    name: str
    argv: list[str]
    restart: bool = True
    heartbeat: pathlib.Path | None = None
    heartbeat_max_age: float = worker_health.HEARTBEAT_MAX_AGE_SECONDS
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Starts, watches, restarts and stops ``conveyor up``'s children."""

    def __init__(
        self,
        env: dict[str, str],
        output: Output,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Creates the supervisor.

        Args:
            env: Environment of every child (``CONVEYOR_UP_PARENT_PID`` is added).
            output: Where the children's lines go.
            clock: Monotonic clock (tests).
        """
        self.env = {**env, PARENT_PID_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        self.output = output
        self.clock = clock
        self.children: list[Child] = []
        self._readers: list[threading.Thread] = []

    def start(self, child: Child) -> None:
        """Starts ``child`` (and adds it to the supervised set the first time).

        Args:
            child: The child.
        """
        if child not in self.children:
            self.children.append(child)
        proc = subprocess.Popen(
            child.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own session: terminal signals reach `up` only, which stops children in order.
            start_new_session=True,
        )
        child.proc, child.started_at, child.restart_at = proc, self.clock(), None
        reader = threading.Thread(
            target=self._pump, args=(child.name, proc), name=f"out-{child.name}", daemon=True
        )
        reader.start()
        self._readers.append(reader)

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.output.line(name, raw.decode("utf-8", "replace").rstrip("\n"))
        proc.stdout.close()

    def check(self) -> Child | None:
        """Reaps exited children and restarts those that are due.

        Returns:
            A child that exited and must not be restarted (the caller stops everything), or None.
        """
        now = self.clock()
        for child in self.children:
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.restarts += 1
                    self.output.line(child.name, f"restarting (restart #{child.restarts})")
                    self.start(child)
                continue
            code = child.proc.poll()
            if code is None:
                self._kill_if_hung(child, now)
                continue
            child.proc = None
            if not child.restart:
                self.output.line(child.name, f"exited with code {code}")
                return child
            if now - child.started_at >= BACKOFF_RESET_AFTER_S:
                child.failures = 0
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**child.failures)
            child.failures += 1
            child.restart_at = now + delay
            self.output.line(child.name, f"exited with code {code}; restarting in {delay:g} s")
        return None

    def _kill_if_hung(self, child: Child, now: float) -> None:
        # Alive but not looping (e.g. stuck in its shutdown after an unrecoverable error): a
        # process that never exits is never restarted, so end it; the next check restarts it.
        if child.heartbeat is None or child.proc is None:
            return
        if now - child.started_at < child.heartbeat_max_age:
            return  # give a new process time to write its first heartbeat
        healthy, why = worker_health.check(child.heartbeat, child.heartbeat_max_age)
        if healthy:
            return
        self.output.line(child.name, f"{why}; killing it to restart it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)

    def stop(self, timeout: float = 20.0) -> list[str]:
        """SIGTERM every child, wait up to ``timeout``, then SIGKILL the stragglers' groups.

        Args:
            timeout: Grace period in seconds.

        Returns:
            The names of the children that had to be killed.
        """
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = self.clock() + timeout
        killed: list[str] = []
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                killed.append(child.name)
                # The whole group: a Celery main process killed alone leaves its pool behind.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        for child in self.children:
            child.restart_at = None
        for reader in self._readers:
            reader.join(timeout=2)
        return killed

    def pids(self) -> list[int]:
        """Returns the pids of the running children.

        Returns:
            Their process ids.
        """
        return [c.proc.pid for c in self.children if c.proc is not None]


def has_terminal() -> bool:
    """Tells whether this process still has a controlling terminal.

    After a hang-up (the terminal window closed, ssh dropped) the kernel detaches every process
    of the session from it, so opening ``/dev/tty`` fails from then on.

    Returns:
        True while ``/dev/tty`` can be opened.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def port_in_use(host: str, port: int) -> bool:
    """Tells whether something already listens on ``host:port`` (or the port can't be bound).

    Args:
        host: The address the server would bind.
        port: The TCP port.

    Returns:
        True when binding fails.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn/tornado do: a port in TIME_WAIT after a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(
    ready: Callable[[], bool], supervisor: Supervisor, timeout: float, interval: float = 0.3
) -> Child | bool:
    """Supervises while waiting for ``ready()``.

    Args:
        ready: Returns True once ready (exceptions count as not ready).
        supervisor: Checked between attempts.
        timeout: Seconds to wait.
        interval: Seconds between attempts.

    Returns:
        True when ready, False on timeout, or the child that exited for good meanwhile.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = supervisor.check()
        if dead is not None:
            return dead
        with contextlib.suppress(Exception):
            if ready():
                return True
        time.sleep(interval)
    return False
