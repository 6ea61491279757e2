"""The ``conveyor`` command: up, api, worker, beat, flower, migrate, relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any, NoReturn

import click

from app.cli import metrics as cli_metrics
from app.cli import ops as cli_ops
from app.config import DOMAINS, ConfigError, Settings, load_settings

log = logging.getLogger("conveyor")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(f"conveyor: configuration error: {exc}", err=True)
        raise SystemExit(2) from None
    return settings


def _require(settings: Settings) -> None:
    try:
        settings.database_for("platform")
        settings.broker()
        settings.require_secrets()
    except ConfigError as exc:
        click.echo(f"conveyor: configuration error: {exc}", err=True)
        raise SystemExit(2) from None


# Commands that need no servers, or start their own (`up`).
_SELF_CONTAINED = {"up", "openapi", "new-domain", "ops", "embedded-guard"}


def _use_running_stack(command: str | None) -> None:
    """Points unset URLs at the stack ``conveyor up`` runs in this data directory.

    With no database configured and no ``up`` running, a command that needs the database
    stops here with one line saying so (instead of a configuration error per setting).
    """
    from app.runtime import stack_state

    try:
        settings = load_settings()
    except ConfigError:
        return  # the command itself reports it
    configured = [
        name
        for name, value in (
            ("CONVEYOR_DATABASE_URL", settings.database_url),
            ("CONVEYOR_BROKER_URL", settings.broker_url),
        )
        if value
    ]
    data_dir = stack_state.find_data_dir(settings.data_dir, "CONVEYOR_DATA_DIR" in os.environ)
    stack_state.apply_to_environ(os.environ, data_dir, configured)
    if command in _SELF_CONTAINED or command is None or "--help" in sys.argv:
        return
    try:
        load_settings().database_for("platform")
    except ConfigError:
        click.echo(f"conveyor: {stack_state.not_running_hint(data_dir)}", err=True)
        raise SystemExit(2) from None


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Conveyor: FastAPI in front, queue-routed Celery workers behind, PostgreSQL as the source of truth.

    With no CONVEYOR_DATABASE_URL / CONVEYOR_BROKER_URL / CONVEYOR_API_URL set, every command
    uses the servers of the ``conveyor up`` running in this directory (``<data_dir>/up.json``).
    """
    from app.runtime import supervisor

    supervisor.die_with_parent()  # started by `up`: stop when it dies, even by SIGKILL
    if ctx.invoked_subcommand not in ("up", "embedded-guard") and not ctx.resilient_parsing:
        _use_running_stack(ctx.invoked_subcommand)


@main.command()
def migrate() -> None:
    """Create the domain schemas and apply their migrations (idempotent)."""
    from app.db import migrate as migrations

    settings = _settings()
    try:
        settings.database_for("platform")
    except ConfigError as exc:
        click.echo(f"conveyor: configuration error: {exc}", err=True)
        raise SystemExit(2) from None
    migrations.upgrade(settings)
    click.echo(f"migrated schemas: {', '.join(DOMAINS)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes")
def api(host: str, port: int, workers: int) -> None:
    """Run the HTTP API (Swagger UI at /docs, ReDoc at /redoc)."""
    import uvicorn

    from app.main import uvicorn_options
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("api")
    settings = _settings()
    _require(settings)
    uvicorn.run(
        "app.main:server_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=conveyor_logging.uvicorn_log_config(),
        **uvicorn_options(settings),  # slow-loris and overload limits (SECURITY.md)
    )


def run_celery(app: Any, argv: list[str]) -> int:
    """Runs a ``celery`` sub-command and returns its exit status.

    Celery's own ``app.start()``/``worker_main()`` drop it: its click command runs with
    ``standalone_mode=False``, whose return value (the ``ctx.exit`` code, e.g. 1 after
    "Unrecoverable error: WorkerLostError('Could not start worker processes')") is discarded,
    so a failed worker used to exit 0.

    Args:
        app: The Celery app.
        argv: The sub-command and its options.

    Returns:
        The exit status (0 on a clean stop).
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0


@main.command()
@click.option(
    "--queues",
    "-Q",
    default=",".join(DOMAINS),
    show_default=True,
    help="comma-separated domain queues",
)
@click.option("--concurrency", "-c", default=2, show_default=True, type=int)
@click.option(
    "--pool",
    default="prefork",
    show_default=True,
    type=click.Choice(["prefork", "threads", "solo"]),
)
@click.option("--name", default=None, help="worker node name (default: <queues>@<host>)")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--quiet", is_flag=True, help="no start-up banner nor running-as-root warning")
@click.option(
    "--check",
    is_flag=True,
    help="liveness probe: exit 0 if the worker of --queues is alive and looping, else 1",
)
@click.option(
    "--max-age",
    default=None,
    type=float,
    help="--check: seconds after which the heartbeat is stale"
    " (default: CONVEYOR_WORKER_HEARTBEAT_MAX_AGE_SECONDS)",
)
@click.option(
    "--heartbeat-file",
    default=None,
    help="heartbeat file (default: <data dir>/run/worker-<--name or --queues>.heartbeat)",
)
def worker(
    queues: str,
    concurrency: int,
    pool: str,
    name: str | None,
    loglevel: str,
    quiet: bool,
    check: bool,
    max_age: float | None,
    heartbeat_file: str | None,
) -> None:
    """Run a Celery worker consuming the given domain queues (or, with --check, probe one)."""
    import pathlib

    from app.adapters.celery_app import get_celery
    from app.runtime import worker_health
    from monitoring import logging as conveyor_logging

    settings = _settings()
    path = (
        pathlib.Path(heartbeat_file)
        if heartbeat_file
        else worker_health.heartbeat_path(settings.data_dir, name or queues)
    )
    if check:
        healthy, why = worker_health.check(
            path, max_age or settings.worker_heartbeat_max_age_seconds
        )
        click.echo(f"conveyor worker --check: {why}", err=not healthy)
        raise SystemExit(0 if healthy else 1)
    conveyor_logging.setup("worker", level=loglevel)
    _require(settings)
    unknown = [q for q in queues.split(",") if q not in DOMAINS]
    if unknown:
        click.echo(
            f"conveyor: unknown queue(s) {', '.join(unknown)}; known: {', '.join(DOMAINS)}",
            err=True,
        )
        raise SystemExit(2)
    node = name or f"{queues.replace(',', '+')}@%h"
    cli_metrics.setup_worker_metrics(node, settings)  # before prometheus_client loads
    if quiet:
        _quiet_celery()
    argv = [
        *(["--quiet"] if quiet else []),
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-n",
        node,
        "--loglevel",
        loglevel,
    ]
    if settings.task_events:
        argv.append("-E")
    app = get_celery()
    worker_health.install(
        app,
        path=path,
        interval=settings.worker_heartbeat_seconds,
        shutdown_timeout=settings.worker_shutdown_timeout_seconds,
    )
    # Exit with the worker's status (a pool that could not start, an unrecoverable error), so
    # "restart on failure" supervisors restart it.
    raise SystemExit(run_celery(app, argv))


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--name", default=None, help="beat node name (default: beat-<pid>@<host>)")
@click.option("--quiet", is_flag=True, help="no start-up banner")
def beat(loglevel: str, name: str | None, quiet: bool) -> None:
    """Run the database-backed beat: fires the schedules table (run several: one leader fires)."""
    from app.adapters.celery_app import get_celery
    from app.runtime import beat as beat_module
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("beat", level=loglevel)
    settings = _settings()
    _require(settings)
    beat_module.NODE_NAME = name
    if quiet:
        _quiet_celery()
    # Exit with beat's status, so "restart on failure" supervisors restart it.
    code = run_celery(
        get_celery(),
        [
            *(["--quiet"] if quiet else []),
            "beat",
            "--loglevel",
            loglevel,
            "--scheduler",
            "app.runtime.beat:DatabaseScheduler",
        ],
    )
    raise SystemExit(code)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--insecure-dev", is_flag=True, help="allow running without basic auth (local development only)"
)
@click.option("--quiet", is_flag=True, help="no banner, no warnings while workers start")
def flower(host: str, port: int, insecure_dev: bool, quiet: bool) -> None:
    """Run Flower (task monitor) with basic auth.

    The configuration (basic auth, offline-worker purge, optional persistent state) is
    ``monitoring/flowerconfig.py``; it reads the credentials itself, so the password never
    shows on a command line.
    """
    import importlib.util

    from app.adapters.celery_app import get_celery

    settings = _settings()
    _require(settings)
    if not (settings.flower_user and settings.flower_password):
        if not insecure_dev:
            click.echo(
                "conveyor: Flower needs credentials: set CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD,"
                " or pass --insecure-dev for local development",
                err=True,
            )
            raise SystemExit(2)
        click.echo(
            "conveyor: WARNING: Flower runs WITHOUT authentication (--insecure-dev)", err=True
        )
        # flowerconfig refuses to run without credentials unless told so on purpose.
        os.environ["CONVEYOR_FLOWER_INSECURE_DEV"] = "1"
    spec = importlib.util.find_spec("monitoring.flowerconfig")
    if spec is None or spec.origin is None:  # pragma: no cover - the package ships it
        raise click.ClickException("monitoring/flowerconfig.py not found")
    _flower_stops_promptly()
    if quiet:
        # "Inspect method X failed" while the workers start, once per method and refresh.
        logging.getLogger("flower.inspector").setLevel(logging.CRITICAL)
    argv = [
        *(["--quiet"] if quiet else []),
        "flower",
        f"--conf={spec.origin}",
        f"--address={host}",
        f"--port={port}",
    ]
    get_celery().start(argv)


def _quiet_celery() -> None:
    """No "running with superuser privileges" warning (``up`` on a laptop or in a container)."""
    import warnings

    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)


def _flower_stops_promptly() -> None:
    """Flower's SIGTERM handler exits through ``sys.exit``, which then waits for its executor's
    threads (an inspect broadcast in flight: up to 15 s). Keep the clean exit (state saved by its
    ``atexit`` hook) but end the process if it is not done within a few seconds.
    """
    from flower import command as flower_command  # type: ignore[import-untyped]

    def _sigterm(signum: int, _: object) -> None:
        timer = threading.Timer(3.0, os._exit, (0,))
        timer.daemon = True
        timer.start()
        raise SystemExit(0)

    flower_command.sigterm_handler = _sigterm


@main.command()
def relay() -> None:
    """Run the outbox relay and the stale-operation sweeper (several may run at once)."""
    from app.container import Container
    from app.db import EngineRegistry
    from app.runtime.heap import freeze_heap
    from app.runtime.outbox import OutboxPublisher, run_relay
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("relay")
    settings = _settings()
    _require(settings)

    async def _main() -> None:
        registry = EngineRegistry(settings)
        publisher = OutboxPublisher(registry, settings)
        container = Container(settings, registry)
        freeze_heap()  # startup's objects live as long as the process
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "relay started (interval %.1fs, sweeper every %.1fs)",
            settings.relay_interval_seconds,
            settings.sweeper_interval_seconds,
        )
        try:
            await run_relay(publisher, container.operations, settings, stop)
        finally:
            await registry.dispose()

    asyncio.run(_main())


def _embedded_env(settings: Settings, echo: Any) -> tuple[dict[str, str], Any]:
    """Starts embedded servers for what is not configured; returns env overrides and a stopper."""
    env: dict[str, str] = {}
    need_db = settings.database_url is None
    need_broker = settings.broker_url is None
    if not (need_db or need_broker):
        return env, None
    from app.runtime.embedded import start_embedded

    data = pathlib.Path(settings.data_dir).resolve() / "embedded"
    what = " and ".join(
        name for name, wanted in (("PostgreSQL", need_db), ("Redis", need_broker)) if wanted
    )
    echo(f"starting embedded {what} in {data}")
    services = start_embedded(data, postgres=need_db, redis=need_broker)
    if need_db:
        env["CONVEYOR_DATABASE_URL"] = services.database_url
    if need_broker:
        env["CONVEYOR_BROKER_URL"] = services.broker_url
    return env, services


def _display_url(url: str) -> str:
    """``url`` without a password (the summary is printed on a terminal)."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        if url.startswith("postgres"):
            return make_url(url).render_as_string(hide_password=True)
    import re

    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int, help="API port")
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option(
    "--metrics-port",
    default=cli_metrics.DEFAULT_PORT,
    show_default=True,
    type=int,
    help="Prometheus exporter port (queues, tasks, outbox, operations)",
)
@click.option(
    "--concurrency", default=2, show_default=True, type=int, help="processes per domain worker"
)
@click.option(
    "--queues",
    default=",".join(DOMAINS),
    show_default=True,
    help="domain queues to start a worker for (comma-separated)",
)
@click.option("--no-flower", is_flag=True, help="do not start Flower")
@click.option("--no-metrics", is_flag=True, help="do not start the metrics exporter")
@click.option("--verbose", is_flag=True, help="show the Celery banners and every access line")
def up(
    host: str,
    port: int,
    flower_port: int,
    metrics_port: int,
    concurrency: int,
    queues: str,
    no_flower: bool,
    no_metrics: bool,
    verbose: bool,
) -> None:
    """Run everything: migrations, API, one worker per domain queue, relay, beat, Flower, metrics.

    With no database/broker URL configured, embedded PostgreSQL and Redis start first. Ctrl-C,
    SIGTERM or closing the terminal (SIGHUP) stops every process; if ``up`` is killed outright,
    its children stop by themselves. A worker, the relay or beat that dies is restarted with
    backoff. Other ``conveyor`` commands find this stack through ``<data_dir>/up.json``.
    """
    from app.runtime import stack_state, supervisor

    settings = _settings()
    out = supervisor.Output()

    def say(text: str) -> None:
        out.line("up", text)

    def fail(text: str) -> NoReturn:
        click.echo(f"conveyor: {text}", err=True)
        raise SystemExit(2)

    domains = [q for q in queues.split(",") if q]
    unknown = [q for q in domains if q not in DOMAINS]
    if unknown or not domains:
        fail(f"--queues: unknown queue(s) {', '.join(unknown)}; known: {', '.join(DOMAINS)}")
    data_dir = pathlib.Path(settings.data_dir).resolve()
    lock = stack_state.StackLock(data_dir)
    try:
        lock.acquire()
    except stack_state.AlreadyRunning as exc:
        fail(str(exc))
    try:
        _up(
            settings,
            lock,
            out,
            say,
            fail,
            host,
            port,
            flower_port,
            metrics_port,
            concurrency,
            domains,
            no_flower,
            no_metrics,
            verbose,
        )
    finally:
        lock.release()


def _up(
    settings: Settings,
    lock: Any,
    out: Any,
    say: Any,
    fail: Any,
    host: str,
    port: int,
    flower_port: int,
    metrics_port: int,
    concurrency: int,
    domains: list[str],
    no_flower: bool,
    no_metrics: bool,
    verbose: bool,
) -> None:
    from app.runtime import supervisor, worker_health

    flower_on, metrics_on = not no_flower, not no_metrics
    # Every port first: a busy one is reported before anything starts.
    wanted = [("API", "--port", port)]
    if flower_on:
        wanted.append(("Flower", "--flower-port", flower_port))
    if metrics_on:
        wanted.append(("metrics", "--metrics-port", metrics_port))
    for label, option, number in wanted:
        if supervisor.port_in_use(host, number):
            fail(
                f"port {number} on {host} ({label}) is already in use; stop what uses it or pick"
                f' another: conveyor up {option} {number + 1} (make run ARGS="{option}'
                f' {number + 1}")'
            )
    flower_args = ["flower", "--host", host, "--port", str(flower_port), "--quiet"]
    flower_open = not (settings.flower_user and settings.flower_password)
    if flower_on and flower_open:
        if host not in ("127.0.0.1", "localhost", "::1"):
            fail(
                "Flower would be reachable from the network without a password;"
                " set CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD, or pass --no-flower"
            )
        flower_args.append("--insecure-dev")

    stop_signal: list[int] = []

    def _on_signal(signum: int, _: object) -> None:
        stop_signal.append(signum)
        raise KeyboardInterrupt

    # SIGHUP: the terminal closed. Ctrl-C, SIGTERM (docker stop, systemd, kill) likewise.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    # The kernel sends SIGHUP on hang-up only to the session leader. An interactive shell
    # passes it on to its jobs, but `make` (the leader when a terminal runs `make run`
    # directly) just waits for `up`: so `up` also watches its terminal go away itself.
    had_terminal = supervisor.has_terminal()

    def check_terminal() -> None:
        if had_terminal and not supervisor.has_terminal():
            stop_signal.append(signal.SIGHUP)
            raise KeyboardInterrupt

    embedded: Any = None
    sup: supervisor.Supervisor | None = None
    guard: subprocess.Popen[bytes] | None = None
    conveyor = [sys.executable, "-m", "app.cli"]
    try:
        env_overrides, embedded = _embedded_env(settings, say)
        env = {**os.environ, **env_overrides}
        if embedded is not None:
            # Embedded servers run detached: a guard stops them if `up` is killed outright.
            guard_argv = [*conveyor, "embedded-guard", str(lock.data_dir / "embedded")]
            if embedded.redis_pid:
                guard_argv += ["--redis-pid", str(embedded.redis_pid)]
            guard = subprocess.Popen(
                guard_argv,
                env={**env, supervisor.PARENT_PID_ENV: str(os.getpid())},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        api_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        lock.publish(
            {
                "database_url": env.get("CONVEYOR_DATABASE_URL") or settings.database_url,
                "broker_url": env.get("CONVEYOR_BROKER_URL") or settings.broker_url,
                "api_url": api_url,
                "flower_url": f"http://{host}:{flower_port}" if flower_on else None,
                "metrics_url": f"http://{host}:{metrics_port}/metrics" if metrics_on else None,
                "embedded": {
                    "postgres": "CONVEYOR_DATABASE_URL" in env_overrides,
                    "redis": "CONVEYOR_BROKER_URL" in env_overrides,
                },
            }
        )
        say("migrating")
        migrated = subprocess.run(
            [*conveyor, "migrate"], env=env, check=False, capture_output=True, text=True
        )
        if migrated.returncode != 0:
            out.write(migrated.stdout + migrated.stderr)
            raise SystemExit(migrated.returncode)
        key: str | None = None
        key_path = pathlib.Path(settings.data_dir).resolve() / "dev-api-key"
        if settings.env == "dev" and settings.security.auth_required:
            # Local development: one all-scopes key, reused across runs, shown in the summary.
            made = subprocess.run(
                [*conveyor, "keys", "dev-key"], env=env, check=False, capture_output=True
            )
            if made.returncode == 0 and key_path.exists():
                key = key_path.read_text().strip()
        quiet = [] if verbose else ["--quiet"]
        children = [
            supervisor.Child(
                "api",
                [*conveyor, "api", "--host", host, "--port", str(port)],
                restart=False,
            )
        ]
        for domain in domains:
            children.append(
                supervisor.Child(
                    domain,
                    [
                        *conveyor,
                        "worker",
                        "--queues",
                        domain,
                        "--concurrency",
                        str(concurrency),
                        "--name",
                        f"{domain}@%h",
                        *quiet,
                    ],
                    # Liveness: `up` kills and restarts a worker whose heartbeat goes stale.
                    heartbeat=worker_health.heartbeat_path(settings.data_dir, f"{domain}@%h"),
                    heartbeat_max_age=settings.worker_heartbeat_max_age_seconds,
                )
            )
        children.append(supervisor.Child("relay", [*conveyor, "relay"]))
        children.append(supervisor.Child("beat", [*conveyor, "beat", *quiet]))
        if flower_on:
            children.append(supervisor.Child("flower", [*conveyor, *flower_args]))
        if metrics_on:
            children.append(
                supervisor.Child(
                    "metrics",
                    [*conveyor, "metrics", "--host", host, "--port", str(metrics_port)],
                )
            )
        sup = supervisor.Supervisor(env, out)
        for child in children:
            sup.start(child)

        import httpx

        def api_ready() -> bool:
            check_terminal()
            return httpx.get(f"{api_url}/readyz", timeout=2).status_code == 200

        ready = supervisor.wait_until(api_ready, sup, timeout=120)
        if isinstance(ready, supervisor.Child):
            raise SystemExit(1)
        out.write(
            _summary(
                settings,
                env,
                env_overrides,
                api_url,
                host,
                flower_port,
                metrics_port,
                flower_on,
                flower_open,
                metrics_on,
                key,
                key_path,
                ready,
            )
        )
        while True:
            dead = sup.check()
            if dead is not None:
                say(f"{dead.name} exited; stopping everything")
                raise SystemExit(1)
            check_terminal()
            time.sleep(0.5)
    except KeyboardInterrupt:
        names: dict[int, str] = {signal.SIGHUP: "SIGHUP", signal.SIGTERM: "SIGTERM"}
        say(f"stopping ({names.get(stop_signal[0], 'Ctrl-C') if stop_signal else 'Ctrl-C'})…")
    finally:
        # A second Ctrl-C must not abandon children half-way through stopping.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if sup is not None:
            for name in sup.stop():
                say(f"{name} did not stop in time; killed it")
        if embedded is not None:
            embedded.stop()
        if guard is not None and guard.poll() is None:
            guard.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                guard.wait(10)
        say("stopped")


def _summary(
    settings: Settings,
    env: dict[str, str],
    env_overrides: dict[str, str],
    api_url: str,
    host: str,
    flower_port: int,
    metrics_port: int,
    flower_on: bool,
    flower_open: bool,
    metrics_on: bool,
    key: str | None,
    key_path: pathlib.Path,
    ready: bool,
) -> str:
    """The start-up summary: where everything is, the key, how to stop."""
    db = env.get("CONVEYOR_DATABASE_URL") or ""
    broker = env.get("CONVEYOR_BROKER_URL") or ""
    rows = [
        ("API", f"{api_url}  (Swagger UI {api_url}/docs, ReDoc {api_url}/redoc)"),
    ]
    if flower_on:
        rows.append(
            (
                "Flower",
                f"http://{host}:{flower_port}"
                + ("  (no password: local only)" if flower_open else "  (basic auth)"),
            )
        )
    if metrics_on:
        rows.append(
            ("Metrics", f"http://{host}:{metrics_port}/metrics  (queues, tasks, operations)")
        )
    embedded_db = "CONVEYOR_DATABASE_URL" in env_overrides
    embedded_broker = "CONVEYOR_BROKER_URL" in env_overrides
    rows.append(("Database", _display_url(db) + ("  (embedded)" if embedded_db else "")))
    rows.append(("Broker", _display_url(broker) + ("  (embedded)" if embedded_broker else "")))
    if key:
        rows.append(("API key", f"export CONVEYOR_API_KEY={key}"))
        rows.append(("", f"(tenant default, all scopes; saved in {key_path})"))
    width = max(len(label) for label, _ in rows) + 2
    rule = "─" * 78
    lines = [
        rule,
        f" Conveyor is up (pid {os.getpid()})"
        + ("" if ready else "; the API is not ready yet, see its lines above"),
    ]
    lines += [f"   {label:<{width}}{value}" for label, value in rows]
    state = (pathlib.Path(settings.data_dir) / "up.json").resolve()
    where = (
        f"in {pathlib.Path.cwd()} or below"
        if not pathlib.Path(settings.data_dir).is_absolute()
        else f"with CONVEYOR_DATA_DIR={settings.data_dir}"
    )
    lines.append("   Other terminals: `conveyor status`, `conveyor ops list`, `conveyor keys ...`")
    lines.append(f"   use this stack by themselves {where} (it is described in {state}).")
    lines.append(f" Stop: Ctrl-C here, or close this terminal, or `kill {os.getpid()}`.")
    lines.append(rule)
    return "\n".join(lines) + "\n"


@main.command("embedded-guard", hidden=True)
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=pathlib.Path))
@click.option("--redis-pid", type=int, default=None)
def embedded_guard(data_dir: pathlib.Path, redis_pid: int | None) -> None:
    """Stops the embedded servers when the ``conveyor up`` that started this guard dies.

    Started by ``up`` with its pid in ``CONVEYOR_UP_PARENT_PID``: the kernel sends SIGTERM
    when ``up`` dies, however it dies (see :func:`app.runtime.supervisor.die_with_parent`).
    """
    from app.runtime.embedded import stop_orphans

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `up`
    while not stop.wait(3600):
        pass
    stop_orphans(data_dir, redis_pid)


@main.command()
def openapi() -> None:
    """Print the API's OpenAPI document as JSON (no database or broker is contacted)."""
    from app.main import create_app

    settings = _settings()
    # create_app only needs the URLs to be set; nothing connects while the schema is built.
    placeholders = {
        "database_url": settings.database_url or "postgresql+asyncpg://openapi@localhost/openapi",
        "broker_url": settings.broker_url or "redis://localhost:6379/0",
    }
    app = create_app(settings.model_copy(update=placeholders))
    click.echo(json.dumps(app.openapi(), indent=2))


@main.command("new-domain")
@click.argument("name")
@click.option(
    "--root",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="project root to generate into",
)
def new_domain(name: str, root: pathlib.Path) -> None:
    """Generate domain NAME (package, router, tasks, migration, tests) and wire it in."""
    from app.cli import scaffold

    try:
        scaffold.new_domain(name, root, echo=click.echo)
    except scaffold.ScaffoldError as exc:
        click.echo(f"conveyor new-domain: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None


# ------------------------------------------------------------------------------ keys


def _keys_call(settings: Settings, action: Any) -> Any:
    """Runs ``action(keys_service)`` on a fresh engine registry; domain errors exit 2."""
    from app.container import Container
    from app.db import EngineRegistry
    from domains.shared.errors import DomainError

    async def _main() -> Any:
        registry = EngineRegistry(settings)
        try:
            return await action(Container(settings, registry).api_keys)
        finally:
            await registry.dispose()

    try:
        return asyncio.run(_main())
    except DomainError as exc:
        click.echo(f"conveyor: {exc.message}", err=True)
        raise SystemExit(2) from None


def _keys_settings() -> Settings:
    settings = _settings()
    try:
        settings.database_for("platform")
    except ConfigError as exc:
        click.echo(f"conveyor: configuration error: {exc}", err=True)
        raise SystemExit(2) from None
    return settings


@main.group()
def keys() -> None:
    """Manage API keys (stored as a prefix and a SHA-256 of the secret; shown once)."""


@keys.command("create")
@click.option("--tenant", default="default", show_default=True, help="tenant the key acts for")
@click.option(
    "--scopes",
    default="",
    help="comma-separated: *, or <area>:read|write with area in operations, imports, webhooks,"
    " schedules, reports (write implies read); platform:admin is the operator's scope",
)
@click.option(
    "--operator",
    is_flag=True,
    help="add the operator scope platform:admin (change and run the system schedules); `*`"
    " never includes it",
)
@click.option("--expires-in", default=None, help="lifetime like 30d, 12h, 90m (default: none)")
@click.option("--name", default="", help="who or what holds the key")
def keys_create(
    tenant: str, scopes: str, operator: bool, expires_in: str | None, name: str
) -> None:
    """Create a key and print it once on stdout (details on stderr)."""
    from domains.platform.keys.model import parse_duration
    from domains.shared.errors import DomainError

    settings = _keys_settings()
    try:
        lifetime = parse_duration(expires_in) if expires_in else None
    except DomainError as exc:
        click.echo(f"conveyor: --expires-in: {exc.message}", err=True)
        raise SystemExit(2) from None

    async def create(service: Any) -> Any:
        return await service.create(
            tenant=tenant,
            scopes=[*scopes.split(","), *(["platform:admin"] if operator else [])],
            name=name,
            expires_in=lifetime,
        )

    new = _keys_call(settings, create)
    key = new.key
    expiry = key.expire_time.isoformat() if key.expire_time else "never"
    click.echo(
        f"conveyor: created API key {key.prefix} for tenant {key.tenant!r}, scopes"
        f" {','.join(key.scopes)}, expires {expiry}. It is shown only this once: store it now.",
        err=True,
    )
    click.echo(new.plaintext)


@keys.command("list")
@click.option("--tenant", default=None, help="only this tenant's keys")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def keys_list(tenant: str | None, as_json: bool) -> None:
    """List keys: prefix, tenant, name, scopes, state, expiry (never the secret)."""
    from domains.shared.clock import utcnow

    settings = _keys_settings()

    async def fetch(service: Any) -> Any:
        return await service.list(tenant)

    now = utcnow()
    rows = [
        {
            "prefix": k.prefix,
            "tenant": k.tenant,
            "name": k.name,
            "scopes": list(k.scopes),
            "state": k.state(now),
            "create_time": k.create_time.isoformat(),
            "expire_time": k.expire_time.isoformat() if k.expire_time else None,
        }
        for k in _keys_call(settings, fetch)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'PREFIX':<14}{'TENANT':<16}{'STATE':<9}{'EXPIRES':<27}{'SCOPES':<30}NAME")
    for r in rows:
        click.echo(
            f"{r['prefix']:<14}{r['tenant'][:15]:<16}{r['state']:<9}"
            f"{(r['expire_time'] or 'never')[:26]:<27}{','.join(r['scopes'])[:29]:<30}{r['name']}"
        )


@keys.command("revoke")
@click.argument("prefix")
def keys_revoke(prefix: str) -> None:
    """Revoke the key with PREFIX; API processes refuse it within a few seconds."""
    settings = _keys_settings()

    async def revoke(service: Any) -> None:
        await service.revoke(prefix)

    _keys_call(settings, revoke)
    click.echo(f"conveyor: revoked API key {prefix}")


@keys.command("dev-key", hidden=True)
def keys_dev_key() -> None:
    """Print the local development key (all scopes, tenant default), creating it if needed.

    Used by ``conveyor up`` when ``CONVEYOR_ENV=dev``; the key is kept in
    ``<data_dir>/dev-api-key`` (mode 0600) and reused while it stays valid.
    """
    from domains.shared.errors import Unauthenticated

    settings = _keys_settings()
    path = pathlib.Path(settings.data_dir) / "dev-api-key"

    async def ensure(service: Any) -> str:
        if path.exists():
            token = path.read_text().strip()
            with contextlib.suppress(Unauthenticated):
                await service.authenticate(token)
                return token
        new = await service.create(tenant="default", scopes=["*"], name="conveyor up (development)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(new.plaintext + "\n")
        created: str = new.plaintext
        return created

    token = _keys_call(settings, ensure)
    click.echo(
        f"conveyor: development API key (tenant default, all scopes; saved in {path}):\n"
        f"  export CONVEYOR_API_KEY={token}"
    )


main.add_command(cli_metrics.metrics)
main.add_command(cli_ops.ops)
main.add_command(cli_ops.status)
