#!/usr/bin/env python
"""Submit-path and end-to-end benchmark of Conveyor against bare baselines, in one run.

    python benchmarks/submit.py --n 300 --concurrency 16

Phases (each system gets the same machine, broker and PostgreSQL server, measured in the same
run, so only the ratios mean anything):

1. setup      a fresh PostgreSQL database (migrated with the real migrations) and an idle
              Redis database index of its own, flushed before and after; the database is
              dropped at the end, also on error. Test fixtures flush random indexes of the
              shared server, so a sentinel key detects that and (``--redis auto``) the run is
              repeated on a private embedded redis-server.
2. submit     ``POST /v1/pings`` on the real API (``conveyor api``, 1 uvicorn process) vs a bare
              FastAPI app that only calls ``send_task`` (``benchmarks/bare_app.py``). No worker
              runs; rounds alternate the order of the two systems.
3. e2e        N pings through the API with one ``conveyor worker`` (prefork, 2 processes) and
              ``conveyor relay`` running, until every operation is SUCCEEDED; vs plain Celery
              (``benchmarks/raw_tasks.py``, prefork, 2 processes, ``-E``, no result backend)
              doing the same effect (one row write over a held asyncpg connection), submitted
              over HTTP through the bare endpoint (the like-for-like baseline) and in-process
              with ``apply_async`` (reported next to it), until every row is written.
4. latency    submit->start p50/p99, under the e2e burst and at a paced rate well below
              capacity (Conveyor: operations.create_time -> start_time; Celery: timestamp in
              the args -> time.time() at task start).

Environment: ``CONVEYOR_BENCH_DATABASE_URL`` (admin URL, default
postgresql://postgres@127.0.0.1:5432/test), ``CONVEYOR_BENCH_BROKER_URL`` (default
redis://127.0.0.1:6379/0; the index is replaced by an idle one, see ``--redis-db``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import httpx
import redis

from app.config import load_settings
from app.db import migrate
from app.runtime.embedded import find_free_port as free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
PING_BODY = {"message": "bench"}
POLL_INTERVAL = 0.02
SENTINEL_KEY = "conveyor-bench:owner"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------------------------ helpers


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``nan`` for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def _proc_stats() -> Iterator[tuple[int, str, list[str]]] | None:
    """``(pid, comm, fields after "(comm)")`` of every process (Linux ``/proc``), or ``None``."""
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return None

    def read() -> Iterator[tuple[int, str, list[str]]]:
        for pid in entries:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    head, _, tail = stat.read().rpartition(")")
            except OSError:
                continue  # exited meanwhile
            yield int(pid), head.partition("(")[2], tail.split()

    return read()


def cpu_seconds(session_id: int) -> float:
    """CPU seconds (user + system) used so far by the processes of a session (Linux ``/proc``).

    Every benchmark subprocess leads a session of its own, so this covers a worker's pool
    children too (``cutime``/``cstime`` keep the ones already reaped). ``nan`` without ``/proc``.
    """
    stats = _proc_stats()
    if stats is None:
        return float("nan")
    # After "(comm)": state ppid pgrp session ... utime(11) stime(12) cutime(13) cstime(14)
    total = sum(
        sum(int(f) for f in fields[11:15])
        for _, _, fields in stats
        if len(fields) > 14 and int(fields[3]) == session_id
    )
    return total / CLOCK_TICKS


def server_cpu_seconds(name: str = "postgres", *, exclude: int | None = None) -> float:
    """CPU seconds used so far by the local processes called ``name`` (the PostgreSQL server).

    Backends that exited meanwhile count too: their time is in the postmaster's ``cutime``.
    ``exclude`` leaves one process out (the backend of the benchmark's own polling connection).
    ``nan`` without ``/proc`` (or with the server on another host: then nothing is found).
    """
    stats = _proc_stats()
    ticks = [
        sum(int(f) for f in fields[11:15])
        for pid, comm, fields in stats or ()
        if comm == name and pid != exclude
    ]
    return sum(ticks) / CLOCK_TICKS if ticks else float("nan")


def plain_pg_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise SystemExit(f"submit.py: not a PostgreSQL URL: {scheme}://...")
    return f"postgresql://{rest}"


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def with_redis_db(url: str, db: int) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


class Interference(RuntimeError):
    """Another process used the benchmark's Redis index: the figures would be wrong."""


def pick_redis_db(base_url: str, requested: int | None, exclude: set[str] | None = None) -> str:
    """Returns a Redis URL on ``requested``, else on an index with no keys and no clients.

    Index 15 is tried first (the test fixtures pick 1..14 for their session broker and only
    occasionally 15), then the others in random order.
    """
    if requested is not None:
        return with_redis_db(base_url, requested)
    client = redis.Redis.from_url(with_redis_db(base_url, 0), socket_connect_timeout=2)
    try:
        busy = {int(c.get("db", 0)) for c in client.client_list()}
    except redis.ResponseError:  # CLIENT LIST not allowed: go by keys only
        busy = set()
    finally:
        client.close()
    others = list(range(1, 15))
    random.shuffle(others)
    for db in [15, *others]:
        if db in busy or with_redis_db(base_url, db) in (exclude or set()):
            continue
        client = redis.Redis.from_url(with_redis_db(base_url, db), socket_connect_timeout=2)
        try:
            if client.dbsize() == 0:
                return with_redis_db(base_url, db)
        finally:
            client.close()
    raise SystemExit("submit.py: no idle Redis database index in 1..15; pass --redis-db")


def flush_redis(url: str, *, mark: bool = True) -> None:
    """Empties the benchmark's Redis index and (``mark``) leaves the sentinel key in it."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
        if mark:
            client.set(SENTINEL_KEY, str(os.getpid()))
    finally:
        client.close()


def redis_interference(url: str, logs: Sequence[Proc] = ()) -> str | None:
    """Explains why the run may have been disturbed by someone else on the same Redis index."""
    reasons = []
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        if client.get(SENTINEL_KEY) is None:
            reasons.append("the Redis index was flushed by another process")
    except redis.RedisError as exc:
        reasons.append(f"Redis failed: {exc}")
    finally:
        client.close()
    for proc in logs:
        with contextlib.suppress(OSError):
            if "does not exist" in proc.log():
                reasons.append(f"{proc.name} received tasks of another Conveyor stack")
    if not reasons:
        return None
    return (
        "; ".join(reasons) + f" ({url}); rerun, or pass --redis-db with an index nobody else uses"
    )


def check_redis(url: str, logs: Sequence[Proc] = ()) -> None:
    """Raises :class:`Interference` if another process used the benchmark's Redis index."""
    if reason := redis_interference(url, logs):
        raise Interference(reason)


async def _admin(admin_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def create_database(admin_url: str, name: str) -> None:
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))


def drop_database(admin_url: str, name: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            for attempt in range(10):
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    return
                except asyncpg.ObjectInUseError:
                    if attempt == 9:
                        raise
                    await asyncio.sleep(0.3)
        finally:
            await conn.close()

    asyncio.run(drop())


# --------------------------------------------------------------------------- processes


class Proc:
    """A subprocess in a session of its own, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: pathlib.Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 2500) -> str:
        return self.log()[-chars:]

    def cpu(self) -> float:
        return cpu_seconds(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_log(self, text: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: {text!r} not logged within {limit_s}s:\n{self.tail()}")

    def stop(self, grace_s: float = 15) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                # Still running, so its process group (the pool children too) is ours.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if not self._log.closed:
            self._log.close()


class Procs:
    """Every subprocess the benchmark started; ``stop_all`` runs in the outer ``finally``."""

    def __init__(self, env: dict[str, str], logdir: pathlib.Path) -> None:
        self.env = env
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.all: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, {**self.env, **(env or {})}, self.logdir)
        self.all.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.all):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"submit.py: stopping {proc.name} failed: {exc}", file=sys.stderr)


async def wait_http_ready(proc: Proc, base_url: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready within {limit_s}s:\n{proc.tail()}")


# ------------------------------------------------------------------------------- load


@dataclasses.dataclass
class DriveResult:
    elapsed: float
    latencies: list[float]
    names: list[str]


async def drive(
    client: httpx.AsyncClient, n: int, concurrency: int, limit_s: float, *, collect: bool = False
) -> DriveResult:
    """POSTs ``n`` pings with ``concurrency`` requests in flight (closed loop)."""
    remaining = iter(range(n))
    latencies: list[float] = []
    names: list[str] = []
    errors: list[str] = []

    async def one_connection() -> None:
        for _ in remaining:
            start = time.perf_counter()
            response = await client.post("/v1/pings", json=PING_BODY)
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:300]}")
            elif collect:
                names.append(response.json()["name"])

    start = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(one_connection() for _ in range(max(1, min(concurrency, n))))),
        timeout=limit_s,
    )
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} requests failed; first: {errors[0]}")
    return DriveResult(elapsed, latencies, names)


async def paced(client: httpx.AsyncClient, n: int, rate: float, limit_s: float) -> list[str]:
    """POSTs ``n`` pings at ``rate`` per second (open loop); returns operation names."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(i: int) -> str:
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        response = await client.post("/v1/pings", json=PING_BODY)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {response.text[:300]}")
        return str(response.json()["name"])

    return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), limit_s))


def operation_ids(names: Sequence[str]) -> list[uuid.UUID]:
    return [uuid.UUID(name.rsplit(".", 1)[1]) for name in names]


async def wait_operations_done(
    db: asyncpg.Connection,
    ids: Sequence[uuid.UUID],
    limit_s: float,
    procs: Sequence[Proc],
    broker: str | None = None,
) -> float:
    """Polls until every operation is done; returns ``perf_counter()`` when seen done."""
    deadline = time.monotonic() + limit_s
    next_check = time.monotonic() + 1.0
    while True:
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE done) AS done,"
            " count(*) FILTER (WHERE state = 'SUCCEEDED') AS ok"
            " FROM platform.operations WHERE id = ANY($1::uuid[])",
            list(ids),
        )
        assert row is not None
        if row["done"] >= len(ids):
            seen = time.perf_counter()
            if row["ok"] != len(ids):
                raise RuntimeError(f"{len(ids) - row['ok']} operations did not succeed")
            return seen
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {row['done']} of {len(ids)} operations done after {limit_s}s:\n"
                + "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in procs)
            )
        if broker is not None and time.monotonic() > next_check:
            next_check = time.monotonic() + 1.0
            if reason := await asyncio.to_thread(redis_interference, broker, procs[:1]):
                raise Interference(reason)
        await asyncio.sleep(POLL_INTERVAL)


async def start_latencies(db: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> list[float]:
    rows = await db.fetch(
        "SELECT extract(epoch FROM start_time - create_time)::float8 AS s"
        " FROM platform.operations WHERE id = ANY($1::uuid[]) AND start_time IS NOT NULL",
        list(ids),
    )
    return [float(r["s"]) for r in rows]


# ------------------------------------------------------------------------------ phases


@dataclasses.dataclass
class Results:
    rows: list[tuple[str, float, float, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, metric: str, conveyor: float, baseline: float, better: str) -> None:
        self.rows.append((metric, conveyor, baseline, better))


async def phase_submit(
    args: argparse.Namespace,
    procs: Procs,
    results: Results,
    api: Proc,
    conveyor_url: str,
    broker: str,
) -> None:
    port = free_port()
    bare = procs.start(
        "bare-api",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.bare_app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",  # the same access logging as `conveyor api`
        ],
        env={"BENCH_BARE_MODE": args.bare_mode},
    )
    bare_url = f"http://127.0.0.1:{port}"
    await wait_http_ready(bare, bare_url, 30)

    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    targets = {"conveyor": conveyor_url, "baseline": bare_url}
    servers = {"conveyor": api, "baseline": bare}
    cpu = dict.fromkeys(targets, 0.0)
    clients = {
        k: httpx.AsyncClient(base_url=u, limits=limits, timeout=30, headers=API_HEADERS)
        for k, u in targets.items()
    }
    elapsed = dict.fromkeys(targets, 0.0)
    counts = dict.fromkeys(targets, 0)
    latencies: dict[str, list[float]] = {k: [] for k in targets}
    try:
        warm = max(20, args.n // 10)
        for client in clients.values():
            await drive(client, warm, args.concurrency, args.timeout)
        per_round = [args.n // args.rounds] * args.rounds
        per_round[-1] += args.n - sum(per_round)
        for index, size in enumerate(per_round):
            order = ["conveyor", "baseline"] if index % 2 == 0 else ["baseline", "conveyor"]
            line = []
            for key in order:
                cpu_before = servers[key].cpu()
                result = await drive(clients[key], size, args.concurrency, args.timeout)
                cpu[key] += servers[key].cpu() - cpu_before
                elapsed[key] += result.elapsed
                counts[key] += size
                latencies[key].extend(result.latencies)
                line.append(f"{key} {size / result.elapsed:7.1f} req/s")
            print(f"  submit round {index + 1}/{args.rounds}: " + ", ".join(line), flush=True)
    finally:
        for client in clients.values():
            await client.aclose()
        await asyncio.to_thread(bare.stop)
    rate = {k: counts[k] / elapsed[k] for k in targets}
    results.add("submit rate (req/s)", rate["conveyor"], rate["baseline"], "higher")
    results.add(
        "API process CPU per request (ms)",
        cpu["conveyor"] / counts["conveyor"] * 1000,
        cpu["baseline"] / counts["baseline"] * 1000,
        "lower",
    )
    for pct in (50, 99):
        results.add(
            f"submit HTTP p{pct} (ms) @c={args.concurrency}",
            percentile(latencies["conveyor"], pct) * 1000,
            percentile(latencies["baseline"], pct) * 1000,
            "lower",
        )
    # Nothing consumes during this phase: drop the queued messages.
    await asyncio.to_thread(check_redis, broker)
    await asyncio.to_thread(flush_redis, broker)


async def phase_conveyor_e2e(
    args: argparse.Namespace, procs: Procs, conveyor_url: str, db: asyncpg.Connection, broker: str
) -> dict[str, Any]:
    worker = procs.start(
        "conveyor-worker",
        [
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            "--queues",
            "platform",
            "--concurrency",
            str(args.worker_concurrency),
            "--pool",
            "prefork",
            "--name",
            f"bench-platform-{secrets.token_hex(3)}@%h",
        ],
    )
    relay = procs.start("conveyor-relay", [sys.executable, "-m", "app.cli", "relay"])
    await asyncio.to_thread(worker.wait_for_log, " ready.", 60)
    await asyncio.to_thread(relay.wait_for_log, "relay started", 30)
    watched = [worker, relay]
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(
            base_url=conveyor_url, limits=limits, timeout=30, headers=API_HEADERS
        ) as client:
            warm = await drive(
                client, args.warmup_jobs, args.concurrency, args.timeout, collect=True
            )
            await wait_operations_done(db, operation_ids(warm.names), args.timeout, watched, broker)

            cpu_before = worker.cpu() + relay.cpu()
            poller = await db.fetchval("SELECT pg_backend_pid()")
            pg_before = server_cpu_seconds(exclude=poller)
            start = time.perf_counter()
            burst = await drive(client, args.n, args.concurrency, args.timeout, collect=True)
            ids = operation_ids(burst.names)
            seen = await wait_operations_done(db, ids, args.timeout, watched, broker)
            out["worker_cpu_s"] = worker.cpu() + relay.cpu() - cpu_before
            out["postgres_cpu_s"] = server_cpu_seconds(exclude=poller) - pg_before
            out["jobs_per_s"] = args.n / (seen - start)
            out["submit_s"] = burst.elapsed
            out["burst_latencies"] = await start_latencies(db, ids)

            names = await paced(client, args.paced_n, args.paced_rate, args.timeout)
            ids = operation_ids(names)
            await wait_operations_done(db, ids, args.timeout, watched, broker)
            out["paced_latencies"] = await start_latencies(db, ids)
    finally:
        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(relay.stop)
    return out


async def wait_raw_done(
    db: asyncpg.Connection, ids: Sequence[uuid.UUID], limit_s: float, procs: Sequence[Proc]
) -> float:
    """Polls the raw baseline's table until every job ran; returns ``perf_counter()`` then."""
    from benchmarks import raw_tasks

    deadline = time.monotonic() + limit_s
    while True:
        count = await db.fetchval(
            f"SELECT count(*) FROM {raw_tasks.TABLE} WHERE id = ANY($1::uuid[])", list(ids)
        )
        if count >= len(ids):
            return time.perf_counter()
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"raw Celery: only {count} of {len(ids)} jobs ran after {limit_s}s:\n"
                + "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in procs)
            )
        await asyncio.sleep(POLL_INTERVAL)


async def raw_latencies(db: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> list[float]:
    from benchmarks import raw_tasks

    rows = await db.fetch(
        f"SELECT started - submitted AS s FROM {raw_tasks.TABLE} WHERE id = ANY($1::uuid[])",
        list(ids),
    )
    return [float(r["s"]) for r in rows]


def _apply_async(n: int, rate: float | None = None) -> tuple[list[uuid.UUID], float]:
    """Publishes ``n`` raw jobs in-process (``apply_async``); returns ids and seconds taken."""
    from benchmarks import raw_tasks

    ids = [uuid.uuid4() for _ in range(n)]
    start = time.perf_counter()
    for i, job_id in enumerate(ids):
        if rate is not None:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        raw_tasks.ping.apply_async(args=[str(job_id), time.time()], task_id=str(job_id))
    return ids, time.perf_counter() - start


async def phase_raw_e2e(
    args: argparse.Namespace, procs: Procs, broker: str, db: asyncpg.Connection, db_url: str
) -> dict[str, dict[str, Any]]:
    """Raw Celery doing the same effect, submitted two ways: over HTTP (the bare endpoint, the
    like-for-like baseline) and in-process with ``apply_async`` (reported next to it)."""
    os.environ["BENCH_BROKER_URL"] = broker  # read by benchmarks.raw_tasks at import
    from benchmarks import raw_tasks

    await db.execute(raw_tasks.CREATE_SQL)
    worker = procs.start(
        "raw-celery-worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.raw_tasks",
            "worker",
            "-E",  # task events on, as a Flower user runs it (Conveyor's worker does too)
            "-c",
            str(args.worker_concurrency),
            "-P",
            "prefork",
            "-Q",
            raw_tasks.QUEUE,
            "-n",
            f"bench-raw-{secrets.token_hex(3)}@%h",
            "--loglevel",
            "INFO",
        ],
        env={"BENCH_BROKER_URL": broker, "BENCH_DATABASE_URL": db_url},
    )
    port = free_port()
    bare = procs.start(
        "bare-api-e2e",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.bare_app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        env={"BENCH_BARE_MODE": args.bare_mode},
    )
    watched = [worker]
    out: dict[str, dict[str, Any]] = {"http": {}, "inproc": {}}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    try:
        await asyncio.to_thread(worker.wait_for_log, " ready.", 60)
        await wait_http_ready(bare, f"http://127.0.0.1:{port}", 30)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
        ) as client:
            warm = await drive(
                client, args.warmup_jobs, args.concurrency, args.timeout, collect=True
            )
            await wait_raw_done(db, operation_ids(warm.names), args.timeout, watched)
            # Over HTTP, like Conveyor: bare endpoint -> broker -> worker -> one row write.
            res = out["http"]
            cpu_before = worker.cpu()
            poller = await db.fetchval("SELECT pg_backend_pid()")
            pg_before = server_cpu_seconds(exclude=poller)
            start = time.perf_counter()
            burst = await drive(client, args.n, args.concurrency, args.timeout, collect=True)
            ids = operation_ids(burst.names)
            seen = await wait_raw_done(db, ids, args.timeout, watched)
            res["worker_cpu_s"] = worker.cpu() - cpu_before
            res["postgres_cpu_s"] = server_cpu_seconds(exclude=poller) - pg_before
            res["jobs_per_s"] = args.n / (seen - start)
            res["submit_s"] = burst.elapsed
            res["burst_latencies"] = await raw_latencies(db, ids)
            names = await paced(client, args.paced_n, args.paced_rate, args.timeout)
            ids = operation_ids(names)
            await wait_raw_done(db, ids, args.timeout, watched)
            res["paced_latencies"] = await raw_latencies(db, ids)
        await asyncio.to_thread(bare.stop)
        # In-process apply_async (no HTTP at all): the classic raw-Celery figure.
        res = out["inproc"]
        cpu_before = worker.cpu()
        start = time.perf_counter()
        ids, submitted = await asyncio.to_thread(_apply_async, args.n)
        seen = await wait_raw_done(db, ids, args.timeout, watched)
        res["worker_cpu_s"] = worker.cpu() - cpu_before
        res["jobs_per_s"] = args.n / (seen - start)
        res["submit_s"] = submitted
        res["burst_latencies"] = await raw_latencies(db, ids)
        ids, _ = await asyncio.to_thread(_apply_async, args.paced_n, args.paced_rate)
        await wait_raw_done(db, ids, args.timeout, watched)
        res["paced_latencies"] = await raw_latencies(db, ids)
        await asyncio.to_thread(check_redis, broker)
        return out
    finally:
        raw_tasks.app.close()
        await asyncio.to_thread(bare.stop)
        await asyncio.to_thread(worker.stop)


async def run(
    args: argparse.Namespace, procs: Procs, results: Results, database_url: str, broker: str
) -> None:
    port = free_port()
    api = procs.start(
        "conveyor-api",
        [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
    )
    conveyor_url = f"http://127.0.0.1:{port}"
    await wait_http_ready(api, conveyor_url, 30)

    print(f"[submit] N={args.n} concurrency={args.concurrency} rounds={args.rounds}", flush=True)
    await phase_submit(args, procs, results, api, conveyor_url, broker)

    db = await asyncpg.connect(plain_pg_url(database_url), timeout=10)
    try:
        # Start phase 3 from empty tables (phase 2 left PENDING operations behind).
        await db.execute("TRUNCATE platform.pings, platform.operations, platform.outbox")
        print(f"[e2e] conveyor: N={args.n}, worker prefork x{args.worker_concurrency}", flush=True)
        conveyor = await phase_conveyor_e2e(args, procs, conveyor_url, db, broker)
    finally:
        await db.close()
    await asyncio.to_thread(api.stop)
    await asyncio.to_thread(check_redis, broker)
    await asyncio.to_thread(flush_redis, broker)

    print(f"[e2e] raw celery: N={args.n}, worker prefork x{args.worker_concurrency}", flush=True)
    db = await asyncpg.connect(plain_pg_url(database_url), timeout=10)
    try:
        both = await phase_raw_e2e(args, procs, broker, db, plain_pg_url(database_url))
    finally:
        await db.close()
    raw, inproc = both["http"], both["inproc"]

    results.add("e2e throughput (jobs/s)", conveyor["jobs_per_s"], raw["jobs_per_s"], "higher")
    results.add(
        "worker CPU per job (ms)",
        conveyor["worker_cpu_s"] / args.n * 1000,
        raw["worker_cpu_s"] / args.n * 1000,
        "lower",
    )
    if not math.isnan(conveyor["postgres_cpu_s"] + raw["postgres_cpu_s"]):
        # The database's side of durability: what the server spends per job, submit included.
        results.add(
            "PostgreSQL server CPU per job (ms), submit + run",
            conveyor["postgres_cpu_s"] / args.n * 1000,
            raw["postgres_cpu_s"] / args.n * 1000,
            "lower",
        )
    for label, key in (
        ("burst", "burst_latencies"),
        (f"paced {args.paced_rate:g}/s", "paced_latencies"),
    ):
        for pct in (50, 99):
            results.add(
                f"submit->start p{pct} (ms), {label}",
                percentile(conveyor[key], pct) * 1000,
                percentile(raw[key], pct) * 1000,
                "lower",
            )
    # The same figures against raw Celery submitted in-process (apply_async, no HTTP).
    results.add(
        "e2e throughput (jobs/s) vs in-process apply_async",
        conveyor["jobs_per_s"],
        inproc["jobs_per_s"],
        "higher",
    )
    results.add(
        "worker CPU per job (ms) vs in-process apply_async",
        conveyor["worker_cpu_s"] / args.n * 1000,
        inproc["worker_cpu_s"] / args.n * 1000,
        "lower",
    )
    for pct in (50, 99):
        results.add(
            f"submit->start p{pct} (ms), burst vs in-process apply_async",
            percentile(conveyor["burst_latencies"], pct) * 1000,
            percentile(inproc["burst_latencies"], pct) * 1000,
            "lower",
        )
    per_submit, per_job = await count_round_trips(database_url)
    results.notes.append(
        f"PostgreSQL round trips (counted on the wire): {per_submit} per submit, {per_job} per"
        " ping job in the worker"
    )
    results.notes.append(f"broker {broker}; {os.cpu_count()} CPUs shared with everything else")
    results.notes.append(
        "CPU rows count the benchmark's own processes (conveyor worker row: worker + its pool"
        " + relay); PostgreSQL and Redis server CPU is not included in them. The PostgreSQL row"
        " is the local server's CPU over the e2e burst (every backend but the benchmark's own"
        " completion polling)"
    )
    results.notes.append(
        f"e2e submit part: conveyor {args.n / conveyor['submit_s']:.0f} req/s over HTTP"
        f" (competing with the worker for CPU), raw over HTTP {args.n / raw['submit_s']:.0f}"
        f" req/s, raw apply_async {args.n / inproc['submit_s']:.0f}/s in-process"
    )


# -------------------------------------------------------------------------------- main


async def count_round_trips(database_url: str, jobs: int = 5) -> tuple[int, int]:
    """PostgreSQL round trips per submit and per ping job, counted on the wire.

    The same count as ``tests/perf/test_round_trips.py`` (a TCP proxy in front of PostgreSQL,
    tests/support/roundtrips.py), in-process: ``PingService.create_ping`` and ``run_ping``.

    Returns:
        ``(per submit, per job)``, the most seen over ``jobs`` warm jobs.
    """
    from app.container import Container
    from app.db import EngineRegistry
    from tests.support.roundtrips import RoundTripCounter

    parts = urllib.parse.urlsplit(database_url)
    async with RoundTripCounter(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        settings = load_settings(database_url=proxy.url(database_url), broker_url="redis://unused")
        registry = EngineRegistry(settings)
        try:
            pings = Container(settings, registry).pings
            submits, runs = [], []
            for i in range(jobs + 2):
                before = proxy.turns
                op = await pings.create_ping(message="count")
                submitted = proxy.turns
                await pings.run_ping(op.id, worker="bench")
                if i >= 2:  # connections and prepared statements warm
                    submits.append(submitted - before)
                    runs.append(proxy.turns - submitted)
            return max(submits), max(runs)
        finally:
            await registry.dispose()


def print_table(results: Results, args: argparse.Namespace) -> None:
    width = max(len(r[0]) for r in results.rows) + 2
    header = f"{'metric':<{width}}{'conveyor':>12}{'baseline':>12}{'conv/base':>11}  better"
    print()
    print(
        f"Conveyor vs baseline — n={args.n}, concurrency={args.concurrency}, "
        f"{os.cpu_count()} CPUs (same run, only ratios are meaningful)"
    )
    print(header)
    print("-" * len(header))
    for metric, conveyor, baseline, better in results.rows:
        ratio = conveyor / baseline if baseline else float("nan")
        print(f"{metric:<{width}}{conveyor:>12.1f}{baseline:>12.1f}{ratio:>10.2f}x  {better}")
    print()
    print(
        "baseline: submit = bare FastAPI + send_task (benchmarks/bare_app.py, "
        f"{args.bare_mode} endpoint, published like the fast path); e2e/latency = plain Celery"
        " task writing one row over a held asyncpg connection (benchmarks/raw_tasks.py, -E, no"
        " result backend), submitted through the same bare endpoint over HTTP (rows marked"
        " 'in-process': submitted with apply_async)"
    )
    for note in results.notes:
        print(f"note: {note}")


API_HEADERS: dict[str, str] = {}
"""Headers of every request to the Conveyor API (its bearer key)."""


def create_api_key(env: dict[str, str]) -> str:
    """Creates an all-scopes API key in the benchmark database with `conveyor keys create`."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--scopes", "*", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--n", type=int, default=300, help="requests / jobs per system")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP requests in flight")
    parser.add_argument("--rounds", type=int, default=2, help="alternating submit rounds")
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--warmup-jobs", type=int, default=10)
    parser.add_argument("--paced-n", type=int, default=40, help="jobs in the paced probe")
    parser.add_argument("--paced-rate", type=float, default=20.0, help="paced jobs per second")
    parser.add_argument("--bare-mode", choices=["sync", "async"], default="sync")
    parser.add_argument(
        "--redis-db", type=int, default=None, help="index (default: an idle one; private: 1)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per step")
    parser.add_argument("--json", dest="json_path", default=None, help="also write results")
    parser.add_argument(
        "--redis",
        choices=["auto", "shared", "private"],
        default="auto",
        help="shared: an idle index on CONVEYOR_BENCH_BROKER_URL's server; private: an embedded"
        " redis-server of the run's own; auto: shared, then private if another process"
        " flushed or used the index",
    )
    parser.add_argument(
        "--attempts", type=int, default=2, help="runs to try (auto: the last one is private)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep subprocess logs")
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or not 1 <= args.rounds <= args.n:
        parser.error("--n and --concurrency must be >= 1, 1 <= --rounds <= --n")
    if args.paced_rate <= 0 or args.paced_n < 1:
        parser.error("--paced-rate must be > 0 and --paced-n >= 1")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def write_json(path: str, args: argparse.Namespace, results: Results) -> None:
    rows = [{"metric": m, "conveyor": c, "baseline": b, "better": w} for m, c, b, w in results.rows]
    payload = {"args": vars(args), "rows": rows, "notes": results.notes}
    pathlib.Path(path).write_text(json.dumps(payload, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if str(ROOT) not in sys.path:  # `python benchmarks/submit.py`: make `benchmarks` importable
        sys.path.insert(0, str(ROOT))
    signal.signal(signal.SIGTERM, _terminate)
    admin_url = plain_pg_url(os.environ.get("CONVEYOR_BENCH_DATABASE_URL") or DEFAULT_ADMIN_URL)
    broker_base = os.environ.get("CONVEYOR_BENCH_BROKER_URL") or DEFAULT_BROKER_URL
    db_name = f"conveyor_bench_{secrets.token_hex(4)}"
    logdir = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    procs: Procs | None = None
    broker: str | None = None
    created = False
    failed = True
    tried: set[str] = set()
    private: Any = None  # embedded Redis (app.runtime.embedded), started on demand
    if args.redis == "private":
        plan = ["private"]
    elif args.redis == "shared":
        plan = ["shared"] * args.attempts
    else:  # auto: the shared server first; a private one if someone else disturbs the run
        plan = ["shared"] * max(1, args.attempts - 1) + ["private"]
    try:
        create_database(admin_url, db_name)
        created = True
        database_url = (
            "postgresql+asyncpg://" + with_database(admin_url, db_name).split("://", 1)[1]
        )
        migrate.upgrade(load_settings(database_url=database_url, broker_url="redis://unused"))
        for attempt, where in enumerate(plan, start=1):
            if where == "shared":
                broker = pick_redis_db(broker_base, args.redis_db, exclude=tried)
            else:
                if private is None:
                    from app.runtime.embedded import start_embedded

                    private = start_embedded(logdir / "redis", postgres=False, redis=True)
                broker = with_redis_db(private.broker_url, args.redis_db or 1)
            tried.add(broker)
            flush_redis(broker)
            print(
                f"[setup] database {db_name}, broker {broker} ({where} Redis), logs {logdir}"
                + (f" (attempt {attempt})" if attempt > 1 else ""),
                flush=True,
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
            env.update(
                CONVEYOR_DATABASE_URL=database_url,
                CONVEYOR_BROKER_URL=broker,
                CONVEYOR_DATA_DIR=str(logdir / "data"),
                PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                # The per-key rate limit is a policy, not a cost: off, so it does not cap the
                # measured rate. Authentication stays on (every request checks its key).
                CONVEYOR_SECURITY__RATE_LIMIT_ENABLED="false",
            )
            API_HEADERS["authorization"] = "Bearer " + create_api_key(env)
            procs = Procs(env, logdir / f"attempt-{attempt}")
            results = Results()
            try:
                asyncio.run(run(args, procs, results, database_url, broker))
            except Interference as exc:
                procs.stop_all()
                broker = None  # someone else uses it now: do not flush it under their feet
                print(f"submit.py: attempt {attempt} discarded: {exc}", file=sys.stderr)
                continue
            print_table(results, args)
            if args.json_path:
                write_json(args.json_path, args, results)
            failed = False
            return 0
        print(f"submit.py: gave up after {len(plan)} disturbed attempts", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("submit.py: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if procs is not None:
            procs.stop_all()
        if broker is not None:
            with contextlib.suppress(Exception):
                flush_redis(broker, mark=False)
        if private is not None:
            with contextlib.suppress(Exception):
                private.stop()
        if created:
            try:
                drop_database(admin_url, db_name)
            except Exception as exc:
                print(f"submit.py: could not drop {db_name}: {exc}", file=sys.stderr)
        if args.keep_logs or failed:
            print(f"submit.py: subprocess logs kept in {logdir}", file=sys.stderr)
        else:
            shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
