"""RabbitMQ works by URL: the same ping slice with `amqp://` as the broker (no Redis at all)."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

from app.celery_app import create_celery
from app.config import DOMAINS
from app.main import create_app
from tests.support.ops import wait_state

pytestmark = pytest.mark.e2e

AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _reachable(), reason="no RabbitMQ on 127.0.0.1:5672 (optional broker)")
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
