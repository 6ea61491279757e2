"""`conveyor up`'s supervisor kills a child whose liveness heartbeat went stale (alive but hung:
a process that never exits is never restarted), then restarts it; a fresh heartbeat is left
alone (positive control)."""

from __future__ import annotations

import io
import json
import sys
import time

from app.runtime import supervisor
from app.runtime.worker_health import write_heartbeat


def _child(tmp_path, name: str) -> tuple[supervisor.Supervisor, supervisor.Child]:
    sup = supervisor.Supervisor({}, supervisor.Output(io.StringIO()))
    child = supervisor.Child(
        name,
        [sys.executable, "-c", "import time; time.sleep(60)"],
        heartbeat=tmp_path / f"{name}.heartbeat",
        heartbeat_max_age=1.0,
    )
    sup.start(child)
    child.started_at -= 5  # past the start-up grace
    return sup, child


def test_stale_heartbeat_gets_the_child_killed_and_restarted(tmp_path):
    sup, child = _child(tmp_path, "hung")
    first = child.proc
    assert first is not None
    child.heartbeat.write_text(json.dumps({"pid": first.pid, "time": time.time() - 30}))
    assert sup.check() is None
    assert first.wait(10) == -9  # killed
    sup.check()  # reaped: a restart is scheduled with backoff
    assert child.restart_at is not None
    sup.stop()


def test_fresh_heartbeat_leaves_the_child_running(tmp_path):
    sup, child = _child(tmp_path, "fine")
    assert child.proc is not None
    write_heartbeat(child.heartbeat)
    # The heartbeat names this test process (alive); what matters is its age.
    assert sup.check() is None
    time.sleep(0.2)
    assert child.proc.poll() is None
    sup.stop()
