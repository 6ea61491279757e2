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
import time
from typing import Any

import click

from app import cli_metrics, cli_ops
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
    except ConfigError as exc:
        click.echo(f"conveyor: configuration error: {exc}", err=True)
        raise SystemExit(2) from None


@click.group()
def main() -> None:
    """Conveyor: FastAPI in front, queue-routed Celery workers behind, PostgreSQL as the source of truth."""


@main.command()
def migrate() -> None:
    """Create the domain schemas and apply their migrations (idempotent)."""
    from app import migrate as migrations

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

    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("api")
    _require(_settings())
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=conveyor_logging.uvicorn_log_config(),
    )


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
def worker(queues: str, concurrency: int, pool: str, name: str | None, loglevel: str) -> None:
    """Run a Celery worker consuming the given domain queues."""
    from app.celery_app import get_celery
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("worker", level=loglevel)
    settings = _settings()
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
    argv = [
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
    get_celery().worker_main(argv)


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat (scheduled work)."""
    from app.celery_app import get_celery
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("beat", level=loglevel)
    settings = _settings()
    _require(settings)
    data = pathlib.Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    get_celery().start(["beat", "--loglevel", loglevel, "-s", str(data / "celerybeat-schedule")])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--insecure-dev", is_flag=True, help="allow running without basic auth (local development only)"
)
def flower(host: str, port: int, insecure_dev: bool) -> None:
    """Run Flower (task monitor) with basic auth.

    The configuration (basic auth, offline-worker purge, optional persistent state) is
    ``monitoring/flowerconfig.py``; it reads the credentials itself, so the password never
    shows on a command line.
    """
    import importlib.util

    from app.celery_app import get_celery

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
    argv = ["flower", f"--conf={spec.origin}", f"--address={host}", f"--port={port}"]
    get_celery().start(argv)


@main.command()
def relay() -> None:
    """Run the outbox relay and the stale-operation sweeper (several may run at once)."""
    from app.container import Container
    from app.db import EngineRegistry
    from app.outbox import OutboxPublisher, run_relay
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("relay")
    settings = _settings()
    _require(settings)

    async def _main() -> None:
        registry = EngineRegistry(settings)
        publisher = OutboxPublisher(registry, settings)
        container = Container(settings, registry)
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


def _embedded_env(settings: Settings) -> tuple[dict[str, str], Any]:
    """Starts embedded servers for what is not configured; returns env overrides and a stopper."""
    env: dict[str, str] = {}
    need_db = settings.database_url is None
    need_broker = settings.broker_url is None
    if not (need_db or need_broker):
        return env, None
    from app.embedded import start_embedded

    data = pathlib.Path(settings.data_dir).resolve() / "embedded"
    click.echo(
        f"conveyor: starting embedded {'PostgreSQL ' if need_db else ''}"
        f"{'Redis ' if need_broker else ''}in {data}"
    )
    services = start_embedded(data, postgres=need_db, redis=need_broker)
    if need_db:
        env["CONVEYOR_DATABASE_URL"] = services.database_url
    if need_broker:
        env["CONVEYOR_BROKER_URL"] = services.broker_url
    (data / "urls.json").write_text(json.dumps(env))
    return env, services


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option(
    "--concurrency", default=2, show_default=True, type=int, help="processes per domain worker"
)
@click.option("--no-flower", is_flag=True, help="do not start Flower")
def up(host: str, port: int, flower_port: int, concurrency: int, no_flower: bool) -> None:
    """Run everything: migrations, API, one worker per domain queue, relay, beat and Flower.

    With no database/broker URL configured, embedded PostgreSQL and Redis start first.
    Ctrl-C stops all processes cleanly.
    """
    settings = _settings()
    env_overrides, embedded = _embedded_env(settings)
    env = {**os.environ, **env_overrides}
    conveyor = [sys.executable, "-m", "app.cli"]
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    def stop_all() -> None:
        # A second Ctrl-C must not abandon children half-way through stopping.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(f"conveyor: {name} did not stop in time; killing it", err=True)
                # The whole group: a Celery main process killed alone leaves its pool behind.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if embedded is not None:
            embedded.stop()

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = subprocess.run([*conveyor, "migrate"], env=env, check=False)
        if result.returncode != 0:
            raise SystemExit(result.returncode)
        commands: list[tuple[str, list[str]]] = [
            ("api", ["api", "--host", host, "--port", str(port)])
        ]
        for domain in DOMAINS:
            commands.append(
                (
                    f"worker-{domain}",
                    [
                        "worker",
                        "--queues",
                        domain,
                        "--concurrency",
                        str(concurrency),
                        "--name",
                        f"{domain}@%h",
                    ],
                )
            )
        commands.append(("relay", ["relay"]))
        commands.append(("beat", ["beat"]))
        if not no_flower:
            flower_args = ["flower", "--host", host, "--port", str(flower_port)]
            if not (settings.flower_user and settings.flower_password):
                if host not in ("127.0.0.1", "localhost", "::1"):
                    click.echo(
                        "conveyor: Flower would be reachable from the network without a password;"
                        " set CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD, or pass --no-flower",
                        err=True,
                    )
                    raise SystemExit(2)
                flower_args.append("--insecure-dev")
            commands.append(("flower", flower_args))
        for name, args in commands:
            procs.append(
                (name, subprocess.Popen([*conveyor, *args], env=env, start_new_session=True))
            )
        click.echo(
            f"conveyor: up — API http://{host}:{port}/docs"
            + ("" if no_flower else f", Flower http://{host}:{flower_port}")
            + "; Ctrl-C stops"
        )
        while True:
            for name, proc in procs:
                code = proc.poll()
                if code is not None:
                    click.echo(
                        f"conveyor: {name} exited with code {code}; stopping everything", err=True
                    )
                    raise SystemExit(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("conveyor: stopping…")
    finally:
        stop_all()


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
    from app import scaffold

    try:
        scaffold.new_domain(name, root, echo=click.echo)
    except scaffold.ScaffoldError as exc:
        click.echo(f"conveyor new-domain: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None


main.add_command(cli_metrics.metrics)
main.add_command(cli_ops.ops)
main.add_command(cli_ops.status)

if __name__ == "__main__":
    main()
