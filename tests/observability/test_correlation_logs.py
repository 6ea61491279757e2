"""A request's X-Request-Id follows the work into the worker's JSON log lines."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.observability.support import json_lines, start_api
from tests.support.ops import wait_state
from tests.support.procs import API_LISTENING

pytestmark = pytest.mark.e2e

# Every success line at INFO (by default only a sample and slow tasks are, see TaskLineFilter).
JSON_LOGS = {"CONVEYOR_LOG_FORMAT": "json", "CONVEYOR_LOG_TASK_SUCCESS_SAMPLE": "1"}


async def test_request_id_follows_one_ping_into_every_worker_log_line_of_its_task(stack):
    api, url = start_api(stack, env=JSON_LOGS)
    worker = stack.worker(env=JSON_LOGS)
    api.wait_for_log(API_LISTENING, timeout=30)
    request_id = f"trace-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=stack.headers) as http:
        response = await http.post(
            "/v1/pings",
            # One deliberate transient failure: the id must also survive Celery's retry message.
            json={"message": "traced", "fail_attempts": 1},
            headers={"X-Request-Id": request_id},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == request_id
        name = response.json()["name"]
        await wait_state(http, name, {"SUCCEEDED"}, timeout=30)
    op_id = name.rsplit(".", 1)[1]

    worker_lines = json_lines(worker.log())
    assert worker_lines, worker.log()[-3000:]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in worker_lines)
    traced = [line for line in worker_lines if line.get("correlation_id") == request_id]
    assert traced, worker.log()[-3000:]
    assert {line.get("operation") for line in traced} == {name}
    assert {line.get("task_id") for line in traced} == {op_id}
    assert {line.get("task_name") for line in traced} == {"platform.ping"}
    messages = " | ".join(line["message"] for line in traced)
    # Celery's own lines, written while the task runs in the pool process: the first attempt's
    # retry, and the second attempt's success (its message no longer has the outbox header).
    assert "retry" in messages, messages
    assert "succeeded" in messages, messages
    assert any(line["process"].startswith("ForkPoolWorker") for line in traced), traced

    api_lines = [line for line in json_lines(api.log()) if line.get("correlation_id") == request_id]
    assert any(
        line.get("http", {}).get("method") == "POST" and line["http"]["path"] == "/v1/pings"
        for line in api_lines
    ), api.log()[-3000:]
