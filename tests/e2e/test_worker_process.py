"""End to end: `conveyor worker` as a real prefork subprocess runs pings against real Redis and
Postgres (the runtime's loop and engines are built after fork, in each pool child)."""

from __future__ import annotations

import asyncio
import re

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


async def test_pool_child_past_its_memory_bound_is_replaced_and_no_work_is_lost(stack):
    # 1 MiB: every child is past it after its first task, so each task ends in a recycle.
    worker = stack.worker(
        queues="platform",
        concurrency=1,
        pool="prefork",
        env={"CONVEYOR_WORKER_MAX_MEMORY_PER_CHILD_MB": "1"},
    )
    for i in range(3):
        op = (await stack.client.post("/v1/pings", json={"message": f"r{i}"})).json()
        done = await wait_state(stack.client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=60)
        assert done["metadata"]["state"] == "SUCCEEDED", done
    # One pool process at a time, yet each task ran in a new one: the children were recycled.
    children = set(
        re.findall(r"(ForkPoolWorker-\d+) celery\.app\.trace: Task platform\.ping", worker.log())
    )
    assert len(children) == 3, worker.log()[-3000:]
