"""Real services for every test tier.

- A fresh PostgreSQL database per test run (created, migrated with the real migrations,
  dropped at the end) on ``CONVEYOR_TEST_DATABASE_URL`` (default local server, else embedded).
- A Redis database index of its own on ``CONVEYOR_TEST_BROKER_URL`` (default local, else embedded).
- ``celery_app`` / ``celery_worker``: pytest-celery's session app and in-process worker
  (``celery_session_app`` / ``celery_session_worker``), configured as Conveyor's own app (queues,
  routes, serializers, task modules) and consuming every domain queue.
- ``client``: the API through httpx ``ASGITransport``, authenticated with the session's API key.
- ``api_key``: one all-scopes key of tenant ``default`` per test run; ``clean_db`` keeps it, the
  ``client``/``stack.client`` send it, subprocesses get it as ``CONVEYOR_API_KEY``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import os
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.adapters.celery_app import TASK_MODULES, create_celery
from app.adapters.celery_app import celery_config as conveyor_celery_config
from app.config import DOMAINS, Settings, load_settings
from app.db import migrate
from tests.support import services
from tests.support.procs import Proc

TEST_OVERRIDES: dict[str, Any] = {
    "env": "test",
    "operation_lease_seconds": 3.0,
    "pending_deadline_seconds": 3.0,
    "sweeper_interval_seconds": 0.5,
    "relay_interval_seconds": 0.2,
    "relay_grace_seconds": 0.5,
    "retry_backoff_base_seconds": 0.1,
    "retry_backoff_max_seconds": 0.5,
    "progress_interval_seconds": 0.0,
    "task_max_retries": 3,
    "max_dispatches": 20,
}

SECURITY_TEST_OVERRIDES: dict[str, Any] = {
    # Every test shares the session key: a production-sized bucket would throttle the suite.
    "rate_limit_per_second": 100000.0,
    "rate_limit_burst": 1000000,
}
"""``settings.security`` fields for tests (the rate-limit tests build their own settings)."""

KEEP_TABLES = frozenset({"alembic_version", "api_keys"})
"""Tables ``clean_db`` leaves alone (the session's API key must survive it)."""


def run_async(coro: Any) -> Any:
    """Runs a coroutine to completion on a fresh loop in another thread (safe from any fixture)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def create_api_key(
    settings: Settings, *, tenant: str = "default", scopes: tuple[str, ...] = ("*",), **kw: Any
) -> str:
    """Creates an API key through the real keys service; returns its plaintext."""
    from app.container import Container
    from app.db import EngineRegistry

    registry = EngineRegistry(settings)
    try:
        service = Container(settings, registry).api_keys
        kw.setdefault("name", "pytest")
        new = await service.create(tenant=tenant, scopes=list(scopes), **kw)
        return str(new.plaintext)
    finally:
        await registry.dispose()


@pytest.fixture(scope="session")
def admin_url() -> str:
    """Plain postgresql:// URL of the server that hosts test databases."""
    return services.test_database_admin_url()


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """A migrated database for this test run."""
    name = f"conveyor_test_{secrets.token_hex(4)}"
    url = services.create_database(admin_url, name)
    migrate.upgrade(load_settings(database_url=url, broker_url="redis://unused"))
    yield url
    services.drop_database(admin_url, name)


def claim_redis_db(base_url: str) -> tuple[str, Any]:
    """Claims a free Redis database index (1-15) with a lock key in db 0, so concurrent test
    sessions on one server never flush each other's queues. Returns the URL and a release()."""
    parts = urllib.parse.urlsplit(base_url)
    locks = redis.Redis.from_url(urllib.parse.urlunsplit(parts._replace(path="/0")))
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    candidates = list(range(1, 16))
    secrets.SystemRandom().shuffle(candidates)
    for db in candidates:
        key = f"conveyor-test-lock:{db}"
        if locks.set(key, token, nx=True, ex=3600):
            url = urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))
            redis.Redis.from_url(url).flushdb()

            def release(key: str = key, url: str = url) -> None:
                redis.Redis.from_url(url).flushdb()
                if locks.get(key) == token.encode():
                    locks.delete(key)

            return url, release
    raise RuntimeError("no free Redis database index (1-15): too many concurrent test sessions")


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A Redis database index of its own (claimed, flushed before and after)."""
    url, release = claim_redis_db(services.test_broker_url())
    yield url
    release()


@pytest.fixture(scope="session")
def settings(database_url: str, broker_url: str) -> Settings:
    """Settings pointing at the test services, with short deadlines."""
    return load_settings(
        database_url=database_url,
        broker_url=broker_url,
        security=SECURITY_TEST_OVERRIDES,
        **TEST_OVERRIDES,
    )


@pytest.fixture(scope="session")
def api_key(settings: Settings) -> str:
    """The session's all-scopes API key of tenant ``default``."""
    return str(run_async(create_api_key(settings)))


@pytest.fixture(scope="session")
def auth_headers(api_key: str) -> dict[str, str]:
    """``Authorization: Bearer <session key>``."""
    return {"authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="session")
def operator_headers(settings: Settings) -> dict[str, str]:
    """``Authorization`` of an operator key (``*`` plus ``platform:admin``), tenant ``default``."""
    key = run_async(create_api_key(settings, scopes=("*", "platform:admin"), name="operator"))
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def service_env(settings: Settings, api_key: str) -> dict[str, str]:
    """Environment for conveyor subprocesses using the same services, deadlines and API key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATABASE_URL"] = str(settings.database_url)
    env["CONVEYOR_BROKER_URL"] = str(settings.broker_url)
    for key, value in TEST_OVERRIDES.items():
        env[f"CONVEYOR_{key.upper()}"] = str(value)
    for key, value in SECURITY_TEST_OVERRIDES.items():
        env[f"CONVEYOR_SECURITY__{key.upper()}"] = str(value)
    env["CONVEYOR_API_KEY"] = api_key
    env["PYTHONUNBUFFERED"] = "1"
    # Tests watch workers' "succeeded" lines; in production only a sample stays at INFO.
    env["CONVEYOR_LOG_TASK_SUCCESS_SAMPLE"] = "1"
    return env


# pytest-celery (its ``celery.contrib.pytest`` fixtures) builds the app and the in-process
# worker; these fixtures make them Conveyor's. Session-scoped: one worker for the whole run,
# as a worker per test would add its start and stop to every task test.


@pytest.fixture(scope="session")
def celery_config(settings: Settings) -> dict[str, Any]:
    """pytest-celery's app configuration: exactly what ``create_celery(settings)`` applies."""
    return {**conveyor_celery_config(settings), "include": TASK_MODULES}


@pytest.fixture(scope="session")
def celery_parameters() -> dict[str, Any]:
    """pytest-celery's app constructor arguments: the app's name, as ``create_celery``'s."""
    return {"name": "conveyor"}


@pytest.fixture(scope="session")
def celery_enable_logging() -> bool:
    """Celery's own logging setup, so the worker's ``setup_logging`` receivers run as live."""
    return True


@pytest.fixture(scope="session")
def celery_includes() -> list[str]:
    """Modules the worker imports: every domain's task adapters."""
    return list(TASK_MODULES)


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    """The in-process worker's pool: threads (the tasks share the test's runtime)."""
    return "threads"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    """The in-process worker's options: four threads, no ``celery.ping`` round trip."""
    return {"concurrency": 4, "perform_ping_check": False, "shutdown_timeout": 20}


@pytest.fixture(scope="session")
def celery_app(celery_session_app: Any, settings: Settings) -> Any:
    """The Conveyor Celery app bound to the test broker (pytest-celery's session app)."""
    from tasks.runtime import runtime

    # As create_celery does: the task modules register their tasks (shared tasks) on the app.
    for module in TASK_MODULES:
        importlib.import_module(module)
    celery_session_app.conveyor_settings = settings
    runtime.configure(settings)
    return celery_session_app


@pytest.fixture(scope="session")
def celery_worker(celery_app: Any, celery_session_worker: Any) -> Any:
    """pytest-celery's in-process session worker (threads pool) consuming every domain queue.

    Shadows pytest-celery's own ``celery_worker`` (a Docker-container worker).
    """
    return celery_session_worker


@pytest.fixture
async def api_app(settings: Settings, celery_app: Any) -> AsyncIterator[Any]:
    """The FastAPI app wired to the test services."""
    from app.main import create_app

    app = create_app(settings, celery=celery_app)
    yield app
    await app.state.container.registry.dispose()


@pytest.fixture
async def client(api_app: Any, auth_headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """httpx client on the app (ASGITransport: no sockets), sending the session's API key."""
    transport = httpx.ASGITransport(app=api_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://conveyor.test", headers=auth_headers
    ) as http:
        yield http


@pytest.fixture
async def clean_db(database_url: str) -> None:
    """Empties every domain table (the migrated structure stays)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            for schema in DOMAINS:
                rows = await conn.execute(
                    sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"),
                    {"s": schema},
                )
                names = [f'"{schema}"."{r[0]}"' for r in rows if r[0] not in KEEP_TABLES]
                if names:
                    await conn.execute(sa.text(f"TRUNCATE {', '.join(names)}"))
    finally:
        await engine.dispose()


@pytest.fixture
def redis_client(broker_url: str) -> redis.Redis:
    """Redis client on the test broker database."""
    return redis.Redis.from_url(broker_url)


@pytest.fixture
def spawn(service_env: dict[str, str], tmp_path: Any) -> Iterator[Any]:
    """Starts ``conveyor <args>`` subprocesses; all are stopped at the end of the test."""
    procs: list[Proc] = []

    def _spawn(*args: str, env: dict[str, str] | None = None, name: str | None = None) -> Proc:
        log_path = tmp_path / f"{name or args[0]}-{len(procs)}.log"
        proc = Proc(list(args), {**service_env, **(env or {})}, log_path)
        procs.append(proc)
        return proc

    def stop_all() -> None:
        for proc in procs:
            proc.stop()

    _spawn.stop_all = stop_all  # type: ignore[attr-defined]
    yield _spawn
    stop_all()


class Stack:
    """Services on a broker database of their own, for tests that run conveyor subprocesses
    (so the session's in-process worker cannot take their tasks)."""

    def __init__(
        self,
        settings: Settings,
        env: dict[str, str],
        celery: Any,
        client: httpx.AsyncClient,
        app: Any,
        spawn: Any,
    ) -> None:
        self.api_key = env.get("CONVEYOR_API_KEY", "")
        self.headers = {"authorization": f"Bearer {self.api_key}"}
        self.settings = settings
        self.env = env
        self.celery = celery
        self.client = client
        self.app = app
        self._spawn = spawn
        self.redis = redis.Redis.from_url(str(settings.broker_url))

    def spawn(self, *args: str, env: dict[str, str] | None = None, name: str | None = None) -> Proc:
        return self._spawn(*args, env={**self.env, **(env or {})}, name=name)

    def worker(
        self, queues: str = "platform", concurrency: int = 2, pool: str = "prefork", **kw: Any
    ) -> Proc:
        proc = self.spawn(
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--name",
            f"{queues}-{secrets.token_hex(3)}@%h",
            name=f"worker-{queues}",
            **kw,
        )
        proc.wait_for_log(" ready.", timeout=60)
        return proc

    def relay(self, **kw: Any) -> Proc:
        proc = self.spawn("relay", name="relay", **kw)
        proc.wait_for_log("relay started", timeout=30)
        return proc


@pytest.fixture
async def stack(
    settings: Settings, service_env: dict[str, str], spawn: Any
) -> AsyncIterator[Stack]:
    """A fresh broker database, the API on it, and helpers to start subprocess workers/relays."""
    from app.main import create_app

    url, release = claim_redis_db(str(settings.broker_url))
    isolated = settings.model_copy(update={"broker_url": url})
    env = {**service_env, "CONVEYOR_BROKER_URL": url}
    celery = create_celery(isolated)
    app = create_app(isolated, celery=celery)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"authorization": f"Bearer {env['CONVEYOR_API_KEY']}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://conveyor.test", headers=headers
    ) as http:
        yield Stack(isolated, env, celery, http, app, spawn)
    # Stop this test's processes before the broker database is released for reuse.
    spawn.stop_all()
    await app.state.container.registry.dispose()
    release()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``missing_service`` is skipped, or fails when ``CI`` is set; the conveyor
    processes alive before a test directory starts are remembered (see the leak check)."""
    module = _test_directory(item)
    if module not in _MODULE_PROCESSES:
        _MODULE_PROCESSES[module] = _conveyor_processes()
    marker = item.get_closest_marker("missing_service")
    if marker is not None:
        from tests.support.services import missing_service

        missing_service(str(marker.args[0]))


# Marks this session's subprocesses (inherited through the environment) so the leak check
# below never touches another test session's processes on the same machine.
SESSION_MARK = f"{os.getpid()}-{secrets.token_hex(4)}"
os.environ["PYTEST_CONVEYOR_SESSION"] = SESSION_MARK


def _conveyor_processes() -> dict[int, str]:
    """This session's live ``conveyor`` processes (pid -> command line): descendants of this
    process, and orphans that carry its session mark."""
    import psutil

    me = psutil.Process()
    descendants = {p.pid for p in me.children(recursive=True)}
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if not ("app.cli" in cmdline or "bin/conveyor " in cmdline):
                continue
            if proc.pid not in descendants and (
                proc.environ().get("PYTEST_CONVEYOR_SESSION") != SESSION_MARK
            ):
                continue
        except psutil.Error:
            continue
        found[proc.pid] = cmdline
    return found


_MODULE_PROCESSES: dict[str, dict[int, str]] = {}


def _test_directory(item: pytest.Item) -> str:
    # Package-scoped fixtures (the console's processes) live as long as their directory.
    return item.nodeid.split("::", 1)[0].rsplit("/", 1)[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a test directory's last test (and its fixtures' teardown), no conveyor process it
    started may still run: a leaked relay or worker on the session's database and broker
    publishes or swallows what later tests count. A leak is killed, then fails the test."""
    yield
    module = _test_directory(item)
    if nextitem is not None and _test_directory(nextitem) == module:
        return
    import psutil

    before = _MODULE_PROCESSES.get(module, {})
    deadline = time.monotonic() + 10
    leaked = {p: c for p, c in _conveyor_processes().items() if p not in before}
    while leaked and time.monotonic() < deadline:  # a stopping process gets a moment
        time.sleep(0.2)
        leaked = {p: c for p, c in _conveyor_processes().items() if p not in before}
    if not leaked:
        return
    for pid in leaked:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    lines = "\n".join(f"  {pid} {cmdline}" for pid, cmdline in leaked.items())
    pytest.fail(f"{module} left conveyor processes running (killed now):\n{lines}")
