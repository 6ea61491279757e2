"""``conveyor metrics``: the Prometheus exporter for workers and the platform's state.

It serves, on one ``/metrics``:

- the task metrics every worker process writes (``conveyor_tasks_total``,
  ``conveyor_task_runtime_seconds``; see :mod:`monitoring.worker_metrics`), merged from the
  prometheus_client multiprocess files under the workers' metrics directory;
- gauges read when Prometheus scrapes: ``conveyor_queue_depth{queue}`` (Redis ``LLEN``, or a
  passive ``queue.declare`` on RabbitMQ), ``conveyor_outbox_backlog{domain}``,
  ``conveyor_outbox_oldest_unsent_age_seconds{domain}``, ``conveyor_operations{domain,state}``,
  and ``conveyor_exporter_source_up{source}`` (0 when a source could not be read).

``conveyor_beat_leader{node}`` comes from the beat leader lease and the beat heartbeats in
PostgreSQL (``platform.beat_leader``, ``platform.beat_nodes``): 1 for the beat holding an unexpired
lease, 0 for every other beat seen recently; nothing when no beat runs (``absent()`` alerts).

Workers directory: ``$CONVEYOR_METRICS_DIR``, else ``<CONVEYOR_DATA_DIR>/metrics``. Each worker
(``conveyor worker`` calls :func:`setup_worker_metrics`) writes in a subdirectory named after its
node, so workers on one host, or containers sharing a volume, never mix their per-pid files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import logging
import os
import pathlib
import re
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from app.config import DOMAINS, ConfigError, Settings, load_settings
from app.status.sources import queue_depths, read_beat_leadership

log = logging.getLogger("conveyor.metrics")
T = TypeVar("T")

DEFAULT_PORT = 9808
OPERATION_STATES = ("PENDING", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED")


def metrics_dir(settings: Settings | None = None) -> pathlib.Path:
    """Returns the workers' metrics directory.

    Args:
        settings: Settings (their ``data_dir``); default: from the environment.

    Returns:
        ``$CONVEYOR_METRICS_DIR`` or ``<data_dir>/metrics``, absolute.
    """
    explicit = os.environ.get("CONVEYOR_METRICS_DIR")
    if explicit:
        return pathlib.Path(explicit).resolve()
    data_dir = settings.data_dir if settings is not None else load_settings().data_dir
    return (pathlib.Path(data_dir) / "metrics").resolve()


def _node_dirname(node: str) -> str:
    from celery.utils.nodenames import host_format

    return re.sub(r"[^A-Za-z0-9_.@+-]", "_", host_format(node)) or "worker"


def setup_worker_metrics(node: str, settings: Settings | None = None) -> pathlib.Path:
    """Prepares multiprocess metrics for a worker: call it in the worker's main process before
    anything imports prometheus_client (i.e. before ``get_celery()``).

    Sets ``PROMETHEUS_MULTIPROC_DIR`` to ``<metrics dir>/<node>`` and empties that directory
    (files of a previous run of this node; counters restart from zero, which Prometheus treats
    as a counter reset). Pool children inherit the variable and write one file per pid there;
    ``worker_process_shutdown`` marks them dead.

    Args:
        node: The worker's node name (``%h`` is expanded, like Celery does).
        settings: Settings (for the data directory); default: from the environment.

    Returns:
        The worker's metrics directory (metrics stay off, with a warning, if it is not writable).
    """
    directory = metrics_dir(settings) / _node_dirname(node)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        # Metrics must never keep a worker from working.
        log.warning("worker metrics disabled: cannot use %s: %s", directory, exc)
        return directory
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        log.warning(
            "prometheus_client was imported before setup_worker_metrics(): task metrics of"
            " pool processes will not be exported"
        )
    return directory


# ------------------------------------------------------------------------------ collectors


class WorkerFilesCollector:
    """Merges the multiprocess files of every worker under a directory (recursively)."""

    def __init__(self, directory: pathlib.Path) -> None:
        """Reads files under ``directory``.

        Args:
            directory: The workers' metrics directory.
        """
        self.directory = directory

    def collect(self) -> Iterable[Any]:
        """Returns the merged metric families (counters and histograms summed over processes).

        Returns:
            Metric families.
        """
        from prometheus_client.multiprocess import MultiProcessCollector

        files = glob.glob(os.path.join(self.directory, "**", "*.db"), recursive=True)
        for _ in range(3):
            try:
                merged = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
                return list(merged)
            except FileNotFoundError:
                # A worker restarting empties its directory while we read it.
                files = [f for f in files if os.path.exists(f)]
        log.warning("worker metrics files kept changing during the scrape; skipped")
        return []


class _LoopThread:
    """An asyncio loop in a daemon thread (the engines live on it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="conveyor-metrics", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class PlatformCollector:
    """Gauges read at scrape time: queue depth, outbox backlog and age, operations by state,
    beat leader.
    """

    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        """Creates the collector (engines are created on the first scrape).

        Args:
            settings: Database and broker settings.
            timeout: Seconds each source may take per scrape.
        """
        from app.db import EngineRegistry

        self._settings = settings
        self._timeout = timeout
        self._registry = EngineRegistry(settings)
        self._loop = _LoopThread()

    async def _outbox(self) -> dict[str, tuple[int, float]]:
        from app.container import DOMAIN_TABLES
        from domains.shared.clock import utcnow
        from domains.shared.outbox import SqlOutboxRepository

        result: dict[str, tuple[int, float]] = {}
        for domain in DOMAINS:
            async with self._registry.sessionmaker(domain)() as session:
                count, oldest = await SqlOutboxRepository(
                    session, DOMAIN_TABLES[domain].outbox
                ).backlog()
            age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
            result[domain] = (count, age)
        return result

    async def _operations(self) -> dict[str, dict[str, int]]:
        from app.container import DOMAIN_TABLES

        result: dict[str, dict[str, int]] = {}
        for domain in DOMAINS:
            table = DOMAIN_TABLES[domain].operations
            query = sa.select(table.c.state, sa.func.count()).group_by(table.c.state)
            async with self._registry.sessionmaker(domain)() as session:
                rows = (await session.execute(query)).all()
            result[domain] = {str(state): int(count) for state, count in rows}
        return result

    async def _beat(self) -> dict[str, float]:
        beat = await read_beat_leadership(self._registry, self._settings)
        result = {node.node: 0.0 for node in beat.nodes}
        for node in beat.nodes:
            if beat.leads(node):
                result[node.node] = 1.0
        return result

    async def _queues(self) -> dict[str, int]:
        return await asyncio.to_thread(
            queue_depths, self._settings.broker(), DOMAINS, self._timeout
        )

    async def _gather(self) -> dict[str, Any]:
        async def bounded(name: str, coro: Coroutine[Any, Any, Any]) -> Any:
            try:
                async with asyncio.timeout(self._timeout):
                    return await coro
            except Exception as exc:
                log.warning("metrics: reading %s failed: %s: %s", name, type(exc).__name__, exc)
                return exc

        names = ("queues", "outbox", "operations", "beat")
        values = await asyncio.gather(
            bounded("queues", self._queues()),
            bounded("outbox", self._outbox()),
            bounded("operations", self._operations()),
            bounded("beat", self._beat()),
        )
        return dict(zip(names, values, strict=True))

    def collect(self) -> Iterable[Any]:
        """Reads every source and returns the gauges (a failed source is left out, its
        ``conveyor_exporter_source_up`` is 0).

        Returns:
            Metric families.
        """
        from prometheus_client.core import GaugeMetricFamily

        start = time.perf_counter()
        try:
            found = self._loop.run(self._gather(), self._timeout + 2)
        except Exception as exc:
            log.warning("metrics: scrape failed: %s: %s", type(exc).__name__, exc)
            found = {name: exc for name in ("queues", "outbox", "operations", "beat")}
        up = GaugeMetricFamily(
            "conveyor_exporter_source_up",
            "1 when the exporter could read the source at this scrape, 0 otherwise.",
            labels=["source"],
        )
        for name, value in found.items():
            up.add_metric([name], 0.0 if isinstance(value, BaseException) else 1.0)
        families = [up]

        queues = found["queues"]
        if not isinstance(queues, BaseException):
            depth = GaugeMetricFamily(
                "conveyor_queue_depth",
                "Messages waiting in each domain queue (not yet delivered to a worker).",
                labels=["queue"],
            )
            for queue, count in queues.items():
                depth.add_metric([queue], float(count))
            families.append(depth)

        outbox = found["outbox"]
        if not isinstance(outbox, BaseException):
            backlog = GaugeMetricFamily(
                "conveyor_outbox_backlog",
                "Outbox rows not yet published to the broker, per domain.",
                labels=["domain"],
            )
            age = GaugeMetricFamily(
                "conveyor_outbox_oldest_unsent_age_seconds",
                "Age of the oldest unpublished outbox row per domain (0 when none).",
                labels=["domain"],
            )
            for domain, (count, seconds) in outbox.items():
                backlog.add_metric([domain], float(count))
                age.add_metric([domain], seconds)
            families += [backlog, age]

        operations = found["operations"]
        if not isinstance(operations, BaseException):
            ops = GaugeMetricFamily(
                "conveyor_operations",
                "Operations stored per domain and state.",
                labels=["domain", "state"],
            )
            for domain, counts in operations.items():
                for state in (*OPERATION_STATES, *sorted(set(counts) - set(OPERATION_STATES))):
                    ops.add_metric([domain, state], float(counts.get(state, 0)))
            families.append(ops)

        beat = found["beat"]
        if not isinstance(beat, BaseException) and beat:
            leader = GaugeMetricFamily(
                "conveyor_beat_leader",
                "1 on the beat holding the leader lease, 0 on the other beats seen recently.",
                labels=["node"],
            )
            for node, held in sorted(beat.items()):
                leader.add_metric([node], held)
            families.append(leader)

        duration = GaugeMetricFamily(
            "conveyor_exporter_scrape_duration_seconds",
            "Time the exporter took to read queues, outboxes and operations.",
        )
        duration.add_metric([], time.perf_counter() - start)
        families.append(duration)
        return families

    def close(self) -> None:
        """Disposes the engines and stops the loop."""
        try:
            self._loop.run(self._registry.dispose(), 10)
        except Exception:
            log.warning("engine dispose failed", exc_info=True)
        self._loop.stop()


class Exporter:
    """The collectors on one registry, and the HTTP server serving it."""

    def __init__(
        self, settings: Settings, directory: pathlib.Path | None = None, timeout: float = 5.0
    ) -> None:
        """Builds the registry.

        Args:
            settings: Settings.
            directory: The workers' metrics directory (default: :func:`metrics_dir`).
            timeout: Seconds each source may take per scrape.
        """
        from prometheus_client import CollectorRegistry

        self.directory = directory or metrics_dir(settings)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry()
        self.registry.register(WorkerFilesCollector(self.directory))
        self._platform = PlatformCollector(settings, timeout)
        self.registry.register(self._platform)
        self._server: Any = None

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
        """Starts the HTTP server in a daemon thread.

        Args:
            host: Address to bind.
            port: Port (0 picks a free one).

        Returns:
            The bound port.
        """
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, host, self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stops the server and releases the engines."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._platform.close()


@click.command("metrics")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option(
    "--dir",
    "directory",
    default=None,
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="workers' metrics directory [default: $CONVEYOR_METRICS_DIR or <data dir>/metrics]",
)
@click.option(
    "--timeout", default=5.0, show_default=True, type=float, help="seconds per source per scrape"
)
def metrics(host: str, port: int, directory: pathlib.Path | None, timeout: float) -> None:
    """Serve Prometheus metrics: workers' task counters, queue depth, outbox, operations."""
    try:
        settings = load_settings()
        settings.database_for("platform")
        settings.broker()
    except ConfigError as exc:
        click.echo(f"conveyor: configuration error: {exc}", err=True)
        raise SystemExit(2) from None
    if not logging.getLogger().handlers:
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exporter = Exporter(settings, directory.resolve() if directory else None, timeout)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bound = exporter.serve(host, port)
    click.echo(
        f"conveyor: metrics on http://{host}:{bound}/metrics"
        f" (worker metrics from {exporter.directory})"
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        exporter.close()
