#!/usr/bin/env python
"""Imports benchmark: a generated CSV through the real API and workers vs PostgreSQL ``COPY``.

    python benchmarks/imports.py                 # --rows 1000000 (about 100 MB of CSV)
    python benchmarks/imports.py --rows 200000 --json /tmp/imports.json

In one run, on the same machine and PostgreSQL server:

1. generate a CSV with ``--rows`` rows and 10 typed columns (string, number, integer, enum,
   boolean, date, timestamp, string, number, string), streamed to a temporary file;
2. Conveyor: ``conveyor api`` + ``conveyor worker --queues imports -c 2 -P prefork`` (two pool
   processes) + ``conveyor relay``; warm up with four concurrent 1,000-row imports into a
   scratch dataset (``--warmup-rows``; a running service's processes have their connections
   open and statements prepared); create a dataset, upload the file (raw ``text/csv`` body,
   streamed), wait until the operation is SUCCEEDED (polled every 20 ms). Time = upload start
   -> operation done, so it includes the upload, the split, validation, staging COPY and the
   final merge;
3. baseline: ``COPY ... FROM STDIN (FORMAT csv, HEADER)`` of the same file into an equivalent
   typed table with a primary key, through asyncpg, right after each Conveyor run (the
   Conveyor processes idle meanwhile);
4. steps 2-3 ``--repeat`` times (default 5 up to 100k rows, 3 up to 1M, else 1), each import
   into a new empty dataset: this machine's speed swings by tens of percent from one minute to
   the next, and a single 10k-row run read anywhere from 0.2x to 0.5x. The run whose ratio
   is the median is reported, with the lowest and highest ratio;
5. print rows/s of both, the ratio (target >= 0.5x) and the peak RSS of the worker's pool
   processes over all runs (sampled every 100 ms; target < 300 MB).

With ``BENCH_DEBUG=1`` it also prints the CPU seconds of the API, worker and relay processes,
the operation's metadata, and when the import was first seen running, with its rows counted,
with every chunk done, and done.

A fresh database is created (real migrations) and dropped at the end, also on error; Redis uses
an idle database index, flushed before and after. Authentication is turned off for the
benchmark's API process (``CONVEYOR_SECURITY__AUTH_REQUIRED=false``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import random
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app.config import load_settings
from app.db import migrate
from benchmarks.submit import (
    DEFAULT_ADMIN_URL,
    DEFAULT_BROKER_URL,
    Proc,
    Procs,
    create_database,
    drop_database,
    flush_redis,
    free_port,
    pick_redis_db,
    plain_pg_url,
    wait_http_ready,
    with_database,
)
from tests.support.imports import COLUMNS, FIELDS, row_values

POLL_SECONDS = 0.02
"""Interval of the benchmark's checks for the end of the import (bounds the clock's padding)."""

COPY_TABLE = """
CREATE TABLE bench_copy (
    id text PRIMARY KEY, amount numeric NOT NULL, qty bigint, country text, paid boolean,
    ordered_on date, created timestamptz, customer text, score double precision, note text
)
"""


def generate(path: pathlib.Path, rows: int) -> int:
    """Writes the CSV; returns its size in bytes."""
    rnd = random.Random(1)
    with open(path, "w", newline="") as f:
        f.write(",".join(COLUMNS) + "\n")
        batch: list[str] = []
        for i in range(1, rows + 1):
            cells = row_values(i, rnd)
            batch.append(",".join(f'"{c}"' if "," in c else c for c in cells))
            if len(batch) == 10_000:
                f.write("\n".join(batch) + "\n")
                batch = []
        if batch:
            f.write("\n".join(batch) + "\n")
    return path.stat().st_size


def busy_jiffies() -> tuple[int, float]:
    """Machine-wide non-idle CPU time (jiffies, from ``/proc/stat``) and the wall clock."""
    cpu = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user, nice, system, (idle, iowait,) irq, softirq; steal is the hypervisor's, not ours.
    busy = sum(int(cpu[i]) for i in (0, 1, 2, 5, 6))
    return busy, time.perf_counter()


def cores_busy(start: tuple[int, float], end: tuple[int, float]) -> float:
    """Average number of busy cores between two :func:`busy_jiffies` samples."""
    hz = os.sysconf("SC_CLK_TCK")
    wall = end[1] - start[1]
    return (end[0] - start[0]) / hz / wall if wall > 0 else 0.0


class RssSampler:
    """Samples the peak RSS of a process's children (the prefork pool) in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            parent = todo.pop()
            with contextlib.suppress(OSError):
                tasks = pathlib.Path(f"/proc/{parent}/task/{parent}/children").read_text()
                kids = [int(x) for x in tasks.split()]
                found += kids
                todo += kids
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._children():
                with contextlib.suppress(OSError, ValueError):
                    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.1)

    def children_cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) of each pool process, by pid."""
        hz = os.sysconf("SC_CLK_TCK")
        found = {}
        for pid in self._children():
            with contextlib.suppress(OSError, ValueError):
                stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                found[pid] = (int(stat[11]) + int(stat[12])) / hz
        return found

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)


async def conveyor_run(
    args: argparse.Namespace, procs: Procs, csv_path: pathlib.Path, rows: int, database_url: str
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = procs.start("api", [sys.executable, "-m", "app.cli", "api", "--port", str(port)])
    worker = procs.start(
        "worker",
        [
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            "--queues",
            "imports",
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "--loglevel",
            "INFO",  # the " ready." line the clock waits for is an INFO line
        ],
    )
    relay = procs.start("relay", [sys.executable, "-m", "app.cli", "relay"])
    await wait_http_ready(api, base, 60)
    await asyncio.to_thread(worker.wait_for_log, " ready.", 60)  # pool up before the clock
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:

        async def body() -> Any:
            with open(csv_path, "rb") as f:  # noqa: ASYNC230 - local file, 1 MiB reads
                while block := f.read(1024 * 1024):
                    yield block

        # Warm-up before the clock, as in submit.py: a service's pool processes have their
        # connections open and their statements compiled and prepared; a fresh process pays
        # that on its first import (0.1-0.4 s here, which would swamp a 10k-row figure).
        # Concurrent small imports into a scratch dataset, so that both processes get one.
        await asyncio.gather(*(warm_up(client, args.warmup_rows) for _ in range(4)))

        runs: list[dict[str, Any]] = []
        with RssSampler(worker.popen.pid) as rss:
            for index in range(args.repeat):
                dataset = await new_dataset(client, "bench")  # each run into an empty one
                figures = await measure_import(client, (api, worker, relay), rss, dataset, body)
                if figures["rows_accepted"] != rows:
                    raise RuntimeError(f"unexpected counts: {figures['rows_accepted']} of {rows}")
                # The baseline right after, on the same machine state: on a noisy machine two
                # runs minutes apart measure the machine as much as the code.
                figures["copy_seconds"] = await copy_run(database_url, csv_path)
                figures["ratio"] = figures["copy_seconds"] / figures["seconds"]
                runs.append(figures)
                print(
                    f"  run {index + 1}/{args.repeat}: conveyor {figures['seconds']:.3f} s,"
                    f" COPY {figures['copy_seconds']:.3f} s",
                    flush=True,
                )
    return {"runs": runs, "peak_rss": rss.peak}


async def measure_import(
    client: httpx.AsyncClient,
    processes: tuple[Proc, Proc, Proc],
    rss: RssSampler,
    dataset: dict[str, Any],
    body: Callable[[], Any],
) -> dict[str, Any]:
    """Uploads the file into ``dataset`` and waits until its import is done: one run.

    Returns:
        Its ``seconds`` (upload start -> done), ``upload_seconds``, ``rows_accepted`` and,
        for an import of several chunks, the chunk phase's figures.
    """
    api, worker, relay = processes
    cpu_before = {p.name: p.cpu() for p in (api, worker, relay)}
    started = time.perf_counter()
    response = await client.post(
        f"/v1/datasets/{dataset['id']}/imports",
        content=body(),
        headers={"content-type": "text/csv"},
    )
    response.raise_for_status()
    uploaded = time.perf_counter() - started
    name = response.json()["name"].removeprefix("operations/")
    # A short poll, not :wait: the server's long-poll backs off to 1 s between its
    # checks, which would pad the clock by up to a second.
    marks: dict[str, float] = {}  # BENCH_DEBUG: when each step was first seen
    # Machine-wide CPU over the chunk phase (the worker's pool processes and the
    # PostgreSQL backends their COPYs run on): "both cores busy".
    chunk_phase: list[tuple[int, float]] = []
    pool_cpu: dict[int, float] = {}
    while True:
        op = (await client.get(f"/v1/operations/{name}")).json()
        if op.get("done"):
            break
        progress = op["metadata"].get("progress") or {}
        step = (
            "chunks done"
            if progress.get("total") and progress.get("done") == progress.get("total")
            else "rows counted"  # split done (or the first chunk, if throttled)
            if progress.get("total")
            else "running"
            if op["metadata"].get("state") == "RUNNING"
            else None
        )
        if step:
            marks.setdefault(step, time.perf_counter() - started)
        if step == "rows counted" and not chunk_phase:
            chunk_phase.append(busy_jiffies())
            pool_cpu = rss.children_cpu()
        elif step == "chunks done" and len(chunk_phase) == 1:
            chunk_phase.append(busy_jiffies())
            pool_cpu = {
                pid: cpu - pool_cpu.get(pid, 0.0) for pid, cpu in rss.children_cpu().items()
            }
        await asyncio.sleep(POLL_SECONDS)
    elapsed = time.perf_counter() - started
    cpu = {p.name: p.cpu() - cpu_before[p.name] for p in (api, worker, relay)}
    if os.environ.get("BENCH_DEBUG"):
        print("CPU seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()), file=sys.stderr)
        print(json.dumps(op["metadata"], indent=1), file=sys.stderr)
        for step, at in [*marks.items(), ("done", elapsed)]:
            print(f"{at:6.2f} s  {step}", file=sys.stderr)
    if op["metadata"]["state"] != "SUCCEEDED":
        raise RuntimeError(f"import ended {op['metadata']['state']}: {op.get('error')}")
    figures: dict[str, Any] = {
        "seconds": elapsed,
        "upload_seconds": uploaded,
        "rows_accepted": op["response"]["rows_accepted"],
    }
    if len(chunk_phase) == 2:
        wall = chunk_phase[1][1] - chunk_phase[0][1]
        figures["chunk_seconds"] = wall
        figures["chunk_cores_busy"] = cores_busy(*chunk_phase)
        # Each pool process's share of the phase (1.0 = one core the whole time).
        figures["pool_busy"] = sorted((c / wall for c in pool_cpu.values()), reverse=True)
    return figures


async def new_dataset(client: httpx.AsyncClient, display_name: str) -> dict[str, Any]:
    """Creates an empty dataset with the benchmark's fields; returns it."""
    response = await client.post(
        "/v1/datasets", json={"display_name": display_name, "fields": FIELDS, "key_field": "id"}
    )
    response.raise_for_status()
    return cast(dict[str, Any], response.json())


async def warm_up(client: httpx.AsyncClient, rows: int) -> None:
    """One import of ``rows`` generated rows into a dataset of its own, waited for."""
    if rows <= 0:
        return
    dataset = await new_dataset(client, "warm-up")
    rnd = random.Random(2)
    lines = [",".join(COLUMNS)]
    for i in range(1, rows + 1):
        lines.append(",".join(f'"{c}"' if "," in c else c for c in row_values(i, rnd)))
    response = await client.post(
        f"/v1/datasets/{dataset['id']}/imports",
        content=("\n".join(lines) + "\n").encode(),
        headers={"content-type": "text/csv"},
    )
    response.raise_for_status()
    name = response.json()["name"].removeprefix("operations/")
    deadline = time.monotonic() + 120
    while not (op := (await client.get(f"/v1/operations/{name}")).json()).get("done"):
        if time.monotonic() > deadline:
            raise RuntimeError("the warm-up import did not finish within 120 s")
        await asyncio.sleep(POLL_SECONDS)
    if op["metadata"]["state"] != "SUCCEEDED":
        raise RuntimeError(f"the warm-up import ended {op['metadata']['state']}: {op}")


async def copy_run(database_url: str, csv_path: pathlib.Path) -> float:
    conn = await asyncpg.connect(plain_pg_url(database_url))
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.execute(COPY_TABLE)
        started = time.perf_counter()
        await conn.copy_to_table("bench_copy", source=str(csv_path), format="csv", header=True)
        return time.perf_counter() - started
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument(
        "--warmup-rows",
        type=int,
        default=1000,
        help="rows of each of the 4 warm-up imports run before the clock (0: none)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="measured imports, each followed by its COPY (default: 5 up to 100k rows, 3 up to"
        " 1M, else 1); the run with the median ratio is reported",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--redis-db", type=int, help="Redis database index to use (default: an idle one)"
    )
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 5 if args.rows <= 100_000 else 3 if args.rows <= 1_000_000 else 1
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    admin_url = os.environ.get("CONVEYOR_BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    broker = pick_redis_db(
        os.environ.get("CONVEYOR_BENCH_BROKER_URL", DEFAULT_BROKER_URL), args.redis_db
    )
    name = f"conveyor_bench_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="conveyor-imports-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        csv_path = workdir / "bench.csv"
        print(f"generating {args.rows} rows ...", flush=True)
        size = generate(csv_path, args.rows)
        create_database(admin_url, name)
        database_url = "postgresql+asyncpg://" + with_database(admin_url, name).split("://", 1)[1]
        procs: Procs | None = None
        try:
            migrate.upgrade(load_settings(database_url=database_url, broker_url="redis://unused"))
            flush_redis(broker)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
            env.update(
                {
                    "CONVEYOR_DATABASE_URL": database_url,
                    "CONVEYOR_BROKER_URL": broker,
                    "CONVEYOR_DATA_DIR": str(workdir / "data"),
                    "CONVEYOR_IMPORTS__STORAGE_DIR": str(workdir / "files"),
                    "CONVEYOR_IMPORTS__CHUNK_ROWS": str(args.chunk_rows),
                    "CONVEYOR_SECURITY__AUTH_REQUIRED": "false",
                    "CONVEYOR_SECURITY__RATE_LIMIT_ENABLED": "false",
                    # Room for the file (10M rows is about 1 GB): what a user importing files
                    # that large configures.
                    "CONVEYOR_SECURITY__MAX_UPLOAD_BYTES": str(max(2 * size, 1024**3)),
                    "CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES": str(max(2 * size, 1024**3)),
                    "CONVEYOR_LOG_LEVEL": "INFO" if os.environ.get("BENCH_DEBUG") else "WARNING",
                }
            )
            procs = Procs(env, workdir / "logs")
            print("conveyor: API + 2 worker processes ...", flush=True)
            conveyor = asyncio.run(conveyor_run(args, procs, csv_path, args.rows, database_url))
        except BaseException:
            if procs is not None:
                for proc in procs.all:
                    print(f"--- {proc.name}\n{proc.tail()}", file=sys.stderr)
            raise
        finally:
            if procs is not None:
                procs.stop_all()
            drop_database(admin_url, name)
            flush_redis(broker, mark=False)
    # Each run is paired with the COPY right after it; the run with the median ratio is the
    # one reported (its own times, so that the figures of a row belong together).
    runs = sorted(conveyor["runs"], key=lambda r: r["ratio"])
    median = runs[(len(runs) - 1) // 2]
    copy_seconds = median["copy_seconds"]
    figures = {
        "rows": args.rows,
        "file_mb": round(size / 1e6, 1),
        "conveyor_rows_per_s": round(args.rows / median["seconds"]),
        "conveyor_seconds": round(median["seconds"], 2),
        "upload_seconds": round(median["upload_seconds"], 2),
        "copy_rows_per_s": round(args.rows / copy_seconds),
        "copy_seconds": round(copy_seconds, 2),
        "ratio": round(median["ratio"], 3),
        "runs": len(runs),
        "ratio_min": round(runs[0]["ratio"], 3),
        "ratio_max": round(runs[-1]["ratio"], 3),
        "peak_worker_rss_mb": round(conveyor["peak_rss"] / 1e6, 1),
    }
    if "chunk_cores_busy" in median:
        figures["chunk_seconds"] = round(median["chunk_seconds"], 2)
        figures["chunk_cores_busy"] = round(median["chunk_cores_busy"], 2)
        figures["chunk_pool_busy"] = [round(b, 2) for b in median["pool_busy"]]
    print(
        f"\nrows {args.rows} ({figures['file_mb']} MB CSV, 10 typed columns)\n"
        f"conveyor  {figures['conveyor_rows_per_s']:>10} rows/s  ({figures['conveyor_seconds']} s,"
        f" upload {figures['upload_seconds']} s)\n"
        f"COPY      {figures['copy_rows_per_s']:>10} rows/s  ({figures['copy_seconds']} s)\n"
        f"ratio     {figures['ratio']:>10}x COPY (target >= 0.5; median of {len(runs)} runs,"
        f" {figures['ratio_min']}-{figures['ratio_max']})\n"
        f"peak worker RSS {figures['peak_worker_rss_mb']} MB (target < 300)"
    )
    if "chunk_cores_busy" in figures:
        print(
            f"chunk phase {figures['chunk_seconds']} s: {figures['chunk_cores_busy']} of"
            f" {os.cpu_count()} cores busy machine-wide; pool processes"
            f" {', '.join(str(b) for b in figures['chunk_pool_busy'])} of a core each"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
