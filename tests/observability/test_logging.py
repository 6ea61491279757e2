"""Structured logging: the formatters, the context filter, and the Celery header plumbing."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery.app.task import Context

from monitoring import logging as conveyor_logging


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(conveyor_logging.JsonFormatter())
    handler.addFilter(conveyor_logging.ContextFilter())
    logger = logging.getLogger("conveyor.test.structured")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buffer, handler
    logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "text"),
        ({"CONVEYOR_ENV": "prod"}, "json"),
        ({"CONVEYOR_ENV": "dev", "CONVEYOR_LOG_FORMAT": "JSON"}, "json"),
        ({"CONVEYOR_ENV": "prod", "CONVEYOR_LOG_FORMAT": "text"}, "text"),
    ],
)
def test_log_format_is_json_in_prod_and_text_elsewhere_unless_set(env, expected):
    assert conveyor_logging.log_format(env) == expected


def test_invalid_log_format_names_the_variable():
    with pytest.raises(ValueError, match="CONVEYOR_LOG_FORMAT: must be json or text"):
        conveyor_logging.log_format({"CONVEYOR_LOG_FORMAT": "yaml"})


def test_json_line_carries_bound_context_and_exception_on_one_line(capture):
    logger, buffer, _ = capture
    with conveyor_logging.bind(correlation_id="req-1", operation="operations/platform.x"):
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            logger.exception("failed %s", "here")
    logger.info("outside")
    assert len(buffer.getvalue().splitlines()) == 2
    inside, outside = lines(buffer)
    assert inside["message"] == "failed here"
    assert inside["level"] == "ERROR"
    assert inside["logger"] == "conveyor.test.structured"
    assert inside["time"].endswith("Z")
    assert inside["correlation_id"] == "req-1"
    assert inside["operation"] == "operations/platform.x"
    assert inside["exc_type"] == "RuntimeError"
    assert "Traceback" in inside["exc_info"] and "boom" in inside["exc_info"]
    assert "correlation_id" not in outside and "operation" not in outside


def test_registered_request_id_is_used_unless_a_correlation_id_is_bound(capture):
    logger, buffer, _ = capture
    request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default=None)
    conveyor_logging.add_correlation_source(request_id)
    token = request_id.set("http-42")
    try:
        logger.info("in a request")
        with conveyor_logging.bind(correlation_id="explicit"):
            logger.info("bound")
    finally:
        request_id.reset(token)
    assert [line.get("correlation_id") for line in lines(buffer)] == ["http-42", "explicit"]


def test_context_reaches_coroutines_run_on_the_runtime_loop_thread(capture):
    """tasks.runtime hands services to a loop in another thread with run_coroutine_threadsafe,
    which runs them in a copy of the caller's context: the task's fields reach their lines."""
    logger, buffer, _ = capture
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def service_call() -> None:
        await asyncio.sleep(0)
        logger.info("in the service")

    try:
        with conveyor_logging.bind(correlation_id="task-cid", task_id="t1"):
            asyncio.run_coroutine_threadsafe(service_call(), loop).result(5)
        asyncio.run_coroutine_threadsafe(service_call(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    inside, outside = lines(buffer)
    assert inside["correlation_id"] == "task-cid" and inside["task_id"] == "t1"
    assert "correlation_id" not in outside


def test_text_format_appends_the_context():
    record = logging.LogRecord("tasks.base", logging.INFO, __file__, 1, "hello", None, None)
    with conveyor_logging.bind(correlation_id="c1", task_id="t1", task_name="platform.ping"):
        conveyor_logging.ContextFilter().filter(record)
    text = conveyor_logging.TextFormatter().format(record)
    assert text.endswith("tasks.base: hello [correlation_id=c1 task=platform.ping[t1]]")


def test_worker_keeps_the_outbox_correlation_id_that_celery_overwrites(capture):
    """Celery puts the message property correlation_id (the task id) over our header of the
    same name; the task_received hook keeps ours under conveyor_correlation_id, which
    task.request exposes and Celery copies into a retry's headers."""
    logger, buffer, _ = capture
    task_id = "01a2-task"
    headers = {"id": task_id, "correlation_id": "req-7", "operation": "operations/platform.1"}
    # What celery.worker.request.Request builds from the message.
    request_dict = {**headers, "correlation_id": task_id, "task": "platform.ping"}
    request = SimpleNamespace(
        id=task_id, message=SimpleNamespace(headers=headers), request_dict=request_dict
    )
    conveyor_logging._on_task_received(request=request)
    assert request_dict[conveyor_logging.CORRELATION_HEADER] == "req-7"

    context = Context(request_dict)
    assert context.correlation_id == task_id  # why the hook exists
    assert context.headers == {
        "operation": "operations/platform.1",
        conveyor_logging.CORRELATION_HEADER: "req-7",
    }  # carried into retries by signature_from_request(headers=request.headers)
    task = SimpleNamespace(name="platform.ping", request=context)
    conveyor_logging._on_task_prerun(task_id=task_id, task=task)
    try:
        logger.info("working")
    finally:
        conveyor_logging._on_task_postrun(task_id=task_id, task=task)
    logger.info("after")
    # Celery's own main-process line about the task (record.data), outside any task context.
    logger.info(
        "Task %(name)s[%(id)s] received",
        {"id": task_id, "name": "platform.ping"},
        extra={"data": {"id": task_id, "name": "platform.ping"}},
    )
    working, after, received = lines(buffer)
    assert working["correlation_id"] == "req-7"
    assert working["operation"] == "operations/platform.1"
    assert (working["task_id"], working["task_name"]) == (task_id, "platform.ping")
    assert not {"correlation_id", "task_id"} & after.keys()
    assert received["correlation_id"] == "req-7" and received["task_id"] == task_id


def _access(method: str, path: str) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", method, path, "1.1", 200),
        None,
    )


@pytest.mark.parametrize(
    ("method", "path", "kept"),
    [
        ("POST", "/v1/operations/platform.0192:wait", False),  # `conveyor ops watch` polls
        ("GET", "/v1/operations/platform.0192", False),
        ("GET", "/readyz", False),
        ("POST", "/v1/pings", True),
        ("GET", "/v1/operations?page_size=5", True),  # a list is not a poll
    ],
)
def test_poll_access_lines_are_debug_not_info(method: str, path: str, kept: bool) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        record = _access(method, path)
        assert conveyor_logging.PollAccessFilter().filter(record) is kept
        assert record.levelno == (logging.INFO if kept else logging.DEBUG)
        root.setLevel(logging.DEBUG)  # at DEBUG every line is still there
        assert conveyor_logging.PollAccessFilter().filter(_access(method, path)) is True
    finally:
        root.setLevel(level)


def _task_line(logger: str, msg: str, **args: object) -> logging.LogRecord:
    record = logging.LogRecord(logger, logging.INFO, __file__, 1, msg, None, None)
    record.args = args  # Celery logs its task lines with one dict of arguments
    return record


def test_routine_task_lines_are_debug_but_slow_sampled_and_retries_stay_info() -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    success = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"
    try:
        quiet = conveyor_logging.TaskLineFilter({"CONVEYOR_LOG_TASK_SUCCESS_SAMPLE": "0"})
        fast = _task_line("celery.app.trace", success, name="t", id="a", runtime=0.01)
        assert quiet.filter(fast) is False and fast.levelno == logging.DEBUG
        received = _task_line("celery.worker.strategy", "Task %(name)s[%(id)s] received", id="a")
        assert quiet.filter(received) is False
        slow = _task_line("celery.app.trace", success, name="t", id="a", runtime=60.0)
        assert quiet.filter(slow) is True and slow.levelno == logging.INFO
        retry = _task_line("celery.app.trace", "Task %(name)s[%(id)s] retry: %(exc)s", exc="x")
        assert quiet.filter(retry) is True
        # A sample keeps some success lines at INFO, the same ids in every process.
        half = conveyor_logging.TaskLineFilter({"CONVEYOR_LOG_TASK_SUCCESS_SAMPLE": "0.5"})
        kept = [
            half.filter(_task_line("celery.app.trace", success, id=f"id-{i}", runtime=0.01))
            for i in range(400)
        ]
        assert 120 < sum(kept) < 280
        again = [
            half.filter(_task_line("celery.app.trace", success, id=f"id-{i}", runtime=0.01))
            for i in range(400)
        ]
        assert again == kept
        root.setLevel(logging.DEBUG)  # at DEBUG every line is there
        assert quiet.filter(_task_line("celery.app.trace", success, id="a", runtime=0.01))
    finally:
        root.setLevel(level)


def test_task_line_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="CONVEYOR_LOG_TASK_SUCCESS_SAMPLE"):
        conveyor_logging.TaskLineFilter({"CONVEYOR_LOG_TASK_SUCCESS_SAMPLE": "2"})
    # Every handler Conveyor installs (API, worker, relay, beat) carries the filter.
    handler = conveyor_logging.make_handler("text")
    assert any(isinstance(f, conveyor_logging.TaskLineFilter) for f in handler.filters)


def test_a_dropped_task_line_never_binds_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker builds a "succeeded" record per task; most are dropped: binding the context
    # of those first was half of their cost.
    bound: list[str] = []
    original = conveyor_logging.ContextFilter.filter

    def counting(self: conveyor_logging.ContextFilter, record: logging.LogRecord) -> bool:
        bound.append(record.getMessage())
        return original(self, record)

    monkeypatch.setattr(conveyor_logging.ContextFilter, "filter", counting)
    monkeypatch.setenv("CONVEYOR_LOG_TASK_SUCCESS_SAMPLE", "0")
    handler = conveyor_logging.make_handler("text")
    handler.setStream(io.StringIO())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    success = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"
    try:
        routine = _task_line(
            "celery.app.trace", success, name="t", id="a", runtime=0.01, return_value=None
        )
        slow = _task_line(
            "celery.app.trace", success, name="t", id="b", runtime=60.0, return_value=None
        )
        handler.handle(routine)
        handler.handle(slow)  # positive control: a kept line is bound
    finally:
        root.setLevel(level)
    assert bound == ["Task t[b] succeeded in 60.0s: None"]


def _probe(source: str, level: str) -> subprocess.CompletedProcess[str]:
    """Runs ``source`` with the log level as its argument, in a process of its own (logging
    setup is process-wide)."""
    done = subprocess.run(
        [sys.executable, "-c", source, level], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


_HTTPX_PROBE = """
import sys
import httpx
from monitoring import logging as conveyor_logging

conveyor_logging.setup("worker", level=sys.argv[1], fmt="text")
transport = httpx.MockTransport(lambda request: httpx.Response(200))
with httpx.Client(transport=transport) as client:
    client.post("http://receiver.test/hook")
"""


@pytest.mark.parametrize(("level", "logged"), [("INFO", False), ("DEBUG", True)])
def test_httpx_request_lines_only_at_debug(level: str, logged: bool) -> None:
    # One INFO line per webhook POST was noise (the attempt is in PostgreSQL) and CPU.
    done = _probe(_HTTPX_PROBE, level)
    assert ("HTTP Request: POST http://receiver.test/hook" in done.stderr) is logged
    config = conveyor_logging.uvicorn_log_config(level)
    assert config["loggers"]["httpx"]["level"] == ("DEBUG" if logged else "WARNING")


_RECEIVED_PROBE = """
import logging, sys
from monitoring import logging as conveyor_logging

conveyor_logging.setup("worker", level=sys.argv[1], fmt="text")
strategy = logging.getLogger("celery.worker.strategy")
print(strategy.isEnabledFor(logging.INFO), strategy.isEnabledFor(logging.ERROR))
"""


@pytest.mark.parametrize(("level", "built"), [("INFO", False), ("DEBUG", True)])
def test_received_lines_are_not_built_unless_debug(level: str, built: bool) -> None:
    # Celery's strategy builds its "Received task" record only if INFO is enabled on its
    # logger; at INFO TaskLineFilter would turn it to DEBUG and drop it (wasted work).
    done = _probe(_RECEIVED_PROBE, level)
    assert done.stdout.split() == [str(built), "True"]  # errors are always logged
