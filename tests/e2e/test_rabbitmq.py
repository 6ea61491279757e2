"""RabbitMQ works by URL: the same ping slice with `amqp://` as the broker (no Redis at all)."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

from app.adapters.celery_app import create_celery
from app.config import DOMAINS
from app.main import create_app
from tests.support.ops import wait_state
from tests.support.services import needs_service

pytestmark = pytest.mark.e2e

AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@needs_service(_reachable(), "no RabbitMQ on 127.0.0.1:5672")
async def test_ping_goes_through_rabbitmq_broker(settings, service_env, spawn, auth_headers):
    amqp = settings.model_copy(update={"broker_url": AMQP_URL, "result_backend": None})
    celery = create_celery(amqp)
    with celery.connection_for_write() as conn:
        for queue in celery.conf.task_queues:
            queue(conn.default_channel).declare()
            queue(conn.default_channel).purge()
    worker = spawn(
        "worker",
        "--queues",
        "platform",
        "--concurrency",
        "1",
        env={"CONVEYOR_BROKER_URL": AMQP_URL},
        name="worker-amqp",
    )
    worker.wait_for_log(" ready.", timeout=60)
    assert "amqp://guest:**@127.0.0.1:5672//" in worker.log()
    app = create_app(amqp, celery=celery)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers=auth_headers
    ) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        op = (await client.post("/v1/pings", json={"message": "rabbit", "steps": 2})).json()
        done = await wait_state(client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=60)
    await app.state.container.registry.dispose()
    assert done["metadata"]["state"] == "SUCCEEDED", done
    assert done["response"]["reply"] == "pong: rabbit"
    assert set(DOMAINS) <= {q.name for q in celery.conf.task_queues}


@needs_service(_reachable(), "no RabbitMQ on 127.0.0.1:5672")
async def test_import_fans_out_over_rabbitmq_without_a_result_backend(
    settings, service_env, spawn, auth_headers, tmp_path
):
    # No result backend: Celery cannot count a chord, so each chunk links the callback and the
    # database decides when the import is complete.
    from tests.support.imports import create_dataset, generate_csv, upload

    env = {
        "CONVEYOR_BROKER_URL": AMQP_URL,
        "CONVEYOR_RESULT_BACKEND": "",
        "CONVEYOR_IMPORTS__CHUNK_ROWS": "500",
        "CONVEYOR_IMPORTS__STORAGE_DIR": str(tmp_path / "files"),
    }
    # A deep copy: the session's settings (shared with its in-process worker) stay untouched.
    imports = settings.imports.model_copy(
        update={"storage_dir": str(tmp_path / "files"), "chunk_rows": 500}
    )
    amqp = settings.model_copy(
        update={"broker_url": AMQP_URL, "result_backend": None, "imports": imports}
    )
    celery = create_celery(amqp)
    assert celery.conf.result_backend is None
    with celery.connection_for_write() as conn:
        for queue in celery.conf.task_queues:
            queue(conn.default_channel).declare()
            queue(conn.default_channel).purge()
    worker = spawn(
        "worker", "--queues", "imports", "--concurrency", "2", env=env, name="worker-amqp-imports"
    )
    worker.wait_for_log(" ready.", timeout=60)
    app = create_app(amqp, celery=celery)
    csv = generate_csv(2_000, bad_every=100)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=auth_headers
        ) as client:
            dataset = await create_dataset(client)
            dataset_id = dataset["name"].rsplit("/", 1)[1]
            response = await upload(client, dataset_id, csv.data)
            assert response.status_code == 200, response.text
            op = response.json()
            done = await wait_state(client, op["name"], {"SUCCEEDED", "FAILED"}, timeout=90)
    finally:
        await app.state.container.registry.dispose()
    assert done["metadata"]["state"] == "SUCCEEDED", done
    assert done["response"]["rows_accepted"] == len(csv.expected)
    assert done["response"]["rows_rejected"] == len(csv.bad_lines)
