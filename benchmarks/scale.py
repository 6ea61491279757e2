#!/usr/bin/env python
"""List latency at scale, dead tuples per job, and a short soak (issue #22).

    python benchmarks/scale.py --rows 1000000 --rows 10000000 --samples 200
    python benchmarks/scale.py --rows 100000 --soak-seconds 120   # short soak, small table

Phases (a fresh database of its own, migrated with the real migrations, dropped at the end):

1. grow      ``platform.operations``, ``webhooks.deliveries`` and ``reports.reports`` are grown in
             bulk to each ``--rows`` size (``benchmarks/scale_data.py``: generate_series with
             indexes rebuilt, never the API); 90% of the rows belong to one tenant, the one
             whose key the reads use.
2. lists     every allowed list filter (the EXPLAIN test's set) through the real API
             in-process (httpx ASGITransport, no sockets): p50/p99 of ``--samples`` requests
             each, next to ``GET /v1/operations?page_size=50`` with no filter (the baseline
             measured in the same run). Target: p99 <= 20 ms at 10M rows.
3. churn     ``--jobs`` pings created and run to SUCCEEDED in this process (the task adapter
             applied locally, the same statements as a worker): dead tuples per job on
             ``platform.operations`` and ``platform.outbox`` (``pg_stat_user_tables``).
4. soak      (``--soak-seconds``) pings at a steady rate with the retention purge running
             every ``--purge-every`` seconds with retention shrunk to seconds: table sizes,
             Redis memory and this process's RSS sampled each interval, to show they stay flat.

Environment: ``CONVEYOR_BENCH_DATABASE_URL`` (admin URL, default
postgresql://postgres@127.0.0.1:5432/test), ``CONVEYOR_BENCH_BROKER_URL`` (default
redis://127.0.0.1:6379/14).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import statistics
import sys
import time
import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.config import Settings, load_settings
from app.db import migrate
from benchmarks import scale_data

TARGET_P99_MS = 20.0


def _filters() -> dict[str, list[str]]:
    recent = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=29)).isoformat()
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    return {
        "/v1/operations": [
            "",
            "done = false",
            "done = true",
            "metadata.state = FAILED",
            "metadata.state = RUNNING",
            "metadata.state = CANCELLING",
            'metadata.type = "rare"',
            'metadata.type = "nosuchtype"',
            'metadata.type = "rare" AND done = false',
            'metadata.target = "things/424242"',
            f'create_time > "{recent}"',
            f'create_time < "{old}"',
            f'create_time > "{future}"',
            f'metadata.state = FAILED AND create_time > "{recent}"',
        ],
        f"/v1/endpoints/{scale_data.BIG_ENDPOINT}/deliveries": [
            "",
            'state = "DEAD"',
            'state = "PAUSED"',
            'event_type = "rare.Happened"',
            f'create_time > "{recent}"',
        ],
        "/v1/reports": [
            "",
            'type = "digest"',
            'type = "digest" AND format = "json"',
            f'create_time < "{old}"',
        ],
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def grow(url: str, start: int, count: int, only: str | None = None) -> float:
    """Grows the listed tables by ``count`` rows each; returns the seconds it took."""
    began = time.perf_counter()
    engine = create_async_engine(url)
    tables = {
        "operations": (
            "platform.operations",
            [scale_data.operations_sql("platform", count, start=start)],
        ),
        "deliveries": ("webhooks.deliveries", scale_data.deliveries_sql(count, start=start)),
        "reports": ("reports.reports", [scale_data.reports_sql(count, start=start)]),
    }
    try:
        async with engine.begin() as conn:
            await scale_data.grow(
                conn, {name: sql for key, (name, sql) in tables.items() if only in (None, key)}
            )
    finally:
        await engine.dispose()
    return time.perf_counter() - began


async def measure_lists(
    settings: Settings, key: str, samples: int, only: str | None = None
) -> list[dict[str, Any]]:
    """p50/p99 of every allowed filter through the in-process API."""
    from app.main import create_app, freeze_heap

    app = create_app(settings)
    freeze_heap()  # as `conveyor api` does (app.main.server_app)
    rows = []
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers
        ) as http:
            for path, filters in _filters().items():
                if only is not None and not path.endswith(only):
                    continue
                for text in filters:
                    params = {"page_size": "50", **({"filter": text} if text else {})}
                    times = []
                    for i in range(samples + 5):
                        began = time.perf_counter()
                        response = await http.get(path, params=params)
                        elapsed = (time.perf_counter() - began) * 1000
                        if response.status_code != 200:
                            raise SystemExit(f"{path} {text!r}: {response.text}")
                        if i >= 5:  # warm-up: plans cached, pool filled
                            times.append(elapsed)
                    sql = await _sql_times(settings, path, text, samples)
                    rows.append(
                        {
                            "list": path.split("/")[-1],
                            "filter": text or "(none)",
                            "p50": statistics.median(times),
                            "p99": _pct(times, 0.99),
                            "sql_p50": statistics.median(sql),
                            "sql_p99": _pct(sql, 0.99),
                        }
                    )
    finally:
        await app.state.container.registry.dispose()
    return rows


async def _sql_times(settings: Settings, path: str, text: str, samples: int) -> list[float]:
    """Execution times (ms, from EXPLAIN ANALYZE) of the list's own statement: the index
    work alone, apart from the HTTP, serialization and loaded-machine overhead."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from api import filtering
    from api.v1 import endpoints as endpoints_api
    from api.v1 import operations as operations_api
    from api.v1 import reports as reports_api
    from app.container import DOMAIN_TABLES
    from benchmarks.scale_data import Explain
    from domains.operations.repository import SqlOperationRepository
    from domains.reports.repository import SqlReportRepository
    from domains.webhooks.repository import SqlWebhooksRepository

    parsed = filtering.parse_filter
    engine = create_async_engine(str(settings.database_url))
    times = []
    try:
        async with AsyncSession(engine) as session:
            if path == "/v1/operations":
                conds = filtering.require_indexed(
                    parsed(text, operations_api.FILTER_FIELDS),
                    text,
                    equality=operations_api.INDEXED_EQUALITY,
                    combined=operations_api.INDEXED_TOGETHER,
                )
                repo = SqlOperationRepository(session, DOMAIN_TABLES["platform"].operations)
                query = repo.list_query(conds, after=None, limit=51, tenant=scale_data.BIG_TENANT)
            elif path == "/v1/reports":
                conds = filtering.require_indexed(
                    parsed(text, reports_api.FILTER_FIELDS),
                    text,
                    equality=reports_api.INDEXED_EQUALITY,
                    combined=reports_api.INDEXED_TOGETHER,
                )
                query = SqlReportRepository(session).list_query(
                    scale_data.BIG_TENANT, conds, after=None, limit=51
                )
            else:
                conds = filtering.require_indexed(
                    parsed(text, endpoints_api.DELIVERY_FILTER_FIELDS),
                    text,
                    equality=endpoints_api.DELIVERY_INDEXED_EQUALITY,
                )
                query = SqlWebhooksRepository(session).list_deliveries_query(
                    uuid.UUID(scale_data.BIG_ENDPOINT), conds, after=None, limit=51
                )
            for _ in range(samples):
                [[plan]] = (await session.execute(Explain(query))).all()
                times.append(float(plan[0]["Execution Time"]))
    finally:
        await engine.dispose()
    return times


async def dead_tuples(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
            rows = await conn.exec_driver_sql(
                f"SELECT {_TABLE}, sum(n_tup_ins), sum(n_tup_upd), sum(n_tup_hot_upd),"
                f" sum(n_tup_del) FROM {_PLATFORM_STATS} AND {_TABLE} IN ('operations', 'outbox')"
                " GROUP BY 1"
            )
            return {
                f"{r[0]}.{k}": int(v)
                for r in rows
                for k, v in zip(("ins", "upd", "hot", "del"), r[1:], strict=True)
            }
    finally:
        await engine.dispose()


def run_jobs(settings: Settings, count: int) -> float:
    """Creates and runs ``count`` pings in this process; returns jobs per second."""
    from app.adapters.celery_app import create_celery
    from tasks.platform import ping
    from tasks.runtime import runtime

    if not runtime.started:  # once: a second app would register every task again
        create_celery(settings).set_default()
        runtime.configure(settings)
        runtime.start()
    began = time.perf_counter()
    for _ in range(count):
        op = runtime.run(runtime.container.pings.create_ping(message="bench"))
        result = ping.apply(args=[str(op.id)], task_id=str(op.id))
        if not result.successful():
            raise SystemExit(f"ping failed: {result.result!r}")
    return count / (time.perf_counter() - began)


# operations and outbox are partitioned by day: their statistics and storage are the
# partitions', counted under the parent's name.
_TABLE = "coalesce(p.relname, s.relname)"
_PLATFORM_STATS = (
    "pg_stat_user_tables s LEFT JOIN pg_inherits i ON i.inhrelid = s.relid"
    " LEFT JOIN pg_class p ON p.oid = i.inhparent WHERE s.schemaname = 'platform'"
)


async def sizes(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(
                f"SELECT 'platform.' || {_TABLE}, sum(pg_total_relation_size(s.relid))"
                f" FROM {_PLATFORM_STATS} AND {_TABLE} IN ('operations', 'outbox', 'pings')"
                " GROUP BY 1"
            )
            return {r[0]: int(r[1]) for r in rows}
    finally:
        await engine.dispose()


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def soak(settings: Settings, url: str, seconds: float, rate: float, purge_every: float) -> None:
    """Steady pings with a tight retention; prints sizes, Redis memory and RSS over time."""
    import redis

    from tasks.operations import purge_done
    from tasks.runtime import runtime

    broker = redis.Redis.from_url(str(settings.broker_url))
    print("\nsoak: t(s)  operations+outbox+pings (MiB)  redis used (MiB)  rss (MiB)")
    began = last_purge = time.monotonic()
    next_report = began
    while time.monotonic() - began < seconds:
        tick = time.monotonic()
        run_jobs(settings, max(1, int(rate)))
        if time.monotonic() - last_purge >= purge_every:
            purge_done.apply()
            last_purge = time.monotonic()
        if time.monotonic() >= next_report:
            total = sum(runtime.run(sizes(url)).values()) / 2**20
            used = int(broker.info("memory")["used_memory"]) / 2**20
            elapsed = time.monotonic() - began
            print(f"      {elapsed:5.0f}  {total:8.1f}  {used:8.1f}  {rss_mib():8.1f}")
            next_report += max(10.0, seconds / 12)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


def memtrace(settings: Settings, jobs: int) -> None:
    """Python heap growth (tracemalloc snapshot diff) and RSS across ``jobs`` jobs, after a
    warm-up: what a pool child keeps from one task to the next."""
    import gc
    import tracemalloc

    run_jobs(settings, 100)
    gc.collect()
    tracemalloc.start(6)
    first, rss_before = tracemalloc.take_snapshot(), rss_mib()
    run_jobs(settings, jobs)
    gc.collect()
    second, rss_after = tracemalloc.take_snapshot(), rss_mib()
    stats = second.compare_to(first, "traceback")
    grown = sum(stat.size_diff for stat in stats) / 1024
    print(
        f"\nmemtrace: {jobs} jobs after 100 warm-up: Python heap {grown:+.0f} KiB,"
        f" RSS {rss_before:.0f} -> {rss_after:.0f} MiB; largest growth:"
    )
    for stat in stats[:3]:
        print(f"  {stat.size_diff / 1024:+.0f} KiB at {stat.traceback.format()[-2].strip()}")
    tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="table sizes (ascending)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument(
        "--only", choices=("operations", "deliveries", "reports"), help="grow and list one table"
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument(
        "--memtrace-jobs", type=int, default=0, help="tracemalloc diff across this many jobs"
    )
    parser.add_argument("--soak-seconds", type=float, default=0)
    parser.add_argument("--soak-rate", type=float, default=20, help="pings per second")
    parser.add_argument("--purge-every", type=float, default=15)
    args = parser.parse_args()
    sizes_wanted = sorted(args.rows or [1_000_000])

    admin = os.environ.get(
        "CONVEYOR_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    broker = os.environ.get("CONVEYOR_BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")
    from tests.support import services

    name = f"conveyor_bench_scale_{secrets.token_hex(4)}"
    url = services.create_database(admin, name)
    try:
        # No rate limit: the reads come as fast as one client can send them.
        overrides: dict[str, Any] = {
            "fast_path_publish": False,
            "security": {"rate_limit_enabled": False},
        }
        if args.soak_seconds:
            # Retention shrunk to seconds, so a short soak reaches the steady state.
            keep = args.purge_every
            overrides["retention"] = {"outbox_sent_hours": keep / 3600, "events_days": 1}
            overrides["schedules"] = {"retention_days": keep / 86400}
        settings = load_settings(database_url=url, broker_url=broker, **overrides)
        migrate.upgrade(settings)
        from tests.conftest import create_api_key

        key = asyncio.run(create_api_key(settings, tenant=scale_data.BIG_TENANT))
        grown = 0
        for size in sizes_wanted:
            took = asyncio.run(grow(url, grown + 1, size - grown, args.only))
            grown = size
            print(f"\n== {size:,} rows per table (grown in {took:.0f} s)")
            rows = asyncio.run(measure_lists(settings, key, args.samples, args.only))
            base = rows[0]["p50"]
            print(
                f"{'list':<12} {'filter':<50} {'p50 ms':>7} {'p99 ms':>7} {'x base':>6}"
                f" {'sql p50':>8} {'sql p99':>8}"
            )
            for row in rows:
                flag = "" if row["p99"] <= TARGET_P99_MS else "  > target"
                print(
                    f"{row['list']:<12} {row['filter'][:50]:<50} {row['p50']:7.1f}"
                    f" {row['p99']:7.1f} {row['p50'] / base:6.2f} {row['sql_p50']:8.2f}"
                    f" {row['sql_p99']:8.2f}{flag}"
                )
            worst = max(rows, key=lambda r: r["p99"])
            print(
                f"worst p99 {worst['p99']:.1f} ms ({worst['list']} {worst['filter']!r});"
                f" target <= {TARGET_P99_MS:g} ms: {'met' if worst['p99'] <= 20 else 'NOT met'}"
            )
        before = asyncio.run(dead_tuples(url))
        rate = run_jobs(settings, args.jobs)
        time.sleep(11)  # idle backends flush their table counters within 10 s (PostgreSQL 15)
        after = asyncio.run(dead_tuples(url))
        delta = {k: (after[k] - before.get(k, 0)) / args.jobs for k in after}
        print(f"\nchurn: {args.jobs} pings at {rate:.0f}/s in one process; per job:")
        for table in ("operations", "outbox"):
            ins, upd, hot = (delta[f"{table}.{k}"] for k in ("ins", "upd", "hot"))
            print(
                f"  platform.{table}: {ins:.2f} inserts, {upd:.2f} updates"
                f" ({hot:.2f} HOT) -> {upd:.2f} dead tuples per job"
            )
        if args.memtrace_jobs:
            memtrace(settings, args.memtrace_jobs)
        if args.soak_seconds:
            soak(settings, url, args.soak_seconds, args.soak_rate, args.purge_every)
    finally:
        from tasks.runtime import runtime

        if runtime.started:
            runtime.stop()
        services.drop_database(admin, name)


if __name__ == "__main__":
    main()
