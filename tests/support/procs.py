"""A ``conveyor`` subprocess (or any command) with its output in a log file, for tests that
start workers, relays and the like."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

# What ``conveyor api`` logs once its socket listens. uvicorn logs "Application startup
# complete" after the lifespan startup but *before* it binds the socket, so a test that waited
# for that line could connect too early and be refused.
API_LISTENING = "Uvicorn running on"


class Proc:
    """A conveyor subprocess with its log file."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Any, *, argv: list[str] | None = None
    ) -> None:
        """Starts ``python -m app.cli <args>`` (or ``argv``), stdout and stderr to ``log_path``.

        Args:
            args: The ``conveyor`` command line after the program name.
            env: The whole environment of the process.
            log_path: The log file (a ``pathlib.Path``; truncated).
            argv: Another command line to run instead.
        """
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv or [sys.executable, "-m", "app.cli", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        """Returns what the process has logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        """Waits until ``text`` is in the log.

        Args:
            text: What to wait for.
            timeout: Seconds.

        Raises:
            AssertionError: If the process exits first or the text is not seen in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.popen.returncode}):\n{self.log()[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen in log within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 20) -> int:
        """Terminates the process (kills it after ``timeout`` seconds) and closes the log.

        Args:
            timeout: Seconds to wait after SIGTERM.

        Returns:
            The exit code.
        """
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode
