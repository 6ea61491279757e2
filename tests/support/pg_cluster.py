"""A real PostgreSQL primary and streaming hot standby for replica tests.

``initdb`` into a temporary directory, ``pg_basebackup -R`` for the standby, both on free
ports, with the machine's PostgreSQL binaries (``CONVEYOR_TEST_PG_BIN``, default
``/usr/lib/postgresql/15/bin``). PostgreSQL refuses to run as root, so as root the servers run
as the ``postgres`` system user. Missing binaries skip the tests, or fail them when ``CI`` is
set (a CI machine that silently skips replica tests proves nothing).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time
from typing import Any

import asyncpg
import pytest

from app.runtime.embedded import find_free_port

PG_BIN_ENV = "CONVEYOR_TEST_PG_BIN"
DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
_TOOLS = ("initdb", "pg_ctl", "pg_basebackup")


def pg_bin_or_skip() -> pathlib.Path:
    """Returns the PostgreSQL binaries directory; skips (fails under ``CI``) without it.

    Returns:
        The directory holding ``initdb``, ``pg_ctl`` and ``pg_basebackup``.
    """
    bin_dir = pathlib.Path(os.environ.get(PG_BIN_ENV, DEFAULT_PG_BIN))
    missing = [t for t in _TOOLS if not (bin_dir / t).is_file()]
    if missing:
        message = (
            f"PostgreSQL server binaries {missing} not found in {bin_dir} (set {PG_BIN_ENV});"
            " the read replica tests need a real primary and standby"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return bin_dir


class StreamingCluster:
    """A primary and a streaming hot standby of it, each on its own free port."""

    def __init__(self, bin_dir: pathlib.Path) -> None:
        """Prepares (does not start) the cluster.

        Args:
            bin_dir: PostgreSQL binaries.
        """
        self._bin = bin_dir
        self._run_as = "postgres" if os.geteuid() == 0 else None
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-replica-"))
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self.primary_port = find_free_port()
        self.standby_port = find_free_port()
        self._primary = self.base / "primary"
        self._standby = self.base / "standby"

    def url(self, port: int) -> str:
        """``postgresql://`` URL of the ``postgres`` database on ``port``."""
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    @property
    def primary_url(self) -> str:
        """URL of the primary."""
        return self.url(self.primary_port)

    @property
    def standby_url(self) -> str:
        """URL of the standby."""
        return self.url(self.standby_port)

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        kw: dict[str, Any] = {"user": self._run_as} if self._run_as else {}
        done = subprocess.run(
            [str(self._bin / tool), *args],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def _pg_ctl_start(self, data: pathlib.Path, port: int) -> None:
        options = (
            f"-p {port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
            # No background writes of its own: "no writes on the primary" stays true.
            " -c autovacuum=off -c max_wal_senders=4 -c wal_level=replica"
        )
        self._run("pg_ctl", "-D", str(data), "-l", f"{data}.log", "-o", options, "-w", "start")

    def start(self) -> None:
        """initdb the primary, start it, clone the standby with ``pg_basebackup -R``, start it."""
        self._run("initdb", "-D", str(self._primary), "-U", "postgres", "-A", "trust", "--no-sync")
        self._pg_ctl_start(self._primary, self.primary_port)
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"),
            *("-D", str(self._standby), "-R", "-X", "stream", "-c", "fast", "--no-sync"),
        )
        self.start_standby()

    def start_standby(self) -> None:
        """Starts the standby (again)."""
        self._pg_ctl_start(self._standby, self.standby_port)

    def stop_standby(self) -> None:
        """Stops the standby (fast: its clients are disconnected)."""
        self._run("pg_ctl", "-D", str(self._standby), "-m", "fast", "-w", "stop")

    def start_primary(self) -> None:
        """Starts the primary (again)."""
        self._pg_ctl_start(self._primary, self.primary_port)

    def stop_primary(self) -> None:
        """Stops the primary (fast)."""
        self._run("pg_ctl", "-D", str(self._primary), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        """Stops both servers and deletes their directories."""
        for data in (self._standby, self._primary):
            if (data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        """Both servers' logs (for assertion messages)."""
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
            for p in (self.base / "primary.log", self.base / "standby.log")
            if p.exists()
        )

    # ---- SQL on one server ----------------------------------------------------------------

    async def fetchval(self, port: int, sql: str) -> Any:
        """Runs one query on the server at ``port`` and returns its first value."""
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres")
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def pause_replay(self) -> None:
        """``pg_wal_replay_pause()`` on the standby, returning once replay has stopped."""
        await self.fetchval(self.standby_port, "SELECT pg_wal_replay_pause()")
        for _ in range(100):
            state = await self.fetchval(self.standby_port, "SELECT pg_get_wal_replay_pause_state()")
            if state == "paused":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"standby replay did not pause (state {state})")

    async def resume_replay(self) -> None:
        """``pg_wal_replay_resume()`` on the standby."""
        await self.fetchval(self.standby_port, "SELECT pg_wal_replay_resume()")

    async def wait_replayed(self, timeout: float = 20) -> None:
        """Waits until the standby has replayed everything the primary had written."""
        target = await self.fetchval(self.primary_port, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind = await self.fetchval(
                self.standby_port, f"SELECT pg_last_wal_replay_lsn() < '{target}'::pg_lsn"
            )
            if behind is False:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"standby did not replay up to {target} in {timeout}s\n{self.log()}")
