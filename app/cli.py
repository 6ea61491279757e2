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

    from app.main import uvicorn_options
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("api")
    settings = _settings()
    _require(settings)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=conveyor_logging.uvicorn_log_config(),
        **uvicorn_options(settings),  # slow-loris and overload limits (SECURITY.md)
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
@click.option("--name", default=None, help="beat node name (default: beat-<pid>@<host>)")
def beat(loglevel: str, name: str | None) -> None:
    """Run the database-backed beat: fires the schedules table (run several: one leader fires)."""
    from app import beat as beat_module
    from app.celery_app import get_celery
    from monitoring import logging as conveyor_logging

    conveyor_logging.setup("beat", level=loglevel)
    settings = _settings()
    _require(settings)
    beat_module.NODE_NAME = name
    get_celery().start(
        ["beat", "--loglevel", loglevel, "--scheduler", "app.beat:DatabaseScheduler"]
    )


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
        if settings.env == "dev" and settings.security.auth_required:
            # Local development: one all-scopes key, reused across runs, shown on start-up.
            subprocess.run([*conveyor, "keys", "dev-key"], env=env, check=False)
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


# ------------------------------------------------------------------------------ keys


def _keys_call(settings: Settings, action: Any) -> Any:
    """Runs ``action(keys_service)`` on a fresh engine registry; domain errors exit 2."""
    from app.container import Container
    from app.db import EngineRegistry
    from domains.shared.errors import DomainError

    async def _main() -> Any:
        registry = EngineRegistry(settings)
        try:
            return await action(Container(settings, registry).services["api_keys"])
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
    from domains.platform.keys import parse_duration
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
        token: str = new.plaintext
        return token

    token = _keys_call(settings, ensure)
    click.echo(
        f"conveyor: development API key (tenant default, all scopes; saved in {path}):\n"
        f"  export CONVEYOR_API_KEY={token}"
    )


main.add_command(cli_metrics.metrics)
main.add_command(cli_ops.ops)
main.add_command(cli_ops.status)

if __name__ == "__main__":
    main()
