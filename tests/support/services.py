"""How tests find real PostgreSQL and Redis servers.

Resolution order for each service:

1. The URL in the environment (``CONVEYOR_TEST_DATABASE_URL`` / ``CONVEYOR_TEST_BROKER_URL``),
   else the conventional local default (``127.0.0.1:5432`` / ``127.0.0.1:6379``).
2. If nothing answers there within 1 s, an embedded server (``app.runtime.embedded``) started once
   per process in a temporary directory and stopped/deleted at interpreter exit.

Admin work (CREATE/DROP DATABASE) uses asyncpg directly: it is a core dependency, whereas
psycopg2 may not be installed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import pathlib
import shutil
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Coroutine
from typing import Any, TypeVar

from app.runtime.embedded import EmbeddedServices, start_embedded

__all__ = [
    "create_database",
    "drop_database",
    "test_broker_url",
    "test_database_admin_url",
    "to_asyncpg_url",
    "to_plain_url",
]

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DATABASE_URL_ENV = "CONVEYOR_TEST_DATABASE_URL"
BROKER_URL_ENV = "CONVEYOR_TEST_BROKER_URL"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
_REACHABLE_TIMEOUT_S = 1.0

_PG_SCHEMES = ("postgresql", "postgres")

# Embedded fallbacks, started lazily at most once per process (per service).
_embedded_lock = threading.Lock()
_embedded: dict[str, EmbeddedServices] = {}
_embedded_dir: pathlib.Path | None = None


# ------------------------------------------------------------------------ discovery


def test_database_admin_url() -> str:
    """Return a ``postgresql://`` URL of a server the tests may create databases on.

    Returns:
        ``$CONVEYOR_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
        if that server accepts connections, else the URL of an embedded PostgreSQL.
    """
    url = to_plain_url(os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL)
    if _postgres_reachable(url):
        return url
    _logger.warning("no PostgreSQL at %s; using an embedded server", _redact(url))
    return to_plain_url(_embedded_service("postgres").database_url)


def test_broker_url() -> str:
    """Return a ``redis://`` URL of a Redis usable as the Celery broker.

    Returns:
        ``$CONVEYOR_TEST_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``) if that server
        accepts connections, else the URL of an embedded Redis.
    """
    url = os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix" and _unix_reachable(parts.path):
        return url
    host, port = parts.hostname or "localhost", parts.port or 6379
    if parts.scheme != "unix" and _tcp_reachable(host, port):
        return url
    _logger.warning("no Redis at %s; using an embedded server", _redact(url))
    return _embedded_service("redis").broker_url


# Their names start with "test_": stop pytest from collecting them when a test module
# imports them by name.
test_database_admin_url.__test__ = False  # type: ignore[attr-defined]
test_broker_url.__test__ = False  # type: ignore[attr-defined]


def _postgres_reachable(url: str) -> bool:
    """TCP (or unix-socket) connect check against the server named by ``url``."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    port = int(query.get("port", [str(parts.port or 5432)])[0])
    if host.startswith("/"):
        # ?host=/dir means a unix socket, named like libpq does.
        return _unix_reachable(f"{host}/.s.PGSQL.{port}")
    return _tcp_reachable(host or "localhost", port)


def _tcp_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_REACHABLE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _unix_reachable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_REACHABLE_TIMEOUT_S)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _redact(url: str) -> str:
    """Hide a password before logging a URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _embedded_service(kind: str) -> EmbeddedServices:
    """Start (once per process) the embedded ``"postgres"`` or ``"redis"`` server."""
    global _embedded_dir
    with _embedded_lock:
        if kind not in _embedded:
            if _embedded_dir is None:
                _embedded_dir = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-test-services-"))
                # Registered before any server starts, so (atexit being LIFO) it runs
                # after start_embedded's own stop hooks: delete only stopped data.
                atexit.register(_cleanup_embedded, _embedded_dir)
            _embedded[kind] = start_embedded(
                _embedded_dir, postgres=kind == "postgres", redis=kind == "redis"
            )
        return _embedded[kind]


def _cleanup_embedded(data_dir: pathlib.Path) -> None:
    for services in list(_embedded.values()):
        with contextlib.suppress(Exception):
            services.stop()
    _embedded.clear()
    shutil.rmtree(data_dir, ignore_errors=True)


# ----------------------------------------------------------------------- URL helpers


def to_asyncpg_url(url: str) -> str:
    """Convert a PostgreSQL URL to the SQLAlchemy asyncpg form.

    Args:
        url: ``postgresql://``, ``postgres://`` or ``postgresql+<driver>://`` URL.

    Returns:
        The same URL with the scheme ``postgresql+asyncpg``; everything after the scheme
        (credentials, query string such as ``?host=/socket/dir``) is kept verbatim.

    Raises:
        ValueError: If ``url`` is not a PostgreSQL URL.
    """
    return f"postgresql+asyncpg://{_split_pg_scheme(url)}"


def to_plain_url(url: str) -> str:
    """Convert a PostgreSQL URL to the driver-less ``postgresql://`` form (libpq/asyncpg).

    Args:
        url: ``postgresql://``, ``postgres://`` or ``postgresql+<driver>://`` URL.

    Returns:
        The same URL with the scheme ``postgresql``; the rest is kept verbatim.

    Raises:
        ValueError: If ``url`` is not a PostgreSQL URL.
    """
    return f"postgresql://{_split_pg_scheme(url)}"


def _split_pg_scheme(url: str) -> str:
    """Return what follows ``scheme://`` after checking the scheme is PostgreSQL."""
    scheme, sep, rest = url.partition("://")
    # String surgery rather than urlsplit/urlunsplit: urlunsplit drops the "//" of an
    # empty host ("postgresql://user@/db?host=/dir") for schemes it doesn't know.
    if not sep or scheme.split("+", 1)[0].lower() not in _PG_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {_redact(url)!r}")
    return rest


def _with_database(url: str, name: str) -> str:
    """Return ``url`` pointing at database ``name`` (query string kept)."""
    scheme, _, rest = url.partition("://")
    rest, qmark, query = rest.partition("?")
    authority = rest.partition("/")[0]
    return f"{scheme}://{authority}/{urllib.parse.quote(name, safe='')}{qmark}{query}"


# --------------------------------------------------------------------- admin actions


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_url``.

    Args:
        admin_url: URL of an existing database on the server, connected as a user
            allowed to ``CREATE DATABASE`` (any PostgreSQL scheme is accepted).
        name: Name of the database to create; must not exist yet.

    Returns:
        The ``postgresql+asyncpg://`` URL of the new database.
    """
    _run(_execute(admin_url, f"CREATE DATABASE {_quote_ident(name)}"))
    return to_asyncpg_url(_with_database(admin_url, name))


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its other users first.

    Args:
        admin_url: URL of a *different* database on the same server.
        name: Name of the database to drop.

    Raises:
        ValueError: If ``admin_url`` points at ``name`` itself.
    """
    admin_db = urllib.parse.unquote(
        to_plain_url(admin_url).partition("://")[2].partition("?")[0].partition("/")[2]
    )
    if admin_db == name:
        raise ValueError(f"cannot drop {name!r} while connected to it via admin_url")
    _run(_drop(admin_url, name))


async def _execute(admin_url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(to_plain_url(admin_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _drop(admin_url: str, name: str) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(to_plain_url(admin_url))
    try:
        # A pool (or a Celery worker) may reconnect between the terminate and the DROP,
        # so retry a few times instead of failing on "being accessed by other users".
        for attempt in range(5):
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)}")
                return
            except asyncpg.ObjectInUseError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


def _quote_ident(name: str) -> str:
    """Quote an SQL identifier (CREATE/DROP DATABASE cannot take bind parameters)."""
    return '"' + name.replace('"', '""') + '"'


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code, even inside a running event loop.

    Fixtures of async tests (pytest-asyncio) call these helpers while a loop is running
    in this thread, where ``asyncio.run`` refuses to work; use a worker thread then.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def rabbitmq_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    """Whether a RabbitMQ (AMQP) server answers on ``host:port``."""
    return _tcp_reachable(host, port)


def missing_service(reason: str) -> None:
    """Skips the running test because a service is missing - unless ``CI`` is set, where a
    missing service is a failure (CI must run every test, never skip one silently).

    Args:
        reason: What is missing.
    """
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run must provide it)", pytrace=False)
    pytest.skip(reason)


def needs_service(available: bool, reason: str) -> Any:
    """A mark for tests that need an optional service: skipped without it locally, failed in CI.

    Args:
        available: Whether the service is there.
        reason: What is missing when it is not.

    Returns:
        A pytest mark (``missing_service``, handled in tests/conftest.py) or a no-op mark.
    """
    import pytest

    if available:
        return pytest.mark.skipif(False, reason=reason)
    return pytest.mark.missing_service(reason)
