"""End to end: `conveyor beat` subprocesses firing the schedules table.

- a schedule fires within the expected window and its operation completes on a real worker;
  after downtime a schedule fires once for the missed slots;
- PATCH of the interval over the API changes the firing rate without restarting beat;
- two beats: exactly one fire per slot over 60 slots, only the leader fires;
- kill -9 of the leader: see tests/reliability/test_faults.py (takeover within the lease).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import secrets
import time
from typing import Any

import pytest

from tests.support.ops import query, wait_done

pytestmark = pytest.mark.e2e

LEASE = 3.0
INTERVAL = 0.5


def beat_env() -> dict[str, str]:
    return {
        # A lease of its own: a beat another test killed cannot hold this one.
        "CONVEYOR_SCHEDULES__LEADER_NAME": f"beat-test-{secrets.token_hex(3)}",
        "CONVEYOR_SCHEDULES__LEASE_SECONDS": str(LEASE),
        "CONVEYOR_SCHEDULES__SYNC_SECONDS": "0.5",
        "CONVEYOR_SCHEDULES__MIN_INTERVAL_SECONDS": str(INTERVAL),
    }


def start_beat(stack, name: str, env: dict[str, str]):
    proc = stack.spawn("beat", "--name", name, env=env, name=name)
    proc.wait_for_log(f"beat {name} started", timeout=60)
    return proc


async def create_schedule(stack, **body: Any) -> dict[str, Any]:
    # The in-process API of the stack allows the beats' sub-second test interval too.
    service = stack.app.state.container.schedules
    service.policy = dataclasses.replace(service.policy, min_interval_seconds=INTERVAL)
    payload = {"workflow": "platform.ping", "args": {"message": "beat"}}
    payload.update(body)
    response = await stack.client.post("/v1/schedules", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


async def fired(database_url: str, schedule_id: str) -> list[Any]:
    return await query(
        database_url,
        "SELECT fire_time, fired_by, state, operation, create_time FROM platform.schedule_runs"
        " WHERE schedule_id = :s ORDER BY fire_time",
        s=schedule_id,
    )


async def wait_runs(database_url: str, schedule_id: str, count: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = await fired(database_url, schedule_id)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"only {len(rows)} of {count} runs within {timeout}s")


def gaps(rows: list[Any]) -> list[float]:
    return [(b.fire_time - a.fire_time).total_seconds() for a, b in itertools.pairwise(rows)]


async def leader_holder(database_url: str, lease: str) -> str | None:
    rows = await query(
        database_url,
        "SELECT holder FROM platform.beat_leader WHERE name = :n AND expires_at > now()",
        n=lease,
    )
    return rows[0].holder if rows else None


async def test_beat_fires_in_the_window_once_after_downtime_and_the_operation_completes(
    stack, clean_db, database_url
):
    stack.worker("platform")
    schedule = await create_schedule(stack, interval_seconds=1)
    # Ten missed slots (beat was down): only the latest fires, once.
    [missed_from] = await query(
        database_url,
        "UPDATE platform.schedules SET next_run_time = now() - interval '10.2 seconds'"
        " WHERE id = :s RETURNING next_run_time",
        s=schedule["id"],
    )
    beat = start_beat(stack, "beat-solo", beat_env())
    rows = await wait_runs(database_url, schedule["id"], 4, timeout=30)
    # The ten-plus slots missed while no beat ran fired once, for the latest of them: the
    # first run is that slot (no run for the earlier ones), fired as soon as beat started.
    first = rows[0]
    assert (first.fire_time - missed_from.next_run_time).total_seconds() >= 10, rows
    assert (first.create_time - first.fire_time).total_seconds() < 1.0
    # Then one run per slot (a slot is skipped only if the beat was over a second late).
    assert set(gaps(rows)) <= {1.0, 2.0}, gaps(rows)
    assert gaps(rows).count(1.0) >= len(rows) - 2
    # Each fire happened within the window: at its slot, never before, at most ~1 s late.
    for row in rows:
        late = (row.create_time - row.fire_time).total_seconds()
        assert 0 <= late < 1.5, (row, late)
    # Recorded, then started (the newest may be between the two steps right now).
    rows = await fired(database_url, schedule["id"])
    assert all(r.state == "STARTED" and r.operation for r in rows[:-1]), rows
    done = await wait_done(stack.client, rows[-2].operation, timeout=30)
    assert done["metadata"]["state"] == "SUCCEEDED"
    assert done["response"]["reply"] == "pong: beat"
    shown = (await stack.client.get(f"/v1/schedules/{schedule['id']}")).json()
    assert shown["last_operation"] is not None and shown["last_run_time"] is not None
    log = beat.log()
    assert "beat beat-solo: took leadership" in log
    assert "Traceback" not in log, log
    print(log[-3000:])


async def test_patching_the_interval_changes_the_firing_rate_without_restart(
    stack, clean_db, database_url
):
    schedule = await create_schedule(stack, interval_seconds=2, catch_up=True)
    start_beat(stack, "beat-patch", beat_env())
    await wait_runs(database_url, schedule["id"], 2, timeout=30)
    response = await stack.client.patch(
        f"/v1/schedules/{schedule['id']}", json={"interval_seconds": INTERVAL}
    )
    assert response.status_code == 200, response.text
    patched_at = dt.datetime.now(dt.UTC)
    await asyncio.sleep(3.2)
    rows = await fired(database_url, schedule["id"])
    before = [r for r in rows if r.fire_time < patched_at]
    after = [r for r in rows if r.fire_time > patched_at]
    assert set(gaps(before)) == {2.0}
    assert len(after) >= 4, after
    assert set(gaps(after)) == {INTERVAL}
    assert after[0].fire_time - patched_at <= dt.timedelta(seconds=INTERVAL + 0.2)


async def test_two_beats_fire_each_slot_exactly_once_over_60_slots(stack, clean_db, database_url):
    env = beat_env()
    beats = [start_beat(stack, "beat-one", env), start_beat(stack, "beat-two", env)]
    schedule = await create_schedule(stack, interval_seconds=INTERVAL, catch_up=True)
    rows = await wait_runs(database_url, schedule["id"], 60, timeout=60)
    await asyncio.sleep(1)
    rows = await fired(database_url, schedule["id"])
    # One run per slot: consecutive slots, none missing, none doubled.
    assert len({r.fire_time for r in rows}) == len(rows) >= 60
    assert set(gaps(rows)) == {INTERVAL}
    # Only the leader fired.
    holder = await leader_holder(database_url, env["CONVEYOR_SCHEDULES__LEADER_NAME"])
    assert {r.fired_by for r in rows} == {holder}
    # One operation per slot (the request id of each slot is unique).
    ops = await query(
        database_url,
        "SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM platform.operations"
        " WHERE request_id LIKE :p",
        p=f"schedule:{schedule['id']}:%",
    )
    assert ops[0].n == ops[0].d == len(rows)
    nodes = await query(database_url, "SELECT node, leader FROM platform.beat_nodes")
    assert sorted((n.node, n.leader) for n in nodes if n.node.startswith("beat-")) in (
        [("beat-one", False), ("beat-two", True)],
        [("beat-one", True), ("beat-two", False)],
    )
    assert all(b.popen.poll() is None for b in beats)


# Killing the leader (kill -9) and the handover within the lease are tested with the rest of
# the fault injection: tests/reliability/test_faults.py::
# test_beat_leader_killed_the_other_takes_over_and_no_slot_fires_twice.
