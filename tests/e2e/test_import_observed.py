"""Issue #7, "done means": with ``conveyor up`` running and an import in flight, Flower, the
worker metrics (``conveyor metrics``), the logs and ``conveyor ops watch`` all show the same
operation progressing.

One test, real processes: ``conveyor up`` (API, a worker per domain queue, relay, beat, Flower) on
a database and Redis database index of its own, the ``conveyor metrics`` exporter on ``up``'s data
directory, and ``conveyor ops watch`` as a subprocess. A generated CSV cut into small chunks
(``CONVEYOR_IMPORTS__CHUNK_ROWS``) keeps the import in flight for several seconds; it is uploaded
with a known ``X-Request-Id``, and every view is asked about it while it runs: the API's
operation (progress moving), Flower (the operation's task ``imports.run`` under the operation id
with the progress meta moving, and the ``imports.process_chunk`` tasks naming it), the
exporter (``imports.*`` tasks counted on queue ``imports``), the JSON log lines (the request id
and the operation name on every imports task of it, chord included) and ``conveyor ops watch``
(figures drawn along the way, SUCCEEDED, exit 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.runtime.embedded import find_free_port
from tests.conftest import claim_redis_db
from tests.monitoring.scrape import value
from tests.observability.support import json_lines
from tests.support import services
from tests.support.imports import FIELDS, generate_csv

pytestmark = pytest.mark.e2e

FLOWER_USER = "observer"
ROWS = 60_000
CHUNK_ROWS = 1_000  # 60 chunk tasks: the import stays in flight for several seconds
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Up:
    """``conveyor up`` and the side processes of this test, with their logs."""

    proc: subprocess.Popen[bytes]
    api: str
    flower: str
    metrics: str
    password: str
    env: dict[str, str]
    log_path: pathlib.Path
    tmp: pathlib.Path
    extra: list[tuple[subprocess.Popen[bytes], pathlib.Path]] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        side = "".join(
            f"\n--- {path.name} ---\n{path.read_text(errors='replace')[-2000:]}"
            for _, path in self.extra
        )
        return f"--- up ---\n{self.log()[-5000:]}{side}"

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> pathlib.Path:
        path = self.tmp / f"{name}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                _cli(*args),
                env={**self.env, **(env or {})},
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.extra.append((proc, path))
        return path

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"up exited with {self.proc.returncode}\n{self.tail()}")

    def poll(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_running()
            try:
                result = check()
            except (httpx.TransportError, ValueError, KeyError) as exc:
                result, last = None, exc
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})\n{self.tail()}")


@pytest.fixture
def up(service_env: dict[str, str], admin_url: str, tmp_path: pathlib.Path) -> Iterator[Up]:
    """``conveyor up`` (JSON logs, small import chunks) on its own database and Redis db."""
    db_name = f"conveyor_observed_{secrets.token_hex(4)}"
    database_url = services.create_database(admin_url, db_name)
    broker_url, release_broker = claim_redis_db(service_env["CONVEYOR_BROKER_URL"])
    proc: subprocess.Popen[bytes] | None = None
    instance: Up | None = None
    children: set[int] = set()
    try:
        port, flower_port, metrics_port = find_free_port(), find_free_port(), find_free_port()
        password = secrets.token_urlsafe(16)
        env = {
            **service_env,
            "CONVEYOR_DATABASE_URL": database_url,  # empty: `up` migrates it
            "CONVEYOR_BROKER_URL": broker_url,
            "CONVEYOR_FLOWER_USER": FLOWER_USER,
            "CONVEYOR_FLOWER_PASSWORD": password,
            "CONVEYOR_DATA_DIR": str(tmp_path / "data"),  # import files and worker metrics
            "CONVEYOR_LOG_FORMAT": "json",
            "CONVEYOR_IMPORTS__CHUNK_ROWS": str(CHUNK_ROWS),
        }
        env.pop("CONVEYOR_API_KEY", None)  # the session's key lives in another database
        log_path = tmp_path / "up.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                # --no-metrics: this test starts and watches its own exporter below.
                _cli("up", "--port", str(port), "--flower-port", str(flower_port), "--no-metrics"),
                env=env,
                cwd=tmp_path,  # no stray .env from the repository
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_default_sigint,  # see tests/e2e/test_up.py
            )
        instance = Up(
            proc,
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{flower_port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
            password,
            env,
            log_path,
            tmp_path,
        )
        yield instance
    finally:
        if instance is not None:
            for side, _ in instance.extra:
                if side.poll() is None:
                    side.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    side.wait(10)
        if proc is not None:
            # `up` starts each child in a session of its own: remember them, then Ctrl-C `up`.
            children = _descendants(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            for pid in children:  # whatever did not stop with `up`
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        release_broker()
        services.drop_database(admin_url, db_name)


@dataclass
class Seen:
    """What each view showed while the operation was not done yet."""

    api_done: list[int] = field(default_factory=list)
    flower_progress: list[dict[str, Any]] = field(default_factory=list)
    flower_results: list[dict[str, Any]] = field(default_factory=list)
    flower_chunks: set[str] = field(default_factory=set)
    metrics_chunks: list[float] = field(default_factory=list)


def test_flower_metrics_logs_and_ops_watch_follow_one_import_in_flight(up: Up) -> None:
    started = time.monotonic()
    flower_auth = (FLOWER_USER, up.password)
    exporter_log = up.start("metrics", "metrics", "--port", up.metrics.split(":")[-1].split("/")[0])
    with httpx.Client(timeout=10) as http:
        up.poll("API /readyz 200", lambda: http.get(f"{up.api}/readyz").status_code == 200, 90)

        # Flower learns of a task only from the events it hears: wait for the imports worker.
        def flower_sees_imports_worker() -> bool:
            response = http.get(
                f"{up.flower}/api/workers", params={"status": "true"}, auth=flower_auth
            )
            return response.status_code == 200 and any(
                ok and name.startswith("imports@") for name, ok in response.json().items()
            )

        up.poll("Flower sees the imports worker", flower_sees_imports_worker, 60)
        up.poll(
            "exporter serves /metrics",
            lambda: http.get(up.metrics).status_code == 200,
            30,
        )

        key = subprocess.run(
            _cli("keys", "create", "--scopes", "imports:write,operations:write", "--name", "e2e"),
            env=up.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        http.headers["authorization"] = f"Bearer {key}"

        dataset = http.post(
            f"{up.api}/v1/datasets",
            json={
                "display_name": "Observed orders",
                "key_field": "id",
                "fields": FIELDS,
            },
        )
        assert dataset.status_code == 200, dataset.text
        generated = generate_csv(ROWS, bad_every=1000)
        request_id = f"observed-{uuid.uuid4().hex}"
        response = http.post(
            f"{up.api}/v1/datasets/{dataset.json()['id']}/imports",
            files={"file": ("orders.csv", generated.data, "text/csv")},
            headers={"X-Request-Id": request_id},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == request_id
        name = response.json()["name"]  # operations/imports.<id>
        assert name.startswith("operations/imports."), name
        operation_id = name.removeprefix("operations/")
        task_id = operation_id.removeprefix("imports.")  # imports.run's id, and the progress'

        # `conveyor ops watch` from the start; FORCE_COLOR makes rich draw its live bar as on a
        # terminal, so the figures it showed along the way are in its output.
        watch_log = up.start(
            "watch",
            "ops",
            "watch",
            name,
            "--interval",
            "0.2",
            env={
                "CONVEYOR_API_URL": up.api,
                "CONVEYOR_API_KEY": key,
                "FORCE_COLOR": "1",
                "COLUMNS": "200",
            },
        )
        watch = up.extra[-1][0]

        # ---------------------------------------------------------------- while in flight
        seen = Seen()
        operation: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            up.check_running()
            flower_task = http.get(f"{up.flower}/api/task/info/{task_id}", auth=flower_auth)
            flower_result = http.get(f"{up.flower}/api/task/result/{task_id}", auth=flower_auth)
            chunks = http.get(
                f"{up.flower}/api/tasks",
                params={"taskname": "imports.process_chunk"},
                auth=flower_auth,
            )
            scraped = http.get(up.metrics)
            operation = http.get(f"{up.api}/v1/operations/{operation_id}").json()
            if operation["done"]:
                break  # only what was seen before this counts as "in flight"
            seen.api_done.append(operation["metadata"]["progress"]["done"])
            if flower_task.status_code == 200:
                info = flower_task.json()
                meta = _json_meta(info.get("result"))
                if meta is not None:
                    seen.flower_progress.append({**info, "meta": meta})
            if flower_result.status_code == 200:
                seen.flower_results.append(flower_result.json())
            if chunks.status_code == 200:
                seen.flower_chunks |= {
                    tid for tid, task in chunks.json().items() if task_id in str(task.get("args"))
                }
            if scraped.status_code == 200:
                counted = value(
                    scraped.text,
                    "conveyor_tasks_total",
                    task="imports.process_chunk",
                    queue="imports",
                    state="succeeded",
                )
                seen.metrics_chunks.append(counted or 0)
            time.sleep(0.2)
        assert operation.get("done"), f"import not done in time: {operation}\n{up.tail()}"
        assert operation["metadata"]["state"] == "SUCCEEDED", operation
        result = operation["response"]
        assert (result["rows_total"], result["rows_rejected"]) == (ROWS, ROWS // 1000), result

        # The API: progress moved while it ran (several distinct figures, never backwards).
        moving = [d for d in seen.api_done if 0 < d < ROWS]
        assert len(set(moving)) >= 2, f"no progress seen moving in the API: {seen.api_done}"
        assert seen.api_done == sorted(seen.api_done), seen.api_done

        # Flower: the operation's task in state PROGRESS with its meta, moving, and the chunk
        # tasks. imports.run ends with Ignore after fanning out (no task-succeeded), so the
        # operation stays PROGRESS in Flower until finalize announces SUCCESS.
        assert seen.flower_progress, f"Flower never showed progress for {task_id}\n{up.tail()}"
        metas = [p["meta"] for p in seen.flower_progress]
        assert all(m.get("operation") == name for m in metas), metas
        assert all(m["total"] == ROWS and 0 <= m["done"] <= ROWS for m in metas), metas
        states = {p["state"] for p in seen.flower_progress}
        # Events from several workers may arrive out of order (a late task-started), but the
        # operation never shows an outcome while it is in flight.
        assert "PROGRESS" in states, seen.flower_progress
        assert states <= {"PROGRESS", "STARTED", "RECEIVED"}, seen.flower_progress
        # The result API (the backend) answered for the same id all along.
        assert {r["task-id"] for r in seen.flower_results} == {task_id}, seen.flower_results
        assert seen.flower_progress[-1]["uuid"] == task_id
        assert seen.flower_progress[-1]["name"] == "imports.run", seen.flower_progress[-1]
        assert len({m["done"] for m in metas}) >= 2, metas
        assert len(seen.flower_chunks) >= 2, f"Flower showed no imports.process_chunk: {seen}"

        # Metrics: the imports worker's chunk tasks counted on queue `imports` while in flight,
        # then every chunk (and imports.run, imports.finalize) once it is done.
        assert any(0 < n < ROWS // CHUNK_ROWS for n in seen.metrics_chunks), seen.metrics_chunks
        assert seen.metrics_chunks == sorted(seen.metrics_chunks), seen.metrics_chunks

        def all_counted() -> str | None:
            text = http.get(up.metrics).text
            ok = all(
                value(text, "conveyor_tasks_total", task=t, queue="imports", state="succeeded") == n
                for t, n in (
                    ("imports.process_chunk", ROWS // CHUNK_ROWS),
                    ("imports.run", 1),
                    ("imports.finalize", 1),
                )
            )
            return text if ok else None

        up.poll("every imports task counted", all_counted, 15)

        # Flower at the end: the operation's task (imports.run) with the last figure, all rows.
        def flower_succeeded() -> dict[str, Any] | None:
            info = http.get(f"{up.flower}/api/task/info/{task_id}", auth=flower_auth).json()
            return info if info.get("state") == "SUCCESS" else None

        final = up.poll("Flower shows the import SUCCESS", flower_succeeded, 15)
        assert final["name"] == "imports.run" and final["uuid"] == task_id, final
        assert json.loads(final["result"])["rows_total"] == ROWS, final
        # The result backend under the operation id holds finalize's final counts.
        stored = http.get(f"{up.flower}/api/task/result/{task_id}", auth=flower_auth).json()
        assert stored["state"] == "SUCCESS" and stored["result"]["rows_total"] == ROWS, stored

    # `conveyor ops watch`: progress along the way, SUCCEEDED, exit 0.
    try:
        code = watch.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ops watch did not exit\n{watch_log.read_text(errors='replace')[-3000:]}")
    output = ANSI.sub("", watch_log.read_text(errors="replace"))
    assert code == 0, output[-3000:]
    assert f"watching {name}" in output, output[-3000:]
    assert f"{name}: SUCCEEDED" in output, output[-3000:]
    assert json.loads(output.strip().splitlines()[-1])["rows_total"] == ROWS, output[-3000:]
    figures = {
        int(done) for done, total in re.findall(r"(\d+)/(\d+)", output) if int(total) == ROWS
    }
    assert ROWS in figures and len(figures - {0, ROWS}) >= 1, f"no progress drawn: {figures}"

    # Logs: the worker's JSON lines of this operation carry the request's id and its name.
    lines = json_lines(up.log())
    traced = [line for line in lines if line.get("correlation_id") == request_id]
    assert traced, up.tail()
    imports_lines = [line for line in traced if str(line.get("task_name")).startswith("imports.")]
    assert {line.get("operation") for line in imports_lines} == {name}, imports_lines
    # imports.run comes from the outbox with the request's id in its headers; the messages it
    # sends (the chord: chunks, then finalize) carry the id and the operation on.
    task_names = {line.get("task_name") for line in imports_lines}
    assert {"imports.run", "imports.process_chunk", "imports.finalize"} <= task_names, task_names
    chunk_ids = {line["task_id"] for line in imports_lines if "process_chunk" in line["task_name"]}
    assert len(chunk_ids) == ROWS // CHUNK_ROWS, sorted(chunk_ids)
    # The domain events the import emitted are handled under the same id (webhooks, reports).
    handled = [line for line in traced if str(line.get("task_name")).endswith(".handle_event")]
    assert handled, traced
    assert not any(line.get("operation") for line in handled), handled  # not part of the import
    run_lines = [line for line in traced if line.get("task_name") == "imports.run"]
    assert {line.get("task_id") for line in run_lines} == {task_id}, run_lines
    assert any(line.get("http", {}).get("path", "").endswith("/imports") for line in traced), (
        "the API's access line of the upload carries the id too"
    )
    assert "Traceback" not in up.log(), up.tail()
    assert "Traceback" not in exporter_log.read_text(errors="replace")
    assert time.monotonic() - started < 60, "keep it under a minute"


def _json_meta(result: Any) -> dict[str, Any] | None:
    """The progress meta in a Flower task's ``result`` (a JSON object naming an operation)."""
    if not isinstance(result, str):
        return None
    try:
        meta = json.loads(result)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and "operation" in meta else None
