"""Instructions per submit: Conveyor's API against the bare endpoint, counted by callgrind.

On a shared 2-core machine the CPU time of the same code swings by a third between runs, so
``submit.py``'s "API process CPU per request" cannot show a 10% change. This counts executed
instructions instead (valgrind's callgrind), which do not depend on what else the machine does.

What runs: ``POST /v1/pings`` driven in-process through each ASGI app (no uvicorn, no HTTP
client, so only the app is counted), ``--concurrency`` requests in flight on uvloop, against the
real PostgreSQL and Redis: Conveyor's API (``app.main.create_app``: auth, middlewares, the fused
INSERT, the fast-path publish on its thread) and the bare endpoint (``benchmarks/bare_app.py``,
FastAPI + ``send_task`` on the thread pool). Each app runs twice under callgrind, with
``--small`` and ``--large`` requests after the same warm-up; per request =
(large - small) / (large - small requests), so start-up and imports cancel out. Both systems run
at once (one core each). Expect a few minutes (valgrind runs Python about 50x slower)::

    .venv/bin/python benchmarks/api_instructions.py
    .venv/bin/python benchmarks/api_instructions.py --small 100 --large 400 --json /tmp/i.json

Needs ``valgrind`` (Debian: ``apt-get install valgrind``). Environment: as ``submit.py``
(``CONVEYOR_BENCH_DATABASE_URL``, ``CONVEYOR_BENCH_BROKER_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/api_instructions.py`
    sys.path.insert(0, str(ROOT))

SYSTEMS = ("conveyor", "bare")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


# ---------------------------------------------------------------------------- the child


def child(system: str, requests: int, warm_up: int, concurrency: int) -> None:
    """Runs under callgrind: builds ``system``'s app and drives ``POST /v1/pings`` in-process.

    Reads ``CONVEYOR_DATABASE_URL``, ``CONVEYOR_BROKER_URL``, ``CONVEYOR_DATA_DIR`` and, for
    Conveyor, ``BENCH_API_KEY``.
    """
    import uvloop

    from app.config import load_settings
    from benchmarks.submit import PING_BODY

    body = json.dumps(PING_BODY).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    app: Any
    if system == "bare":
        from benchmarks.bare_app import create_app as create_bare

        app = create_bare()
    else:
        from app.main import create_app

        headers.append((b"authorization", b"Bearer " + os.environ["BENCH_API_KEY"].encode()))
        app = create_app(
            load_settings(
                database_url=os.environ["CONVEYOR_DATABASE_URL"],
                broker_url=os.environ["CONVEYOR_BROKER_URL"],
                data_dir=os.environ["CONVEYOR_DATA_DIR"],
                # A policy, not a cost (as in submit.py): authentication stays on.
                security={"rate_limit_enabled": False},
            )
        )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/pings",
        "raw_path": b"/v1/pings",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def drive(n: int) -> None:
        remaining = iter(range(n))

        async def one_connection() -> None:
            for _ in remaining:
                statuses: list[int] = []

                async def receive() -> dict[str, Any]:
                    return {"type": "http.request", "body": body, "more_body": False}

                async def send(message: dict[str, Any], statuses: list[int] = statuses) -> None:
                    if message["type"] == "http.response.start":
                        statuses.append(message["status"])

                await app(dict(scope, state={}), receive, send)
                if statuses != [200]:
                    raise SystemExit(f"{system}: POST /v1/pings answered {statuses}")

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))

    async def run() -> None:
        await drive(warm_up)
        await drive(requests)
        publisher = getattr(app.state, "publisher", None)
        if publisher is not None:
            await publisher.drain()  # the batches of the last requests count too

    uvloop.run(run())


# ---------------------------------------------------------------------------- the parent


def count(system: str, requests: int, args: argparse.Namespace, env: dict[str, str]) -> int:
    """Instructions of one child run under callgrind (all threads)."""
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        "--child",
        system,
        "--requests",
        str(requests),
        "--warm-up",
        str(args.warm_up),
        "--concurrency",
        str(args.concurrency),
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.timeout)
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        tail = (done.stdout + done.stderr)[-2000:]
        raise RuntimeError(f"{system} with {requests} requests failed:\n{tail}")
    return int(found[-1])


def measure(args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    """Per-request instructions of each system (both systems at once, one core each)."""

    def per_request(system: str) -> float:
        small = count(system, args.small, args, env)
        large = count(system, args.large, args, env)
        return (large - small) / (args.large - args.small)

    with concurrent.futures.ThreadPoolExecutor(len(SYSTEMS)) as pool:
        futures = {system: pool.submit(per_request, system) for system in SYSTEMS}
        return {system: future.result() for system, future in futures.items()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--small", type=int, default=100, help="requests of the short run")
    parser.add_argument("--large", type=int, default=400, help="requests of the long run")
    parser.add_argument("--warm-up", type=int, default=50, help="requests before either")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child run")
    parser.add_argument("--json", dest="json_path", default=None, help="also write results")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None and not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    return args


@contextlib.contextmanager
def bench_environment() -> Iterator[tuple[dict[str, str], str]]:
    """A fresh migrated database, an idle Redis index and an API key for the child processes.

    Yields:
        ``(env, plain_url)``: the children's environment (``CONVEYOR_DATABASE_URL``,
        ``CONVEYOR_BROKER_URL``, ``CONVEYOR_DATA_DIR``, ``BENCH_API_KEY``, and
        ``BENCH_BROKER_URL`` / ``BENCH_DATABASE_URL`` for ``benchmarks.raw_tasks``) and the
        database's plain ``postgresql://`` URL. Everything is dropped afterwards.
    """
    from app.config import load_settings
    from app.db import migrate
    from benchmarks import submit

    admin_url = submit.plain_pg_url(
        os.environ.get("CONVEYOR_BENCH_DATABASE_URL") or submit.DEFAULT_ADMIN_URL
    )
    broker = submit.pick_redis_db(
        os.environ.get("CONVEYOR_BENCH_BROKER_URL") or submit.DEFAULT_BROKER_URL, None
    )
    name = f"conveyor_bench_{secrets.token_hex(4)}"
    data_dir = tempfile.mkdtemp(prefix="conveyor-bench-instr-")
    submit.create_database(admin_url, name)
    try:
        plain_url = submit.with_database(admin_url, name)
        database_url = "postgresql+asyncpg://" + plain_url.split("://", 1)[1]
        migrate.upgrade(load_settings(database_url=database_url, broker_url="redis://unused"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(
            CONVEYOR_DATABASE_URL=database_url,
            CONVEYOR_BROKER_URL=broker,
            CONVEYOR_DATA_DIR=data_dir,
            BENCH_BROKER_URL=broker,
            BENCH_DATABASE_URL=plain_url,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        env["BENCH_API_KEY"] = submit.create_api_key(env)
        yield env, plain_url
    finally:
        submit.flush_redis(broker, mark=False)
        submit.drop_database(admin_url, name)
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child(args.child, args.requests, args.warm_up, args.concurrency)
        return 0
    if shutil.which("valgrind") is None:
        print("api_instructions.py: valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    with bench_environment() as (env, _):
        print(
            f"[instructions] POST /v1/pings in-process, {args.concurrency} in flight,"
            f" {args.small} and {args.large} requests per system under callgrind ...",
            flush=True,
        )
        per_request = measure(args, env)
    ratio = per_request["conveyor"] / per_request["bare"]
    print(f"conveyor  {per_request['conveyor'] / 1e6:6.2f} M instructions per request")
    print(f"bare      {per_request['bare'] / 1e6:6.2f} M instructions per request")
    print(f"ratio     {ratio:6.2f}x the bare endpoint (app only: no uvicorn, no HTTP client)")
    if args.json_path:
        payload = {"args": vars(args), "instructions_per_request": per_request, "ratio": ratio}
        pathlib.Path(args.json_path).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
