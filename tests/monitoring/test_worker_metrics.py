"""Worker-side task metrics: a real prefork worker subprocess writes multiprocess files, the
`conveyor metrics` exporter subprocess merges and serves them."""

from __future__ import annotations

import secrets
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from app.runtime.embedded import find_free_port
from tests.monitoring.scrape import scrape, scrape_until, value
from tests.support.ops import wait_state
from tests.support.procs import Proc


@pytest.fixture
def children(tmp_path) -> Iterator[Any]:
    started: list[Proc] = []

    def start(code: str, env: dict[str, str], name: str) -> Proc:
        child = Proc([], env, tmp_path / f"{name}.log", argv=[sys.executable, "-c", code])
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


def worker_code(node: str) -> str:
    # What `conveyor worker` does once app/cli/__init__.py calls setup_worker_metrics() and
    # app/adapters/celery_app.py lists monitoring.worker_metrics in TASK_MODULES (both idempotent here).
    return (
        "from app.cli.metrics import setup_worker_metrics\n"
        f"setup_worker_metrics({node!r})\n"
        "import monitoring.worker_metrics\n"
        "from app.cli import main\n"
        f"main(['worker', '--queues', 'platform', '--concurrency', '2', '--pool', 'prefork',"
        f" '--name', {node!r}])\n"
    )


async def test_exporter_serves_task_counts_of_every_prefork_child(stack, children, tmp_path):
    metrics_dir = tmp_path / "metrics"
    env = {**stack.env, "CONVEYOR_METRICS_DIR": str(metrics_dir)}
    node = f"platform-{secrets.token_hex(3)}@%h"
    worker = children(worker_code(node), env, "worker")
    port = find_free_port()
    exporter = children(
        f"from app.cli.metrics import metrics\nmetrics(['--port', '{port}'])\n", env, "exporter"
    )
    worker.wait_for_log(" ready.", timeout=60)
    assert "worker metrics: writing to" in worker.log()
    exporter.wait_for_log("conveyor: metrics on http://127.0.0.1:", timeout=30)
    url = f"http://127.0.0.1:{port}/metrics"

    ok = [
        (await stack.client.post("/v1/pings", json={"message": f"m{i}"})).json() for i in range(4)
    ]
    flaky = (await stack.client.post("/v1/pings", json={"message": "f", "fail_attempts": 1})).json()
    for op in [*ok, flaky]:
        done = await wait_state(stack.client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=30)
        assert done["metadata"]["state"] == "SUCCEEDED", done

    ping = {"task": "platform.ping", "queue": "platform"}

    def succeeded(text: str) -> float | None:
        return value(text, "conveyor_tasks_total", **ping, state="succeeded")

    text = await scrape_until(url, lambda t: succeeded(t) == 5)
    assert succeeded(text) == 5, text
    assert value(text, "conveyor_tasks_total", **ping, state="started") == 6
    assert value(text, "conveyor_tasks_total", **ping, state="retried") == 1
    assert value(text, "conveyor_task_runtime_seconds_count", **ping) == 6
    assert (value(text, "conveyor_task_runtime_seconds_sum", **ping) or 0) > 0
    files = list(metrics_dir.glob("*/counter_*.db"))
    assert files, "no per-process files: multiprocess mode is not on in the pool"
    assert {f.parent.name for f in files} == {node.replace("%h", socket.gethostname())}

    # The pool children exit with the worker: their totals stay.
    assert worker.stop() == 0, worker.log()[-2000:]
    after = await scrape(url)
    assert succeeded(after) == 5
    assert "Traceback" not in worker.log()


def test_failed_task_is_counted_with_its_queue_from_the_task_name():
    """task_failure, through Celery's own local execution (no broker involved)."""
    from prometheus_client import REGISTRY

    import monitoring.worker_metrics  # noqa: F401  (connects the handlers)

    app = Celery("metrics-test", set_as_current=False)

    @app.task(name="imports.metrics_test_boom")
    def boom() -> None:
        raise RuntimeError("boom")

    labels = {"task": "imports.metrics_test_boom", "queue": "imports"}
    before = REGISTRY.get_sample_value("conveyor_tasks_total", {**labels, "state": "failed"}) or 0
    result = boom.apply()
    assert result.failed()
    assert REGISTRY.get_sample_value("conveyor_tasks_total", {**labels, "state": "failed"}) == (
        before + 1
    )
    assert REGISTRY.get_sample_value("conveyor_task_runtime_seconds_count", labels) >= 1
