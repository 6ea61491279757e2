"""`conveyor metrics` gauges read at scrape time: queue depth, outbox backlog and age,
operations by state (real Redis, RabbitMQ and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator

import pytest

from app.cli.metrics import Exporter
from app.config import DOMAINS
from app.status.sources import queue_depths
from tests.monitoring.scrape import scrape, value
from tests.support.ops import op_path
from tests.support.services import needs_service


@pytest.fixture
async def exporter_url(stack, tmp_path) -> AsyncIterator[str]:
    """The exporter on the stack's broker database and the session database, on a free port."""
    exporter = Exporter(stack.settings, tmp_path / "metrics", timeout=3.0)
    port = exporter.serve("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}/metrics"
    await asyncio.to_thread(exporter.close)


async def test_queue_depth_counts_messages_waiting_in_each_domain_queue(stack, exporter_url):
    for i in range(3):
        assert (await stack.client.post("/v1/pings", json={"message": f"q{i}"})).status_code == 200
    await stack.app.state.publisher.drain()
    assert stack.redis.llen("platform") == 3

    text = await scrape(exporter_url)
    assert value(text, "conveyor_queue_depth", queue="platform") == 3
    for domain in set(DOMAINS) - {"platform"}:
        assert value(text, "conveyor_queue_depth", queue=domain) == 0
    assert value(text, "conveyor_exporter_source_up", source="queues") == 1


async def test_outbox_backlog_and_oldest_age_follow_unsent_rows(stack, exporter_url, clean_db):
    stack.app.state.publisher.enabled = False  # no fast path: rows stay unsent
    for i in range(2):
        assert (await stack.client.post("/v1/pings", json={"message": f"o{i}"})).status_code == 200
    await asyncio.sleep(1.2)

    text = await scrape(exporter_url)
    assert value(text, "conveyor_outbox_backlog", domain="platform") == 2
    assert value(text, "conveyor_outbox_oldest_unsent_age_seconds", domain="platform") >= 1.0
    assert value(text, "conveyor_outbox_backlog", domain="imports") == 0
    assert value(text, "conveyor_outbox_oldest_unsent_age_seconds", domain="imports") == 0
    assert value(text, "conveyor_exporter_source_up", source="outbox") == 1

    assert await stack.app.state.publisher.relay_once() == 2
    text = await scrape(exporter_url)
    assert value(text, "conveyor_outbox_backlog", domain="platform") == 0
    assert value(text, "conveyor_outbox_oldest_unsent_age_seconds", domain="platform") == 0


async def test_operations_are_counted_by_domain_and_state(stack, exporter_url, clean_db):
    stack.app.state.publisher.enabled = False
    ops = [
        (await stack.client.post("/v1/pings", json={"message": f"s{i}"})).json() for i in range(3)
    ]
    cancel = await stack.client.post(f"/v1/operations/{op_path(ops[0]['name'])}:cancel")
    assert cancel.status_code == 200, cancel.text

    text = await scrape(exporter_url)
    assert value(text, "conveyor_operations", domain="platform", state="PENDING") == 2
    assert value(text, "conveyor_operations", domain="platform", state="CANCELLED") == 1
    for state in ("RUNNING", "CANCELLING", "SUCCEEDED", "FAILED"):
        assert value(text, "conveyor_operations", domain="platform", state=state) == 0
    assert value(text, "conveyor_operations", domain="imports", state="PENDING") == 0
    assert value(text, "conveyor_exporter_source_up", source="operations") == 1


async def test_unreachable_broker_marks_the_queue_source_down_and_keeps_the_rest(
    settings, tmp_path
):
    dead = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    exporter = Exporter(dead, tmp_path / "metrics", timeout=1.0)
    port = exporter.serve("127.0.0.1", 0)
    try:
        text = await scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        await asyncio.to_thread(exporter.close)
    assert value(text, "conveyor_exporter_source_up", source="queues") == 0
    assert value(text, "conveyor_queue_depth", queue="platform") is None
    assert value(text, "conveyor_exporter_source_up", source="outbox") == 1
    assert value(text, "conveyor_outbox_backlog", domain="platform") is not None


AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@needs_service(_rabbitmq_reachable(), "no RabbitMQ on 127.0.0.1:5672")
def test_rabbitmq_queue_depth_is_the_passive_declare_message_count():
    from kombu import Connection, Exchange, Queue

    name = f"conveyor-metrics-test-{secrets.token_hex(4)}"  # never touch the shared domain queues
    missing = f"{name}-missing"
    with Connection(AMQP_URL) as conn:
        queue = Queue(name, Exchange(""), routing_key=name, durable=False)
        queue(conn.default_channel).declare()
        try:
            with conn.Producer() as producer:
                for i in range(3):
                    producer.publish({"n": i}, routing_key=name, exchange="")
            assert queue_depths(AMQP_URL, [name, missing]) == {name: 3}
        finally:
            queue(conn.default_channel).delete()
