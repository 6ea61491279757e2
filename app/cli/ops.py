"""``conveyor ops`` (list, get, watch, cancel operations over the HTTP API) and ``conveyor status``.

``ops`` talks to the API through the Python client (``clients/python``): ``--api-url`` or ``CONVEYOR_API_URL`` (default http://127.0.0.1:8000),
with ``CONVEYOR_API_KEY`` sent as ``Authorization: Bearer <key>`` when set. API errors (AIP-193)
and unreachable servers print one line and exit 2.

``status`` reads the system directly (broker, workers, databases): one screen with the queues and
their depth, the workers alive, the outbox backlog per domain and the beat leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, NoReturn

import click
import httpx
from conveyor_client import ApiError, ConnectionFailed, Conveyor, Operation, RetryPolicy

from app.status.sources import (
    BeatLeadership,
    live_workers,
    queue_depths_for_status,
    read_beat_leadership,
    unreachable_reason,
)

DEFAULT_API_URL = "http://127.0.0.1:8000"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


class CliError(click.ClickException):
    """A failure reported as one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        """Prints ``conveyor: <message>`` on stderr.

        Args:
            file: Ignored (always stderr).
        """
        click.echo(f"conveyor: {self.format_message()}", err=True)


def make_client(
    api_url: str,
    api_key: str | None,
    timeout: float = 10.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> Conveyor:
    """Returns the Python client (``clients/python``) the ``ops`` commands use.

    Args:
        api_url: The API root, e.g. ``http://127.0.0.1:8000``.
        api_key: Sent as ``Authorization: Bearer <key>`` when given.
        timeout: Seconds per HTTP request (a ``:wait`` adds its own timeout to it).
        transport: httpx transport (tests).

    Returns:
        The client (two quick retries where retrying is safe: a CLI should not hang).
    """
    return Conveyor(
        api_url,
        api_key or "",
        timeout=timeout,
        retry=RetryPolicy(max_retries=2, backoff_base=0.2, retry_after_max=5.0),
        transport=transport,
        headers={"user-agent": "conveyor-cli"},
    )


@contextlib.contextmanager
def api_errors(client: Conveyor) -> Iterator[None]:
    """Turns the client's errors into one-line :class:`CliError` s (exit 2).

    Args:
        client: The client in use (its URL and timeout go into the messages).

    Yields:
        Nothing.

    Raises:
        CliError: For an API error or an unreachable API.
    """
    base = client.base_url
    try:
        yield
    except ConnectionFailed as exc:
        cause = exc.__cause__
        if isinstance(cause, httpx.ConnectError):
            raise CliError(
                f"cannot reach the API at {base} ({unreachable_reason(cause)}); is `conveyor api`"
                " running there? Set --api-url or CONVEYOR_API_URL"
            ) from None
        if isinstance(cause, httpx.TimeoutException):
            raise CliError(
                f"the API at {base} did not answer within {client._core.timeout:g} s"
            ) from None
        raise CliError(f"request to {base} failed: {unreachable_reason(cause or exc)}") from None
    except ApiError as exc:
        raise CliError(error_line(exc)) from None


def error_line(exc: ApiError) -> str:
    """``404 NOT_FOUND: operations/platform.x does not exist`` from a typed API error.

    Args:
        exc: The error.

    Returns:
        One line (a non-AIP-193 body, e.g. a proxy's page, is flattened and cut).
    """
    if not exc.aip193:
        text = exc.message.strip().replace("\n", " ")[:200]
        phrase = httpx.codes.get_reason_phrase(exc.http_status)
        return f"{exc.http_status} {phrase}: {text or 'no details'}"
    hint = ""
    if exc.http_status == 401:
        hint = " (set CONVEYOR_API_KEY to a key from `conveyor keys create`)"
    return f"{exc.http_status} {exc.status}: {exc.message}{hint}"


def operation_path(name: str) -> str:
    """Returns the operation id of a name, checked for emptiness.

    Args:
        name: ``operations/platform.<id>`` or ``platform.<id>``.

    Returns:
        ``platform.<id>``.

    Raises:
        CliError: If the name is empty.
    """
    ident = name.strip().removeprefix("/").removeprefix("operations/")
    if not ident:
        raise CliError(f"operation name {name!r} is empty; expected operations/<domain>.<id>")
    return ident


def _client(ctx: click.Context) -> Conveyor:
    client: Conveyor = ctx.obj
    return client


def _dump(op: Operation) -> dict[str, Any]:
    body: dict[str, Any] = op.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def _progress_text(op: Operation) -> str:
    progress = op.metadata.progress
    return f"{progress.done}/{progress.total}" if progress.total else str(progress.done)


def _short_time(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped or captured output: wide lines, so names are never wrapped (grep-able).
    return console if console.is_terminal else Console(width=250)


@click.group()
@click.option(
    "--api-url",
    envvar="CONVEYOR_API_URL",
    default=DEFAULT_API_URL,
    show_default=True,
    help="API root (env CONVEYOR_API_URL); CONVEYOR_API_KEY is sent as a bearer token.",
)
@click.option("--http-timeout", default=10.0, show_default=True, help="seconds per HTTP request")
@click.pass_context
def ops(ctx: click.Context, api_url: str, http_timeout: float) -> None:
    """List, inspect, watch and cancel operations through the API."""
    client = make_client(api_url, os.environ.get("CONVEYOR_API_KEY") or None, http_timeout)
    ctx.obj = client
    ctx.call_on_close(client.close)


@ops.command("list")
@click.option(
    "--filter",
    "filter_",
    default=None,
    help="AIP-160 filter, e.g. 'metadata.state = \"RUNNING\"' or 'done = false'",
)
@click.option("--page-size", default=None, type=int, help="at most 1000 (API default 50)")
@click.option("--page-token", default=None, help="next_page_token of the previous page")
@click.option(
    "--order-by",
    default="create_time desc",
    show_default=True,
    help="AIP-132 order: 'create_time desc' (newest first) or 'create_time' (oldest first)",
)
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON instead of a table")
@click.pass_context
def list_operations(
    ctx: click.Context,
    filter_: str | None,
    page_size: int | None,
    page_token: str | None,
    order_by: str,
    as_json: bool,
) -> None:
    """List operations (newest first unless --order-by says otherwise), as a table."""
    client = _client(ctx)
    with api_errors(client):
        page = client.operations.page(
            filter_, page_size=page_size, page_token=page_token, order_by=order_by
        )
    if as_json:
        body = {
            "operations": [_dump(op) for op in page.items],
            "next_page_token": page.next_page_token,
        }
        click.echo(json.dumps(body, indent=2))
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "TYPE", "STATE", "PROGRESS", "ATTEMPT", "CREATED", "UPDATED"):
        table.add_column(column, no_wrap=True)
    operations = page.items
    for op in operations:
        meta = op.metadata
        table.add_row(
            op.name,
            f"{meta.domain}.{meta.type}",
            meta.state,
            _progress_text(op),
            str(meta.attempt),
            _short_time(meta.create_time),
            _short_time(meta.update_time),
        )
    console = _console()
    if operations:
        console.print(table)
    else:
        console.print("no operations" + (" match the filter" if filter_ else ""))
    token = page.next_page_token
    if token:
        console.print(f"more: --page-token {token}", highlight=False, soft_wrap=True)


@ops.command("get")
@click.argument("name")
@click.pass_context
def get_operation(ctx: click.Context, name: str) -> None:
    """Print an operation as JSON (NAME: operations/platform.<id> or platform.<id>)."""
    client = _client(ctx)
    with api_errors(client):
        op = client.operations.get(operation_path(name))
    click.echo(json.dumps(_dump(op), indent=2))


@ops.command("cancel")
@click.argument("name")
@click.pass_context
def cancel_operation(ctx: click.Context, name: str) -> None:
    """Cancel an operation (a running one stops at its next unit of work)."""
    client = _client(ctx)
    with api_errors(client):
        op = client.operations.cancel(operation_path(name))
    note = " (it stops at its next unit of work)" if op.state == "CANCELLING" else ""
    click.echo(f"{op.name}: {op.state}{note}")


def _finish(op: Operation) -> NoReturn:
    if op.state == "SUCCEEDED":
        click.echo(f"{op.name}: SUCCEEDED")
        if op.response is not None:
            click.echo(json.dumps(op.response))
        raise SystemExit(0)
    detail = f": {op.error.status}: {op.error.message}" if op.error else ""
    click.echo(f"{op.name}: {op.state}{detail}", err=True)
    raise SystemExit(1)


@ops.command("watch")
@click.argument("name")
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.1, 60),
    help="seconds between progress refreshes (the end is seen at once)",
)
@click.pass_context
def watch_operation(ctx: click.Context, name: str, interval: float) -> None:
    """Show a live progress bar until the operation is done.

    Exits 0 when it SUCCEEDED, 1 when it FAILED or was CANCELLED (printing the error).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    client = _client(ctx)
    ident = operation_path(name)
    with api_errors(client):
        op = client.operations.get(ident)
    console = _console()
    columns = (
        TextColumn("{task.fields[state]:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console) as progress:
        console.print(f"watching {op.name}", highlight=False)
        bar = progress.add_task("", total=None, state="")
        while True:
            prog = op.metadata.progress
            total = prog.total or None
            done = prog.done
            state = op.state
            if state == "SUCCEEDED" and total:
                done = total
            progress.update(
                bar,
                total=total,
                completed=done,
                description=prog.message,
                state=state,
            )
            if op.done or state in TERMINAL_STATES:
                break
            started = time.monotonic()
            # One :wait long poll: it returns as soon as the operation is done, else after
            # `interval`.
            with api_errors(client):
                op = client.operations.wait(ident, timeout=interval)
            if op.done:
                continue
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    _finish(op)


# -- status ----------------------------------------------------------------------------------


async def _outbox_backlog(settings: Any) -> dict[str, tuple[int, dt.datetime | None] | str]:
    from app.config import DOMAINS
    from app.container import DOMAIN_TABLES
    from app.db import EngineRegistry
    from domains.shared.outbox import SqlOutboxRepository

    registry = EngineRegistry(settings)
    out: dict[str, tuple[int, dt.datetime | None] | str] = {}
    try:
        for domain in DOMAINS:
            try:
                maker = registry.sessionmaker(domain)
                async with maker() as session:
                    repo = SqlOutboxRepository(session, DOMAIN_TABLES[domain].outbox)
                    out[domain] = await asyncio.wait_for(repo.backlog(), timeout=5)
            except Exception as exc:
                out[domain] = f"unreachable: {unreachable_reason(exc)}"
    finally:
        await registry.dispose()
    return out


async def _beat_leader(settings: Any) -> BeatLeadership | str:
    # The lease row and the beats' heartbeats (platform schema), as `conveyor beat` writes them.
    from app.db import EngineRegistry

    registry = EngineRegistry(settings)
    try:
        return await read_beat_leadership(registry, settings, lease_timeout=5)
    except Exception as exc:
        return f"unreachable: {unreachable_reason(exc)}"
    finally:
        await registry.dispose()


def _age(oldest: dt.datetime | None) -> str:
    if oldest is None:
        return "-"
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    seconds = max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@click.command()
@click.option(
    "--timeout", default=1.0, show_default=True, help="seconds to wait for workers and the broker"
)
def status(timeout: float) -> None:
    """One screen: queues and their depth, workers alive, outbox backlog, beat leader.

    Exits 2 when the broker or a database cannot be reached (the screen says which).
    """
    from rich.table import Table

    from app.adapters.celery_app import create_celery
    from app.config import DOMAINS, ConfigError, load_settings

    try:
        settings = load_settings()
        broker_url = settings.broker()
        settings.database_for("platform")
    except ConfigError as exc:
        raise CliError(f"configuration error: {exc}") from None
    console = _console()
    problems: list[str] = []
    queues = list(DOMAINS)

    try:
        depths = queue_depths_for_status(broker_url, queues, max(timeout, 1.0))
    except Exception as exc:
        depths = {}
        problems.append(f"broker unreachable: {unreachable_reason(exc)}")

    celery = create_celery(settings, results=False)
    try:
        workers = live_workers(celery, timeout) if depths else {}
    except Exception as exc:
        workers = {}
        problems.append(f"worker inspection failed: {unreachable_reason(exc)}")
    finally:
        celery.close()

    consuming: dict[str, list[str]] = {q: [] for q in queues}
    for name, worker_queues in workers.items():
        for queue in worker_queues:
            consuming.setdefault(queue, []).append(name)

    redacted = urllib.parse.urlsplit(broker_url)
    broker_label = f"{redacted.scheme}://{redacted.hostname}:{redacted.port or ''}{redacted.path}"
    console.print(f"[bold]Queues[/bold] on {broker_label}", highlight=False)
    table = Table(box=None)
    for column in ("QUEUE", "WAITING", "WORKERS"):
        table.add_column(column, no_wrap=True)
    for queue in queues:
        depth = depths.get(queue, "?")
        table.add_row(queue, str(depth), str(len(consuming.get(queue, []))))
    console.print(table)
    if "_unacked" in depths:
        console.print(f"delivered, not yet acknowledged: {depths['_unacked']}", highlight=False)

    console.print()
    console.print("[bold]Workers alive[/bold]", highlight=False)
    table = Table(box=None)
    table.add_column("WORKER", no_wrap=True)
    table.add_column("QUEUES", no_wrap=True)
    for name, worker_queues in workers.items():
        table.add_row(name, ", ".join(worker_queues) or "-")
    if workers:
        console.print(table)
    else:
        note = (
            "unknown (broker unreachable)" if not depths else f"none answered within {timeout:g} s"
        )
        console.print(f" {note}", highlight=False)

    console.print()
    backlog = asyncio.run(_outbox_backlog(settings))
    console.print("[bold]Outbox backlog[/bold] (rows not yet published)", highlight=False)
    table = Table(box=None)
    for column in ("DOMAIN", "UNSENT", "OLDEST"):
        table.add_column(column, no_wrap=True)
    for domain, value in backlog.items():
        if isinstance(value, str):
            problems.append(f"{domain} database {value}")
            table.add_row(domain, "?", value)
        else:
            table.add_row(domain, str(value[0]), _age(value[1]))
    console.print(table)

    console.print()
    beat = asyncio.run(_beat_leader(settings))
    if isinstance(beat, str):
        problems.append(f"platform database {beat}")
        console.print(f"[bold]Beat leader[/bold]: ? ({beat})", highlight=False)
    else:
        lease = beat.leader
        if lease is not None:
            left = (lease.expires_at - lease.now).total_seconds()
            console.print(
                f"[bold]Beat leader[/bold]: {lease.node} (lease expires in {left:.0f}s unless"
                f" renewed; leader for {_age(lease.acquired_at)})",
                highlight=False,
            )
        else:
            console.print(
                "[bold]Beat leader[/bold]: none (no beat holds the lease: schedules do not fire;"
                " start `conveyor beat`)",
                highlight=False,
            )
        if beat.nodes:
            table = Table(box=None)
            for column in ("BEAT", "LEADER", "LAST SEEN"):
                table.add_column(column, no_wrap=True)
            for node in beat.nodes:
                held = beat.leads(node)
                table.add_row(node.node, "yes" if held else "no", f"{_age(node.last_seen)} ago")
            console.print(table)
    if problems:
        for problem in problems:
            click.echo(f"conveyor: {problem}", err=True)
        raise SystemExit(2)
