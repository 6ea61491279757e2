"""Poison pills end: a task that keeps killing its worker stops at the attempt cap, and a task
stuck past its soft time limit fails its operation - with real `conveyor worker` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.reliability.test_nothing_lost import _children
from tests.support.ops import get_op, wait_state

pytestmark = pytest.mark.reliability


async def test_task_that_kills_its_worker_every_time_ends_failed_at_the_attempt_cap(stack):
    worker = stack.worker(concurrency=1, env={"CONVEYOR_MAX_ATTEMPTS": "2"})
    response = await stack.client.post(
        "/v1/pings", json={"message": "oom", "sleep_seconds": 30, "steps": 60}
    )
    name = response.json()["name"]
    kills = 0
    deadline = time.monotonic() + 90
    op = await get_op(stack.client, name)
    while not op["done"] and time.monotonic() < deadline:
        op = await get_op(stack.client, name)
        if op["metadata"]["state"] == "RUNNING" and op["metadata"]["attempt"] > kills:
            # This attempt runs: its pool child dies (as an OOM kill or a segfault would).
            for pid in _children(worker.popen.pid):
                os.kill(pid, signal.SIGKILL)
            kills += 1
        await asyncio.sleep(0.2)
    assert kills == 2, (kills, op)
    assert op["metadata"]["state"] == "FAILED", op
    assert op["error"]["status"] == "ABORTED"
    assert "the worker died running this operation" in op["error"]["message"]
    assert op["metadata"]["attempt"] == 2
    assert worker.popen.poll() is None, "the worker survives its children"


async def test_task_past_its_soft_time_limit_fails_with_deadline_exceeded(stack):
    stack.worker(concurrency=1, env={"CONVEYOR_TASK_TIME_LIMITS": '{"platform.ping": [1.5, 10]}'})
    response = await stack.client.post(
        "/v1/pings", json={"message": "stuck", "sleep_seconds": 20, "steps": 2}
    )
    started = time.monotonic()
    done = await wait_state(stack.client, response.json()["name"], {"SUCCEEDED", "FAILED"}, 30)
    assert done["metadata"]["state"] == "FAILED", done
    assert done["error"]["status"] == "DEADLINE_EXCEEDED"
    assert "soft time limit of 1.5 s" in done["error"]["message"]
    assert done["metadata"]["attempt"] == 1  # not retried
    assert time.monotonic() - started < 15  # far before the 20 s of work
