"""Instructions per ping: Conveyor's worker against a raw Celery worker, counted by callgrind.

``submit.py``'s "worker CPU per job" swings between runs on a shared 2-core machine (the same
code read 1.26x and 1.66x raw Celery's); executed instructions do not depend on what else the
machine does. This counts them.

What runs, for each system: the queue is filled with ``--small`` (then ``--large``) jobs while
no worker runs, then one worker (prefork, one pool process, as ``submit.py`` starts it but with
``-c 1``) drains it under callgrind, and is stopped with SIGTERM once every job is done.

- Conveyor: pings submitted through the API app in-process (``api_instructions.py``'s driver,
  the fast path publishing them), drained by ``conveyor worker --queues platform``.
- Raw Celery: ``benchmarks/raw_tasks.py``'s task (the same effect: one row written over an
  asyncpg connection held per process, ``acks_late``, no result backend, task events on),
  published with ``apply_async``, drained by ``celery worker -E``.

Per job = (large run - small run) / (large - small jobs), over the worker's main process and its
pool process (start-up and imports cancel out). Each figure includes what the processes do while
idle during the extra wall time (heartbeats, polls: about 1-1.5 M instructions per second of
valgrind's wall time, some 0.1-0.2 M per job, alike for both). Expect about 15 minutes::

    .venv/bin/python benchmarks/worker_instructions.py
    .venv/bin/python benchmarks/worker_instructions.py --small 50 --large 250 --json /tmp/w.json

Needs ``valgrind`` (Debian: ``apt-get install valgrind``). Environment: as ``submit.py``
(``CONVEYOR_BENCH_DATABASE_URL``, ``CONVEYOR_BENCH_BROKER_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/worker_instructions.py`
    sys.path.insert(0, str(ROOT))

from benchmarks.api_instructions import bench_environment  # noqa: E402

SYSTEMS = ("conveyor", "raw")
_COLLECTED = re.compile(r"==(\d+)==\s*Collected\s*:\s*(\d+)")


def fill(system: str, jobs: int, env: dict[str, str]) -> None:
    """Queues ``jobs`` jobs of ``system`` (no worker runs)."""
    if system == "conveyor":
        argv = [
            sys.executable,
            str(ROOT / "benchmarks" / "api_instructions.py"),
            "--child",
            "conveyor",
            "--requests",
            str(jobs),
            "--warm-up",
            "0",
        ]
    else:
        code = (
            "import time, uuid\n"
            "from benchmarks import raw_tasks\n"
            f"for _ in range({jobs}):\n"
            "    job = uuid.uuid4()\n"
            "    raw_tasks.ping.apply_async(args=[str(job), time.time()], task_id=str(job))\n"
        )
        argv = [sys.executable, "-c", code]
    subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, timeout=600)


def worker_argv(system: str) -> list[str]:
    """The worker's command line: prefork, one pool process."""
    name = f"instr-{system}-{secrets.token_hex(3)}@%h"
    if system == "conveyor":
        return [
            *(sys.executable, "-m", "app.cli", "worker", "--queues", "platform"),
            *("--concurrency", "1", "--pool", "prefork", "--name", name, "--quiet"),
        ]
    from benchmarks import raw_tasks

    return [
        *(sys.executable, "-m", "celery", "-A", "benchmarks.raw_tasks", "worker", "-E"),
        *("-c", "1", "-P", "prefork", "-Q", raw_tasks.QUEUE, "-n", name, "--loglevel", "INFO"),
    ]


async def done_jobs(system: str, plain_url: str) -> int:
    """Jobs of ``system`` done so far."""
    import asyncpg

    from benchmarks import raw_tasks

    conn = await asyncpg.connect(plain_url)
    try:
        if system == "conveyor":
            found = await conn.fetchval("SELECT count(*) FROM platform.operations WHERE done")
        else:
            found = await conn.fetchval(f"SELECT count(*) FROM {raw_tasks.TABLE}")
        return int(found)
    finally:
        await conn.close()


def count(
    system: str, jobs: int, env: dict[str, str], plain_url: str, timeout: float
) -> dict[str, int]:
    """Instructions of one worker run that drains ``jobs`` queued jobs, by process."""
    before = asyncio.run(done_jobs(system, plain_url))
    fill(system, jobs, env)
    argv = worker_argv(system)
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        try:
            text = pathlib.Path(log.name).read_text
            while " ready." not in text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{system} worker did not start:\n{text()[-2000:]}")
                time.sleep(0.5)
            while asyncio.run(done_jobs(system, plain_url)) < before + jobs:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{system}: jobs not done in time:\n{text()[-2000:]}")
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)  # warm shutdown: every process exits, and dumps
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        found = {int(pid): int(n) for pid, n in _COLLECTED.findall(text(errors="replace"))}
    if len(found) < 2:
        raise RuntimeError(f"{system}: expected a main and a pool process, got {found}")
    # valgrind runs the program in place (same pid); the pool process is forked later.
    main_pid = proc.pid if proc.pid in found else min(found)
    return {
        "main": found.pop(main_pid, 0),
        "pool": sum(found.values()),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--small", type=int, default=50, help="jobs of the short run")
    parser.add_argument("--large", type=int, default=250, help="jobs of the long run")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per worker run")
    parser.add_argument("--json", dest="json_path", default=None, help="also write results")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None:
        print(
            "worker_instructions.py: valgrind not found (apt-get install valgrind)", file=sys.stderr
        )
        return 2
    results: dict[str, dict[str, float]] = {}
    with bench_environment() as (env, plain_url):
        os.environ["BENCH_BROKER_URL"] = env["BENCH_BROKER_URL"]  # read by raw_tasks at import
        from benchmarks import raw_tasks

        async def create_raw_table() -> None:
            import asyncpg

            conn = await asyncpg.connect(plain_url)
            try:
                await conn.execute(raw_tasks.CREATE_SQL)
            finally:
                await conn.close()

        asyncio.run(create_raw_table())
        extra = args.large - args.small
        for system in SYSTEMS:
            print(
                f"[instructions] {system}: {args.small} and {args.large} jobs under callgrind ...",
                flush=True,
            )
            small = count(system, args.small, env, plain_url, args.timeout)
            large = count(system, args.large, env, plain_url, args.timeout)
            per_job = {role: (large[role] - small[role]) / extra for role in ("main", "pool")}
            per_job["total"] = per_job["main"] + per_job["pool"]
            results[system] = per_job
    for system, per_job in results.items():
        print(
            f"{system:9s} {per_job['total'] / 1e6:6.2f} M instructions per job"
            f" (main process {per_job['main'] / 1e6:.2f} M, pool process"
            f" {per_job['pool'] / 1e6:.2f} M)"
        )
    ratio = results["conveyor"]["total"] / results["raw"]["total"]
    print(f"ratio     {ratio:6.2f}x raw Celery (worker processes only; target <= 1.5x)")
    if args.json_path:
        payload: dict[str, Any] = {"args": vars(args), "per_job": results, "ratio": ratio}
        pathlib.Path(args.json_path).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
