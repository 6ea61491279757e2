"""Fault injection against the whole system (issue "Proof"): real API under uvicorn, two real
worker processes, the relay/sweeper, on real PostgreSQL and a real broker. Each scenario prints
`accepted / completed / lost / duplicated` and asserts lost == duplicated == 0.

CI runs short versions (a few hundred jobs); `python -m tests.reliability.harness --soak 10m`
runs the long one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time

import httpx
import pytest

from app.runtime.embedded import start_postgres
from tests.conftest import TEST_OVERRIDES
from tests.reliability.harness import JobStream, PrivateRedis, System, Tally, scenario_sigkill
from tests.support import services
from tests.support.faults import fault_env
from tests.support.ops import query

pytestmark = pytest.mark.reliability

JOBS = int(os.environ.get("CONVEYOR_FAULT_JOBS", "200"))
AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _wait_exit(popen, timeout: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout)


def _check(tally: Tally) -> None:
    print(tally.line())
    assert tally.accepted > 0
    assert tally.lost == 0, tally.line()
    assert tally.duplicated == 0, tally.line()


def _check_kills_hit_work(tally: Tally) -> None:
    # The oracle is only worth something if the faults hit running work.
    assert tally.faults >= 1, tally.line()
    assert tally.retried >= 1, f"no operation needed a second attempt: {tally.line()}"


def _production_defaults(system: System) -> None:
    """Drops the shortened test deadlines (lease, pending deadline, sweeper/relay intervals,
    retries...) from the system's environment: its processes run with the shipped defaults."""
    for key in TEST_OVERRIDES:
        if key != "env":
            system.env.pop(f"CONVEYOR_{key.upper()}", None)


async def test_sigkill_workers_every_two_seconds_loses_nothing(make_system, database_url):
    system = make_system(database_url=database_url)
    system.create_api_key()
    system.start()
    tally = await scenario_sigkill(system, JOBS, kill_every=2.0)
    _check(tally)
    _check_kills_hit_work(tally)


def _amqp_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@services.needs_service(_amqp_up(), "no RabbitMQ on 127.0.0.1:5672")
async def test_sigkill_workers_with_rabbitmq_broker_loses_nothing(make_system, database_url):
    from app.adapters.celery_app import create_celery
    from app.config import load_settings

    # Start from empty queues (the vhost is shared with other RabbitMQ tests).
    celery = create_celery(load_settings(database_url=database_url, broker_url=AMQP_URL))
    with celery.connection_for_write() as conn:
        for queue in celery.conf.task_queues:
            queue(conn.default_channel).declare()
            queue(conn.default_channel).purge()
    system = make_system(database_url=database_url, broker_url=AMQP_URL)
    system.env["CONVEYOR_RESULT_BACKEND"] = ""
    system.create_api_key()
    system.start()
    # As many jobs as on Redis and kills as often: with half of them the run was over after
    # two kills, neither of which hit running work (CI: "faults 2, ops retried 0").
    tally = await scenario_sigkill(system, JOBS, kill_every=1.5)
    _check(tally)
    _check_kills_hit_work(tally)


async def test_redis_restart_mid_run_loses_nothing(make_system, database_url, tmp_path):
    redis = PrivateRedis(tmp_path)
    if redis.executable() is None:
        services.missing_service("no redis-server binary")
    redis.start()
    try:
        system = make_system(database_url=database_url, broker_url=redis.url)
        system.create_api_key()
        system.start()
        tally = Tally("redis-restart")
        stream = JobStream(system, tally, sleep_seconds=0.02)
        submit = asyncio.create_task(stream.run(JOBS, concurrency=6, rate=60))
        await asyncio.sleep(2.5)
        # Redis keeps nothing on disk: every queued message and result vanishes.
        async with system.supervising_workers() as restarted:
            redis.kill()
            tally.faults = 1
            await asyncio.sleep(1.5)
            redis.start()
            back = time.monotonic()
            await submit
            await stream.verify(timeout=240)
        tally.recover_seconds = time.monotonic() - back
        print(f"workers restarted by the supervisor: {restarted}")
        _check(tally)
    finally:
        redis.kill()


async def test_postgres_restart_mid_run_answers_503_and_loses_nothing(make_system, tmp_path):
    pgdata = tmp_path / "pg"
    handle = start_postgres(pgdata)
    url = handle.url
    try:
        db_url = await asyncio.to_thread(
            services.create_database, services.to_plain_url(url), "faults"
        )
        system = make_system(database_url=db_url)
        await asyncio.to_thread(system.migrate)
        system.create_api_key()
        system.start()
        tally = Tally("postgres-restart")
        stream = JobStream(system, tally, sleep_seconds=0.02)
        submit = asyncio.create_task(stream.run(JOBS, concurrency=6, rate=60, give_up=180))
        await asyncio.sleep(2.5)
        await asyncio.to_thread(handle.stop)
        # While the database is down the API says 503 UNAVAILABLE (never 500).
        statuses = set()
        async with system.client() as client:
            for _ in range(5):
                try:
                    r = await client.post("/v1/pings", json={"message": "while down"})
                    statuses.add(r.status_code)
                    if r.status_code == 503:
                        assert r.json()["error"]["status"] == "UNAVAILABLE"
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        handle = await asyncio.to_thread(start_postgres, pgdata, handle.port)
        tally.faults = 1
        back = time.monotonic()
        await submit
        await stream.verify(timeout=240)
        tally.recover_seconds = time.monotonic() - back
        for code in statuses:
            tally.statuses[code] = tally.statuses.get(code, 0) + 1
        assert statuses == {503}, statuses
        assert tally.server_errors == 0, tally.line()
        _check(tally)
        # Workers and the relay reconnected by themselves (still the first process).
        assert all(w.starts == 1 and w.alive() for w in system.workers)
        assert system.relay.starts == 1 and system.relay.alive()
    finally:
        await asyncio.to_thread(handle.stop)


async def test_api_killed_between_commit_and_publish_loses_nothing_with_production_defaults(
    make_system, database_url
):
    system = make_system(database_url=database_url)
    _production_defaults(system)  # one scenario runs with the settings a deployment gets
    assert "CONVEYOR_OPERATION_LEASE_SECONDS" not in system.env
    system.create_api_key()
    # The API SIGKILLs itself right after the 25th commit, before publishing or answering (the
    # test-only fault seam wraps its after-commit callback).
    system.start(api_env=fault_env(system.env, CONVEYOR_FAULT_KILL_AFTER_COMMITS="25"))
    tally = Tally("api-killed-after-commit")
    stream = JobStream(system, tally, sleep_seconds=0.0)
    submit = asyncio.create_task(stream.run(min(JOBS, 150), concurrency=4, give_up=120))
    await asyncio.to_thread(_wait_exit, system.api.popen, 60)
    assert not system.api.alive(), "the fault hook did not fire"
    assert system.api.popen.returncode == -9
    tally.faults = 1
    system.api.start()  # a supervisor restarts it, without the fault
    system.wait_api()
    back = time.monotonic()
    await submit
    await stream.verify(timeout=120)
    tally.recover_seconds = time.monotonic() - back
    _check(tally)


async def test_beat_leader_killed_the_other_takes_over_and_no_slot_fires_twice(
    make_system, database_url
):
    import secrets
    import sys

    from tests.e2e.test_beat import fired, gaps, leader_holder
    from tests.reliability.harness import Service

    lease_name = f"faults-{secrets.token_hex(3)}"
    system = make_system(database_url=database_url)
    system.env.update(
        {
            "CONVEYOR_SCHEDULES__LEADER_NAME": lease_name,
            "CONVEYOR_SCHEDULES__LEASE_SECONDS": "3",
            "CONVEYOR_SCHEDULES__SYNC_SECONDS": "0.5",
            "CONVEYOR_SCHEDULES__MIN_INTERVAL_SECONDS": "0.5",
        }
    )
    system.create_api_key()
    system.start()
    beats = {
        name: Service(
            name,
            [sys.executable, "-m", "app.cli", "beat", "--name", name],
            system.env,
            system.log_dir,
        ).start()
        for name in ("fi-beat-a", "fi-beat-b")
    }
    system.beats.extend(beats.values())
    for name, beat in beats.items():
        beat.wait_for_log(f"beat {name} started", timeout=60)
    async with system.client() as client:
        response = await client.post(
            "/v1/schedules",
            json={
                "workflow": "platform.ping",
                "args": {"message": "tick"},
                "interval_seconds": 0.5,
                "catch_up": True,
            },
        )
        assert response.status_code == 200, response.text
        schedule = response.json()
        await asyncio.sleep(3)
        holder = await leader_holder(database_url, lease_name)
        assert holder, "no leader"
        leader = holder.split("#")[0]
        survivor = next(n for n in beats if n != leader)
        beats[leader].kill()  # SIGKILL: the lease is not released
        killed_at = time.monotonic()
        new_holder = None
        while time.monotonic() - killed_at < 3 + 10:
            new_holder = await leader_holder(database_url, lease_name)
            if new_holder and new_holder.startswith(survivor):
                break
            await asyncio.sleep(0.1)
        takeover = time.monotonic() - killed_at
        assert new_holder and new_holder.startswith(survivor), new_holder
        # Within a lease period (plus one renewal interval of the survivor and some slack).
        assert takeover <= 3 + 3 / 3 + 1.5, takeover
        await asyncio.sleep(2)
        response = await client.patch(f"/v1/schedules/{schedule['id']}", json={"enabled": False})
        assert response.status_code == 200, response.text
    await asyncio.sleep(1)
    rows = await fired(database_url, schedule["id"])
    tally = Tally("beat-leader-killed")
    fire_times = [r.fire_time for r in rows]
    tally.accepted = len(rows)
    op_ids = [r.operation.rsplit(".", 1)[1] for r in rows if r.operation]
    deadline = time.monotonic() + 60
    states: dict = {}
    while time.monotonic() < deadline:
        got = await query(
            database_url,
            "SELECT o.id::text, o.state,"
            " (SELECT count(*) FROM platform.ping_effects e WHERE e.operation_id = o.id)"
            " FROM platform.operations o WHERE o.id = ANY(CAST(:ids AS uuid[]))",
            ids=op_ids,
        )
        states = {r[0]: (r[1], r[2]) for r in got}
        if sum(1 for s, _ in states.values() if s == "SUCCEEDED") == len(rows):
            break
        await asyncio.sleep(0.3)
    tally.completed = sum(1 for s, _ in states.values() if s == "SUCCEEDED")
    tally.lost = len(rows) - tally.completed
    tally.duplicated = (len(fire_times) - len(set(fire_times))) + sum(
        1 for _, c in states.values() if c > 1
    )
    assert {r.fired_by for r in rows} == {holder, new_holder}, "the survivor never fired"
    assert set(gaps(rows)) == {0.5}, gaps(rows)  # no slot missed, none twice
    _check(tally)
