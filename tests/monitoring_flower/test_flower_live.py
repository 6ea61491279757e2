"""Real Flower (``conveyor flower``) against a real prefork worker, read through its HTTP API.

Each test runs on the ``stack`` fixture: a Redis database of its own, so Flower hears only this
test's worker and tasks.
"""

from __future__ import annotations

import ast
import asyncio
import json
import pathlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.adapters.celery_app import create_celery
from app.runtime.embedded import find_free_port
from monitoring.redaction import task_reprs
from tests.support.ops import op_path, wait_state

pytestmark = pytest.mark.e2e

USER = "flower-test"


async def _poll(
    what: str, check: Callable[[], Awaitable[Any]], timeout: float, log: Callable[[], str]
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = await check()
        except httpx.TransportError as exc:
            result, last = None, exc
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})\n{log()[-4000:]}")


def _cmdline(pid: int) -> bytes:
    path = pathlib.Path(f"/proc/{pid}/cmdline")
    return path.read_bytes() if path.exists() else b""


class Flower:
    """A running ``conveyor flower`` and an HTTP client on it."""

    def __init__(self, stack: Any) -> None:
        self.password = secrets.token_urlsafe(12)
        self.url = f"http://127.0.0.1:{find_free_port()}"
        self.proc = stack.spawn(
            "flower",
            "--port",
            self.url.rsplit(":", 1)[1],
            env={"CONVEYOR_FLOWER_USER": USER, "CONVEYOR_FLOWER_PASSWORD": self.password},
            name="flower",
        )
        self.http = httpx.AsyncClient(base_url=self.url, auth=(USER, self.password), timeout=5)

    def log(self) -> str:
        return self.proc.log()

    async def started(self) -> None:
        async def up() -> bool:
            if self.proc.popen.poll() is not None:
                raise AssertionError(f"flower exited:\n{self.log()[-4000:]}")
            return (await self.http.get("/healthcheck")).status_code == 200

        await _poll("Flower answers", up, 30, self.log)

    async def sees_worker(self, worker: Any) -> None:
        # Flower learns of a task only from events it hears: let it hear this worker first.
        async def alive() -> bool:
            response = await self.http.get("/api/workers", params={"status": "true"})
            return response.status_code == 200 and any(response.json().values())

        await _poll("Flower sees the worker", alive, 30, lambda: self.log() + worker.log())

    async def task(self, task_id: str) -> dict[str, Any] | None:
        response = await self.http.get(f"/api/task/info/{task_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def flower(stack: Any) -> Any:
    instance = Flower(stack)
    try:
        await instance.started()
        yield instance
    finally:
        await instance.http.aclose()


async def test_flower_shows_a_ping_with_its_progress_meta_then_success(stack, flower):
    worker = stack.worker(queues="platform", concurrency=2)
    await flower.sees_worker(worker)
    # Housekeeping sent first on the same queue: it runs, but Flower must not list it.
    housekeeping = create_celery(stack.settings, results=False).send_task(  # as the outbox does
        "platform.sweep", queue="platform", routing_key="platform"
    )

    response = await stack.client.post(
        "/v1/pings", json={"message": "flower", "sleep_seconds": 4, "steps": 8}
    )
    assert response.status_code == 200, response.text
    name = response.json()["name"]
    task_id = op_path(name).split(".", 1)[1]

    # While it runs: state PROGRESS, and the progress meta (JSON) as the task's result.
    progress: list[dict[str, Any]] = []

    async def running() -> dict[str, Any] | None:
        task = await flower.task(task_id)
        if task and task["state"] == "PROGRESS":
            progress.append(json.loads(task["result"]))
            if progress[-1]["done"] >= 2:
                return task
        if task and task["state"] == "SUCCESS":
            raise AssertionError(
                f"SUCCESS before any PROGRESS was seen: {task}\n{worker.log()[-3000:]}"
            )
        return None

    task = await _poll("PROGRESS in Flower", running, 20, lambda: flower.log() + worker.log())
    assert task["name"] == "platform.ping"
    assert task["uuid"] == task_id
    meta = progress[-1]
    assert meta["total"] == 8 and 2 <= meta["done"] < 8, meta
    # Readable first: "2/8 (25%)".
    assert next(iter(meta)) == "progress", meta
    assert meta["progress"] == f"{meta['done']}/8 ({100 * meta['done'] // 8}%)", meta
    assert meta["operation"] == name
    assert task["worker"].startswith("platform-"), task
    page = await flower.http.get(f"/task/{task_id}")  # the task page a person looks at
    assert page.status_code == 200
    assert "PROGRESS" in page.text and "&quot;total&quot;: 8" in page.text, page.text

    async def succeeded() -> dict[str, Any] | None:
        task = await flower.task(task_id)
        return task if task and task["state"] == "SUCCESS" else None

    task = await _poll("SUCCESS in Flower", succeeded, 20, lambda: flower.log() + worker.log())
    assert task["name"] == "platform.ping"
    assert task["uuid"] == task_id
    assert "pong: flower" in task["result"]
    # Named, not a bare UUID: the operation and what the ping was asked.
    assert task["args"] == "()", task
    shown = ast.literal_eval(task["kwargs"])
    assert shown == {"operation": name, "message": "flower", "steps": "8"}, task
    assert housekeeping.id not in (await flower.http.get("/api/tasks")).json()
    assert "platform.sweep" not in (await flower.http.get("/tasks")).text
    assert f"Task platform.sweep[{housekeeping.id}] received" not in worker.log()
    done = await wait_state(stack.client, name, {"SUCCEEDED"}, timeout=10)
    assert done["metadata"]["progress"]["done"] == 8

    # The list of tasks holds it too, by its natural name.
    listed = (await flower.http.get("/api/tasks", params={"taskname": "platform.ping"})).json()
    assert task_id in listed

    # SIGTERM (what `up` sends) ends Flower promptly, with a worker connected; it used to
    # linger about 15 s waiting for its executor threads.
    started = time.monotonic()
    flower.proc.popen.terminate()
    code = await asyncio.to_thread(flower.proc.popen.wait, 30)
    assert time.monotonic() - started < 8, flower.log()[-2000:]
    assert code == 0, flower.log()[-2000:]


async def test_flower_refuses_requests_without_the_right_credentials(flower):
    async with httpx.AsyncClient(base_url=flower.url, timeout=5) as anonymous:
        assert (await anonymous.get("/api/tasks")).status_code == 401
        assert (await anonymous.get("/api/workers")).status_code == 401
        assert (await anonymous.get(f"/api/task/info/{uuid.uuid4()}")).status_code == 401
        wrong = await anonymous.get("/api/tasks", auth=(USER, flower.password + "x"))
        assert wrong.status_code == 401
        # Flower's own /metrics (task names, workers) is behind the same credentials...
        metrics = await anonymous.get("/metrics")
        assert metrics.status_code == 401 and "Basic" in metrics.headers["www-authenticate"]
        assert (await anonymous.get("/metrics", auth=(USER, "wrong"))).status_code == 401
        # ... while the liveness probe stays open.
        assert (await anonymous.get("/healthcheck")).text == "OK"
    assert (await flower.http.get("/api/tasks")).status_code == 200
    authorized = await flower.http.get("/metrics")
    assert authorized.status_code == 200 and "flower_" in authorized.text
    # The password is read from the settings by flowerconfig, not passed on a command line.
    assert flower.password.encode() not in _cmdline(flower.proc.popen.pid)


async def test_flower_shows_secret_looking_task_args_redacted(stack, flower):
    worker = stack.worker(queues="platform", concurrency=1)
    await flower.sees_worker(worker)

    # Published as the outbox does: a publish-only app, redacted argsrepr/kwargsrepr.
    values = {
        "webhook": "whsec_" + secrets.token_hex(8),
        "key": "key_" + secrets.token_hex(8),
        "url": "urlpw" + secrets.token_hex(8),
        "bearer": "tok" + secrets.token_hex(8),
    }
    task_id = str(uuid.uuid4())
    args = [task_id]
    kwargs = {
        "webhook_secret": values["webhook"],
        "api_key": values["key"],
        "target": {
            "url": f"https://hooks:{values['url']}@hooks.example/in",
            "headers": {"Authorization": f"Bearer {values['bearer']}"},
        },
    }
    argsrepr, kwargsrepr = task_reprs(args, kwargs)
    publisher = create_celery(stack.settings, results=False)
    try:
        publisher.send_task(
            "platform.ping",
            args=args,
            kwargs=kwargs,
            task_id=task_id,
            queue="platform",
            routing_key="platform",
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            retry=False,
        )
    finally:
        publisher.close()

    # platform.ping takes no such kwargs, so the worker fails it: what matters here is what
    # Flower (and the worker's log) learned of the arguments from the message.
    async def finished() -> dict[str, Any] | None:
        task = await flower.task(task_id)
        return task if task and task["state"] in ("SUCCESS", "FAILURE") else None

    task = await _poll("task done in Flower", finished, 20, lambda: flower.log() + worker.log())
    assert task["name"] == "platform.ping"
    assert task["args"] == repr([task_id])
    assert "'webhook_secret': '***'" in task["kwargs"], task["kwargs"]
    assert "'api_key': '***'" in task["kwargs"]
    assert "https://hooks:***@hooks.example/in" in task["kwargs"]
    assert "'Authorization': '***'" in task["kwargs"]
    shown = json.dumps(task) + (await flower.http.get("/api/tasks")).text
    leaked = [name for name, value in values.items() if value in shown]
    assert not leaked, f"secrets shown by Flower: {leaked}\n{shown}"
    worker_log = worker.log()
    assert task_id in worker_log
    assert not [name for name, value in values.items() if value in worker_log], worker_log


async def test_insecure_dev_flower_runs_without_auth_and_says_so(stack):
    port = find_free_port()
    proc = stack.spawn("flower", "--port", str(port), "--insecure-dev", name="flower-insecure")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as anonymous:

        async def up() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"flower exited:\n{proc.log()[-4000:]}")
            return (await anonymous.get("/tasks")).status_code == 200

        # The UI opens without a password; Flower keeps its HTTP API closed unless
        # FLOWER_UNAUTHENTICATED_API is set, which --insecure-dev does not do.
        await _poll("Flower UI answers without auth", up, 30, proc.log)
        assert (await anonymous.get("/api/tasks")).status_code == 401
    assert "WITHOUT authentication (--insecure-dev)" in proc.log()


async def test_persistent_flower_keeps_its_state_in_the_data_dir(stack, tmp_path):
    data = tmp_path / "data"
    port = find_free_port()
    password = secrets.token_urlsafe(8)
    proc = stack.spawn(
        "flower",
        "--port",
        str(port),
        env={
            "CONVEYOR_FLOWER_USER": USER,
            "CONVEYOR_FLOWER_PASSWORD": password,
            "CONVEYOR_FLOWER_PERSISTENT": "true",
            "CONVEYOR_DATA_DIR": str(data),
        },
        name="flower-persistent",
    )
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", auth=(USER, password), timeout=5
    ) as http:

        async def up() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"flower exited:\n{proc.log()[-4000:]}")
            return (await http.get("/api/tasks")).status_code == 200

        await _poll("Flower answers", up, 30, proc.log)
    proc.stop()  # SIGTERM: Flower saves its state on the way out
    assert proc.popen.returncode == 0, proc.log()[-4000:]
    assert sorted(path.name for path in data.glob("flower.db*")), proc.log()[-4000:]
