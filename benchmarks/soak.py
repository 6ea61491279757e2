"""Retention soak: a steady mixed load on real processes, storage and memory sampled over time.

Issues #16 (point 5) and #22: with retention on, tables, files, Redis memory and process RSS
must level off under a steady load instead of growing with every job. The load goes through
the HTTP API to real processes (``conveyor api``, one ``conveyor worker`` for every queue,
``conveyor relay``), the way users send it:

- pings at ``--ping-rate`` per second;
- webhook events (``POST /v1/events``) at ``--event-rate`` per second, each delivered to a
  local receiver (one delivery and one attempt row per event);
- a CSV import every ``--import-every`` seconds (the same keys each time: the records are the
  user's data and stay; the uploaded file, the operation and the outbox rows are purged);
- ``platform.purge_done`` every ``--purge-every`` seconds, as the ``system.purge-done``
  schedule sends it, with every retention shrunk to ``--keep-seconds``.

Every ``--report-every`` seconds it prints the size of the four schemas (tables and indexes),
the rows of the tables that grow per job, the data directory (import files), Redis'
``used_memory`` and the RSS of the API and the worker's processes. The verdict gives each
figure's range and least-squares slope over the second half of the run::

    .venv/bin/python benchmarks/soak.py --minutes 10

Environment: ``CONVEYOR_BENCH_DATABASE_URL`` (admin URL, default
``postgresql://postgres@127.0.0.1:5432/test``). Redis: a private ``redis-server`` on a free
port (``--broker-url`` to use another). The database is created and dropped by the script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.runtime.embedded import find_free_port  # noqa: E402
from tests.reliability.harness import System  # noqa: E402
from tests.support import services  # noqa: E402
from tests.support.imports import create_dataset, upload  # noqa: E402

SIZE_SQL = """
SELECT n.nspname, sum(pg_total_relation_size(c.oid))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('platform', 'imports', 'webhooks', 'reports') AND c.relkind IN ('r', 'p')
GROUP BY 1
"""
RELATIONS_SQL = """
SELECT n.nspname || '.' || c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('platform', 'imports', 'webhooks', 'reports') AND c.relkind = 'r'
"""
COUNTED = (
    "platform.operations",
    "platform.outbox",
    "platform.pings",
    "webhooks.deliveries",
    "webhooks.attempts",
    "webhooks.received_events",
    "imports.operations",
    "imports.outbox",
)


class _Receiver(http.server.BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _dir_mib(path: pathlib.Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (pathlib.Path(root) / name).stat().st_size
    return total / 2**20


async def _relation_sizes(url: str) -> dict[str, int]:
    """Bytes of every table (partitions included) with its indexes and TOAST."""
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(services.to_plain_url(url))
    try:
        return {r[0]: int(r[1]) for r in await conn.fetch(RELATIONS_SQL)}
    finally:
        await conn.close()


def _growth(half: dict[str, int], end: dict[str, int], top: int = 8) -> list[str]:
    """The tables that grew most over the second half of the run."""
    grown = sorted(
        ((end.get(k, 0) - half.get(k, 0), k) for k in set(half) | set(end)), reverse=True
    )
    return [
        f"{name:<45} {half.get(name, 0) / 2**20:8.2f} -> {end.get(name, 0) / 2**20:8.2f} MiB"
        for delta, name in grown[:top]
        if delta > 0
    ]


def _rss_mib(pid: int | None) -> float:
    """RSS of a process and its children (the worker's pool)."""
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


async def _sample(url: str) -> tuple[dict[str, float], dict[str, int]]:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(services.to_plain_url(url))
    try:
        sizes = {r[0]: float(r[1]) / 2**20 for r in await conn.fetch(SIZE_SQL)}
        counts = {}
        for table in COUNTED:
            with contextlib.suppress(asyncpg.UndefinedTableError):
                counts[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        # Records live in one typed table per dataset; each dataset keeps its count.
        with contextlib.suppress(asyncpg.UndefinedTableError):
            counts["imports.records"] = await conn.fetchval(
                "SELECT coalesce(sum(record_count), 0) FROM imports.datasets"
            )
        return sizes, counts
    finally:
        await conn.close()


async def _load(
    system: System, args: argparse.Namespace, celery: Any, data_dir: pathlib.Path
) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", find_free_port()), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    statuses: dict[int, int] = {}
    async with system.client() as client:
        endpoint = await client.post(
            "/v1/endpoints",
            json={
                "url": f"http://127.0.0.1:{receiver.server_port}/hook",
                "event_types": ["soak.*"],
            },
        )
        assert endpoint.status_code == 200, endpoint.text
        dataset = await create_dataset(client)
        rows = "".join(f"k{i},{i}.5,{i % 9},DE,true\n" for i in range(args.import_rows))
        csv = ("id,amount,qty,country,paid\n" + rows).encode()

        async def send(method: str, path: str, **kw: Any) -> None:
            try:
                response = await client.request(method, path, **kw)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            except httpx.HTTPError:
                statuses[0] = statuses.get(0, 0) + 1

        began = time.monotonic()
        last_import = last_purge = next_report = began
        half_way: dict[str, int] | None = None
        second = 0
        while time.monotonic() - began < args.minutes * 60:
            tick = time.monotonic()
            second += 1
            work = [
                send("POST", "/v1/pings", json={"message": f"s{second}.{i}"})
                for i in range(args.ping_rate)
            ]
            work += [
                send(
                    "POST", "/v1/events", json={"type": "soak.Tick", "data": {"n": second, "i": i}}
                )
                for i in range(args.event_rate)
            ]
            if tick - last_import >= args.import_every:
                last_import = tick
                response = await upload(client, dataset["id"], csv)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            await asyncio.gather(*work)
            if tick - last_purge >= args.purge_every:
                last_purge = tick
                celery.send_task("platform.purge_done", queue="platform", routing_key="platform")
            if half_way is None and tick - began >= args.minutes * 30:
                half_way = await _relation_sizes(system.database_url)
            if tick >= next_report:
                next_report += args.report_every
                sizes, counts = await _sample(system.database_url)
                broker = system.env["CONVEYOR_BROKER_URL"]
                import redis

                used = redis.Redis.from_url(broker).info("memory")["used_memory"] / 2**20
                sample = {
                    "t": round(tick - began),
                    "db_mib": round(sum(sizes.values()), 2),
                    "schemas_mib": {k: round(v, 2) for k, v in sizes.items()},
                    "rows": counts,
                    "files_mib": round(_dir_mib(data_dir / "imports"), 2),
                    "redis_mib": round(used, 2),
                    "api_rss_mib": round(
                        _rss_mib(system.api.popen.pid if system.api.popen else None), 1
                    ),
                    "worker_rss_mib": round(
                        _rss_mib(system.workers[0].popen.pid if system.workers[0].popen else None),
                        1,
                    ),
                    "delivered": _Receiver.received,
                    "statuses": dict(statuses),
                }
                samples.append(sample)
                print(
                    f"{sample['t']:6d} s  db {sample['db_mib']:8.2f} MiB  files {sample['files_mib']:6.2f}"
                    f"  redis {sample['redis_mib']:6.2f}  api rss {sample['api_rss_mib']:6.1f}"
                    f"  worker rss {sample['worker_rss_mib']:6.1f}  outbox {counts.get('platform.outbox')}"
                    f"  ops {counts.get('platform.operations')}  deliveries"
                    f" {counts.get('webhooks.deliveries')}  delivered {_Receiver.received}",
                    flush=True,
                )
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    receiver.shutdown()
    if half_way is not None:
        print("\ntables that grew most over the second half:")
        for line in _growth(half_way, await _relation_sizes(system.database_url)):
            print("  " + line)
    return samples


def _verdict(samples: list[dict[str, Any]]) -> list[str]:
    """Per figure: the range over the second half of the run and its least-squares slope."""
    tail = samples[len(samples) // 2 :]
    if len(tail) < 3:
        return ["too few samples for a verdict"]
    lines = []
    ts = [s["t"] for s in tail]
    mean_t = sum(ts) / len(ts)
    for key in ("db_mib", "files_mib", "redis_mib", "api_rss_mib", "worker_rss_mib"):
        ys = [float(s[key]) for s in tail]
        mean_y = sum(ys) / len(ys)
        slope = sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True)) / sum(
            (t - mean_t) ** 2 for t in ts
        )
        lines.append(
            f"{key:<15} second half {min(ys):8.2f} .. {max(ys):8.2f}"
            f"  slope {slope * 3600:+8.1f} per hour (first sample {samples[0][key]})"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--ping-rate", type=int, default=20, help="pings per second")
    parser.add_argument("--event-rate", type=int, default=5, help="webhook events per second")
    parser.add_argument("--import-every", type=float, default=30, help="seconds between imports")
    parser.add_argument("--import-rows", type=int, default=2000)
    parser.add_argument("--keep-seconds", type=float, default=60, help="every retention")
    parser.add_argument("--purge-every", type=float, default=30)
    parser.add_argument("--report-every", type=float, default=30)
    parser.add_argument("--broker-url", default=None, help="default: a private redis-server")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    admin = os.environ.get(
        "CONVEYOR_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    work = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-soak-"))
    redis_proc = None
    broker = args.broker_url
    if broker is None:
        port = find_free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        broker = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    name = f"conveyor_soak_{secrets.token_hex(4)}"
    url = services.create_database(admin, name)
    keep = args.keep_seconds
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_DATA_DIR": str(work / "data"),
        "CONVEYOR_SECURITY__RATE_LIMIT_ENABLED": "false",
        "CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST": '["127.0.0.1"]',
        "CONVEYOR_RETENTION__OUTBOX_SENT_HOURS": str(keep / 3600),
        "CONVEYOR_RETENTION__WEBHOOK_DELIVERIES_DAYS": str(keep / 86400),
        "CONVEYOR_RETENTION__EVENTS_DAYS": str(keep / 86400),
        "CONVEYOR_RETENTION__IMPORT_FILES_DAYS": str(keep / 86400),
        "CONVEYOR_SCHEDULES__RETENTION_DAYS": str(keep / 86400),
        "PYTHONPATH": str(ROOT),
    }
    system = System(
        env,
        work,
        database_url=url,
        broker_url=broker,
        workers=1,
        queues="platform,imports,webhooks,reports",
        concurrency=2,
    )
    try:
        system.migrate()
        system.create_api_key()
        system.start()
        from app.adapters.celery_app import create_celery
        from app.config import load_settings

        celery = create_celery(load_settings(database_url=url, broker_url=broker), results=False)
        print(
            f"soak: {args.minutes:g} min, {args.ping_rate} pings/s, {args.event_rate} events/s,"
            f" a {args.import_rows}-row import every {args.import_every:g} s, retention"
            f" {keep:g} s, purge every {args.purge_every:g} s; logs {work}",
            flush=True,
        )
        samples = asyncio.run(_load(system, args, celery, work / "data"))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        system.stop()
        services.drop_database(admin, name)
        if redis_proc is not None:
            redis_proc.terminate()
    print("\nverdict (second half of the run):")
    for line in _verdict(samples):
        print("  " + line)
    if args.json_path:
        # PostgreSQL sizes come back as Decimal.
        pathlib.Path(args.json_path).write_text(json.dumps(samples, indent=1, default=float))
    shutil.rmtree(work / "data" / "imports", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
