"""Workers heal themselves: `conveyor worker --check` tells a hung worker from a live one, a worker
whose pool cannot start exits non-zero, and a worker whose broker vanishes mid-ack either
consumes again or exits non-zero - never stays alive and idle. Real worker processes, real
Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.reliability.harness import JobStream, PrivateRedis, Tally
from tests.support.faults import fault_env

pytestmark = pytest.mark.reliability


def _check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_check_says_alive_then_hung_then_alive_again_then_gone(stack, tmp_path):
    beat = tmp_path / "w.heartbeat"
    worker = stack.spawn(
        "worker",
        "--queues",
        "platform",
        "--concurrency",
        "1",
        "--heartbeat-file",
        str(beat),
        env={"CONVEYOR_WORKER_HEARTBEAT_SECONDS": "0.3"},
        name="worker-hb",
    )
    worker.wait_for_log(" ready.", timeout=60)
    probe = ("--heartbeat-file", str(beat), "--max-age", "2")
    alive = _check(stack.env, *probe)
    assert alive.returncode == 0, alive.stderr
    assert "alive" in alive.stdout

    # A hung main process (as when stuck in do_wait): the heartbeat goes stale, the probe fails.
    os.kill(worker.popen.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(3)
        hung = _check(stack.env, *probe)
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)
    assert hung.returncode == 1, hung.stdout
    assert "hung" in hung.stderr

    deadline = time.monotonic() + 20
    while _check(stack.env, *probe).returncode != 0:
        assert time.monotonic() < deadline, "the heartbeat did not resume after SIGCONT"
        await asyncio.sleep(0.3)

    worker.popen.kill()
    worker.popen.wait()
    gone = _check(stack.env, *probe)
    assert gone.returncode == 1 and "gone" in gone.stderr, gone.stderr


async def test_worker_whose_pool_cannot_start_exits_non_zero(stack):
    worker = stack.spawn(
        "worker",
        "--queues",
        "platform",
        "--concurrency",
        "2",
        env={
            **fault_env(stack.env, CONVEYOR_FAULT_CHILD_EXIT_ON_INIT="1"),
            "CONVEYOR_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "5",
        },
        name="worker-nopool",
    )
    code = await asyncio.to_thread(worker.popen.wait, 90)
    log = worker.log()
    assert "Could not start worker processes" in log, log[-3000:]  # the fault hit
    assert code != 0, log[-3000:]


async def test_broker_vanishing_mid_ack_leaves_no_hung_worker(make_system, database_url, tmp_path):
    redis = PrivateRedis(tmp_path)
    if redis.executable() is None:
        from tests.support.services import missing_service

        missing_service("no redis-server binary")
    redis.start()
    try:
        system = make_system(database_url=database_url, broker_url=redis.url, workers=1)
        system.env.update(
            {
                "CONVEYOR_WORKER_HEARTBEAT_SECONDS": "0.5",
                "CONVEYOR_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "5",
            }
        )
        system.create_api_key()
        system.start()
        worker = system.workers[0]
        tally = Tally("broker-vanishes-mid-ack")
        stream = JobStream(system, tally, sleep_seconds=0.3)
        await stream.run(40, concurrency=4)
        # Tasks are running and acking when the broker disappears (SIGKILL: nothing saved).
        await asyncio.sleep(1.0)
        running = worker.log().count("succeeded in")
        redis.kill()
        await asyncio.sleep(2.0)
        redis.start()
        assert running >= 1, "no task had finished (acked) yet: the fault missed the ack path"

        # The worker consumes again (probe passes, a new job runs) or has exited non-zero for
        # its supervisor to restart; alive-but-idle is the bug.
        name = worker.argv[worker.argv.index("--name") + 1]
        probe = ("--name", name, "--max-age", "5")
        deadline = time.monotonic() + 90
        outcome = None
        while time.monotonic() < deadline and outcome is None:
            if not worker.alive():
                outcome = "exited"
                break
            fresh = JobStream(system, Tally("after"), sleep_seconds=0.0)
            await fresh.run(1, concurrency=1, give_up=20)
            states = await fresh.verify(timeout=10)
            if states.completed == 1 and _check(system.env, *probe).returncode == 0:
                outcome = "consuming"
            await asyncio.sleep(0.5)
        assert outcome is not None, f"worker alive but not consuming:\n{worker.log()[-3000:]}"
        if outcome == "exited":
            assert worker.popen is not None and worker.popen.returncode != 0, worker.log()[-3000:]
        print(f"broker vanished mid-ack: worker {outcome}")
    finally:
        redis.kill()


def test_shutdown_watchdog_forces_a_stuck_shutdown_out_with_the_failure_code():
    # What a worker stuck in its shutdown after "Unrecoverable error" (main in do_wait) gets.
    script = (
        "import time\n"
        "from app.runtime.worker_health import arm_shutdown_watchdog\n"
        "arm_shutdown_watchdog(3, 0.5)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 20
