#!/usr/bin/env python
"""Webhook delivery throughput: Conveyor vs a raw async httpx loop, in the same run.

    .venv/bin/python benchmarks/webhooks.py                 # --count 20000
    .venv/bin/python benchmarks/webhooks.py --count 5000 --endpoints 50

Both systems POST the same JSON payloads to the same local receiver (a separate uvicorn
process answering 200 and counting requests):

- **raw**: one asyncio loop with one ``httpx.AsyncClient``, ``--concurrency`` requests in
  flight, posting every payload once (no database, no signature, no retry bookkeeping).
- **Conveyor**: ``--endpoints`` endpoints on the receiver, ``count / endpoints`` events
  published through ``WebhooksService.publish_event`` (one delivery per endpoint each, written
  with the event and its outbox rows in one transaction, fast-path published), delivered by
  ``conveyor worker --queues webhooks -c 2 -P prefork`` (2 worker processes) with
  ``conveyor relay`` running: claim, SSRF re-check, Standard Webhooks signature, POST,
  attempt record, outcome event in the outbox. The clock stops when every delivery row is
  SUCCEEDED (the durable outcome, not just the receiver's count); the time until the receiver
  counted every request is printed too.

Both run ``--rounds`` times (default 3), interleaved and each round in the other order; the
round with the median ratio stands for the run (every round is printed and kept in the JSON).
Prints both rates, the ratio (target >= 0.8x) and the CPU per delivery (Conveyor: the worker
with its pool and the relay; raw: the loop's process). Environment as ``submit.py``:
``CONVEYOR_BENCH_DATABASE_URL`` (admin URL) and ``CONVEYOR_BENCH_BROKER_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from app.config import load_settings  # noqa: E402
from app.db import migrate  # noqa: E402
from benchmarks.submit import (  # noqa: E402
    DEFAULT_ADMIN_URL,
    DEFAULT_BROKER_URL,
    Procs,
    create_database,
    drop_database,
    flush_redis,
    free_port,
    pick_redis_db,
    plain_pg_url,
    with_database,
)

RECEIVER_APP = """
import sys
count = 0

async def app(scope, receive, send):
    global count
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        count += 1
        body = b"ok"
    else:
        body = str(count).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def claim_broker(base_url: str, logdir: pathlib.Path, mode: str) -> tuple[str, Any]:
    """Picks an idle Redis index and takes the test fixtures' lock on it (``claim_redis_db``
    in tests/conftest.py), so a test session running meanwhile never flushes our queue; with
    ``mode`` ``private`` (or ``auto`` when no index is idle) an embedded redis-server of the
    run's own.

    Returns:
        ``(url, release)``.
    """
    import urllib.parse

    import redis

    if mode != "private":
        try:
            return _claim_shared(base_url)
        except SystemExit:
            if mode == "shared":
                raise
    from app.runtime.embedded import start_embedded

    private = start_embedded(logdir / "redis", postgres=False, redis=True)
    url = urllib.parse.urlunsplit(
        urllib.parse.urlsplit(str(private.broker_url))._replace(path="/1")
    )
    redis.Redis.from_url(url).set("conveyor-bench:owner", str(os.getpid()))
    return url, private.stop


def _claim_shared(base_url: str) -> tuple[str, Any]:
    import urllib.parse

    import redis

    locks = redis.Redis.from_url(
        urllib.parse.urlunsplit(urllib.parse.urlsplit(base_url)._replace(path="/0"))
    )
    token = f"bench-{os.getpid()}-{secrets.token_hex(4)}"
    tried: set[str] = set()
    for _ in range(15):
        url = pick_redis_db(base_url, None, exclude=tried)
        key = f"conveyor-test-lock:{url.rsplit('/', 1)[1]}"
        if locks.set(key, token, nx=True, ex=3600):

            def release(key: str = key) -> None:
                if locks.get(key) == token.encode():
                    locks.delete(key)

            return url, release
        tried.add(url)
    raise SystemExit("webhooks.py: no idle, unlocked Redis database index in 1..15")


async def received(base: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return int((await client.get(f"{base}/count")).text)


async def wait_received(base: str, target: int, limit_s: float) -> float:
    """Polls the receiver until it counted ``target`` requests; returns the monotonic time."""
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if int((await client.get(f"{base}/count")).text) >= target:
                return time.monotonic()
            await asyncio.sleep(0.05)
    raise RuntimeError(f"receiver did not count {target} requests within {limit_s}s")


async def raw_loop(urls: Sequence[str], bodies: Sequence[bytes], concurrency: int) -> float:
    """Posts every body once with ``concurrency`` requests in flight; returns seconds."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for i, body in enumerate(bodies):
        queue.put_nowait((urls[i % len(urls)], body))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as client:

        async def worker() -> None:
            while not queue.empty():
                url, body = queue.get_nowait()
                response = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                response.raise_for_status()

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - start


async def conveyor_run(
    settings: Any,
    urls: Sequence[str],
    events: int,
    base: str,
    already: int,
    limit_s: float,
    *,
    create_endpoints: bool = True,
) -> tuple[float, float, list[bytes]]:
    """Creates the endpoints (first round), publishes the events, waits for every delivery.

    Returns:
        Seconds until the receiver counted every request, seconds until every delivery row
        was SUCCEEDED (the benchmark's clock), and the delivered bodies.
    """
    import sqlalchemy as sa

    from app.container import Container
    from app.db import EngineRegistry
    from app.runtime.outbox import OutboxPublisher

    registry = EngineRegistry(settings)
    publisher = OutboxPublisher(registry, settings)
    container = Container(settings, registry, after_commit=publisher.publish_now)
    service = container.webhooks
    try:
        if create_endpoints:  # the first round's; the later rounds reuse them
            for url in urls:
                await service.create_endpoint("bench", url=url, event_types=["bench.*"])
        total = events * len(urls)
        start = time.monotonic()
        for i in range(events):
            await service.publish_event(
                "bench", event_type="bench.Happened", data={"n": i, "pad": "x" * 200}
            )
        published = time.monotonic()
        done = await wait_received(base, already + total, limit_s)
        engine = registry.engine("webhooks")
        while True:
            async with engine.connect() as conn:
                left = (
                    await conn.execute(
                        sa.text(
                            "SELECT count(*) FROM webhooks.deliveries WHERE state != 'SUCCEEDED'"
                        )
                    )
                ).scalar_one()
            if not left:
                break
            if time.monotonic() - done > limit_s:
                raise RuntimeError(f"{left} deliveries not SUCCEEDED after {limit_s}s")
            await asyncio.sleep(0.02)
        settled = time.monotonic()
        async with engine.connect() as conn:
            rows = await conn.execute(sa.text("SELECT body FROM webhooks.deliveries"))
            bodies = [row[0].encode() for row in rows]
        print(f"  conveyor: published {events} events in {published - start:.2f}s")
        await publisher.drain()
        return done - start, settled - start, bodies
    finally:
        await registry.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="deliveries (default 20000)")
    parser.add_argument("--endpoints", type=int, default=100, help="endpoints (default 100)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=10,
        help="raw loop requests in flight (10: httpx is fastest there on 2 cores)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds of both systems, count deliveries each; the median ratio counts",
    )
    parser.add_argument("--batch", type=int, default=50, help="deliveries per Conveyor task")
    parser.add_argument("--limit", type=float, default=900, help="seconds to wait at most")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    parser.add_argument(
        "--redis",
        choices=["auto", "shared", "private"],
        default="auto",
        help="shared: an idle index of CONVEYOR_BENCH_BROKER_URL; private: an embedded"
        " redis-server; auto: shared if an index is idle, else private",
    )
    args = parser.parse_args(argv)
    events = max(1, args.count // args.endpoints)
    count = events * args.endpoints

    admin_url = plain_pg_url(os.environ.get("CONVEYOR_BENCH_DATABASE_URL") or DEFAULT_ADMIN_URL)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logdir = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-bench-webhooks-"))
    broker, release_broker = claim_broker(
        os.environ.get("CONVEYOR_BENCH_BROKER_URL") or DEFAULT_BROKER_URL, logdir, args.redis
    )
    name = f"conveyor_bench_{secrets.token_hex(4)}"
    database_url = with_database(admin_url, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    hooks_env = {
        "CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST": '["127.0.0.1"]',
        "CONVEYOR_WEBHOOKS__DISPATCH_BATCH_SIZE": str(args.batch),
    }
    env.update(
        CONVEYOR_DATABASE_URL=database_url,
        CONVEYOR_BROKER_URL=broker,
        CONVEYOR_DATA_DIR=str(logdir / "data"),
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_TASK_EVENTS="false",
        PYTHONUNBUFFERED="1",
        **hooks_env,
    )
    procs = Procs(env, logdir)
    create_database(admin_url, name)
    flush_redis(broker)
    try:
        migrate.upgrade(load_settings(database_url=database_url, broker_url="redis://unused"))
        port = free_port()
        (logdir / "receiver_app.py").write_text(RECEIVER_APP)
        receiver = procs.start(
            "receiver",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "receiver_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--app-dir",
                str(logdir),
            ],
        )
        base = f"http://127.0.0.1:{port}"
        urls = [f"{base}/e{i}" for i in range(args.endpoints)]
        conveyor = [sys.executable, "-m", "app.cli"]
        worker = procs.start(
            "worker",
            [
                *conveyor,
                "worker",
                "--queues",
                "webhooks",
                "--concurrency",
                "2",
                "--pool",
                "prefork",
            ],
        )
        worker.wait_for_log(" ready.", 60)
        relay = procs.start("relay", [*conveyor, "relay"], env={"CONVEYOR_LOG_LEVEL": "INFO"})
        relay.wait_for_log("relay started", 30)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                asyncio.run(received(base))
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"receiver not ready:\n{receiver.tail()}")
            time.sleep(0.2)

        settings = load_settings(
            database_url=database_url,
            broker_url=broker,
            # The workers' data dir: the same generated key encrypts the endpoints' secrets.
            data_dir=str(logdir / "data"),
            webhooks={"ssrf_allowlist": ["127.0.0.1"], "dispatch_batch_size": args.batch},
        )
        print(
            f"webhooks benchmark: {count} deliveries ({events} events x {args.endpoints}"
            f" endpoints), 2 worker processes, batch {args.batch}; raw concurrency"
            f" {args.concurrency}"
        )
        rounds: list[dict[str, float]] = []
        bodies: list[bytes] = []
        for number in range(1, args.rounds + 1):
            # Interleaved, and each round in the other order (the first starts with Conveyor,
            # whose delivered bodies the raw loop then posts): a slow spell of this shared
            # machine weighs on both systems instead of on whichever ran during it.
            order = ("conveyor", "raw") if number % 2 else ("raw", "conveyor")
            figures: dict[str, float] = {}
            for system in order:
                if system == "conveyor":
                    already = asyncio.run(received(base))
                    cpu_before = worker.cpu() + relay.cpu()
                    received_s, conveyor_s, bodies = asyncio.run(
                        conveyor_run(
                            settings,
                            urls,
                            events,
                            base,
                            already,
                            args.limit,
                            create_endpoints=number == 1,
                        )
                    )
                    figures.update(
                        conveyor_s=conveyor_s,
                        received_s=received_s,
                        # Worker (with its pool) and relay; the publishing of the events in
                        # this process is not counted.
                        conveyor_cpu_ms=(worker.cpu() + relay.cpu() - cpu_before) / count * 1e3,
                    )
                else:
                    # The payloads Conveyor delivered (every round's have the same shape).
                    cpu_before = time.process_time()
                    figures["raw_s"] = asyncio.run(raw_loop(urls, bodies[:count], args.concurrency))
                    figures["raw_cpu_ms"] = (time.process_time() - cpu_before) / count * 1e3
            figures["ratio"] = (count / figures["conveyor_s"]) / (count / figures["raw_s"])
            rounds.append(figures)
            print(
                f"  round {number} ({' then '.join(order)}): raw {count / figures['raw_s']:,.0f}/s,"
                f" conveyor {count / figures['conveyor_s']:,.0f}/s, ratio {figures['ratio']:.2f}x;"
                f" CPU per delivery raw {figures['raw_cpu_ms']:.2f} ms, conveyor"
                f" {figures['conveyor_cpu_ms']:.2f} ms"
            )
        # The round with the median ratio stands for the run (every round is printed).
        middle = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
        conveyor_rate, raw_rate = count / middle["conveyor_s"], count / middle["raw_s"]
        print(f"  raw httpx loop : {raw_rate:8.0f} deliveries/s ({middle['raw_s']:.2f}s)")
        print(
            f"  conveyor       : {conveyor_rate:8.0f} deliveries/s (every row SUCCEEDED after"
            f" {middle['conveyor_s']:.2f}s; the receiver had counted them all after"
            f" {middle['received_s']:.2f}s)"
        )
        print(
            f"  ratio conveyor/raw: {middle['ratio']:.2f}x (median of {len(rounds)} rounds;"
            " target >= 0.8x)"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "count": count,
                        "rounds": len(rounds),
                        "raw_per_s": raw_rate,
                        "conveyor_per_s": conveyor_rate,
                        "ratio": middle["ratio"],
                        "ratio_min": min(r["ratio"] for r in rounds),
                        "ratio_max": max(r["ratio"] for r in rounds),
                        "conveyor_settled_s": middle["conveyor_s"],
                        "conveyor_received_s": middle["received_s"],
                        "raw_cpu_ms_per_delivery": middle["raw_cpu_ms"],
                        "conveyor_cpu_ms_per_delivery": middle["conveyor_cpu_ms"],
                        "per_round": rounds,
                    },
                    indent=2,
                )
            )
        return 0
    finally:
        procs.stop_all()
        flush_redis(broker, mark=False)
        release_broker()
        drop_database(admin_url, name)


if __name__ == "__main__":
    sys.exit(main())
