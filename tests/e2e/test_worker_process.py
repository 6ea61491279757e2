"""End to end: `conveyor worker` as a real prefork subprocess runs pings against real Redis and
Postgres (the runtime's loop and engines are built after fork, in each pool child)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.ops import wait_state

pytestmark = pytest.mark.e2e


async def test_prefork_worker_subprocess_runs_pings_to_done(stack):
    worker = stack.worker(queues="platform", concurrency=2, pool="prefork")
    responses = await asyncio.gather(
        *(stack.client.post("/v1/pings", json={"message": f"m{i}"}) for i in range(6))
    )
    ops = [r.json() for r in responses]
    done = [
        await wait_state(stack.client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=60)
        for op in ops
    ]
    assert {d["metadata"]["state"] for d in done} == {"SUCCEEDED"}
    assert {d["response"]["reply"] for d in done} == {f"pong: m{i}" for i in range(6)}
    log = worker.log()
    assert "ForkPoolWorker" in log
    assert "Traceback" not in log


async def test_worker_consumes_only_its_domain_queue(stack):
    stack.worker(queues="imports", concurrency=1)
    op = (await stack.client.post("/v1/pings", json={"message": "routed"})).json()
    await stack.app.state.publisher.drain()
    await asyncio.sleep(2)
    assert stack.redis.llen("platform") == 1, (
        "ping is routed to the platform queue, not taken by imports"
    )
    stack.worker(queues="platform", concurrency=1)
    await wait_state(stack.client, op["name"], {"SUCCEEDED"}, timeout=60)
