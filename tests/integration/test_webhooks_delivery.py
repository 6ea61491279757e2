"""Webhook delivery through the real pipeline: API -> outbox -> Redis -> subprocess worker
(prefork) -> HTTP to a real receiver on 127.0.0.1, with the relay dispatching delayed retries.

One stack per module (own Redis database, a ``webhooks`` worker and a relay with a fast retry
schedule and an SSRF allowlist for 127.0.0.1); each test uses its own receiver path and
endpoint, so breakers and plans never interfere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis

from app.adapters.celery_app import create_celery
from app.config import Settings
from app.config.sections.webhooks import WebhooksSettings
from tests.conftest import claim_redis_db
from tests.support.broker import task_ids
from tests.support.ops import query, wait_done
from tests.support.procs import Proc
from tests.support.tls_receiver import TlsReceiver
from tests.support.webhooks import (
    ERROR,
    OK,
    Answer,
    Receiver,
    too_many,
    verify_signature,
)

SCHEDULE = [0.5, 1.0, 1.0]
HOOKS = WebhooksSettings(
    ssrf_allowlist=["127.0.0.1"],
    retry_schedule_seconds=SCHEDULE,
    retry_jitter=0.0,
    timeout_seconds=1.0,
    connect_timeout_seconds=1.0,
    breaker_failure_threshold=5,
    breaker_cooldown_seconds=1.5,
    max_retry_after_seconds=10.0,
    dispatch_batch_size=10,
)


class Hooks:
    """The module's stack: API client, receiver, settings, database URL."""

    def __init__(self, client: httpx.AsyncClient, receiver: Receiver, settings: Settings) -> None:
        self.client = client
        self.receiver = receiver
        self.settings = settings
        self.database_url = str(settings.database_url)
        self._paths = 0
        # Event types of this module only: other tests' endpoints (same tenant) never match.
        self.area = f"it{os.urandom(3).hex()}"

    def path(self) -> str:
        self._paths += 1
        return f"/hook-{self._paths}-{os.urandom(3).hex()}"

    async def endpoint(self, path: str, **fields: Any) -> dict[str, Any]:
        body = {"url": self.receiver.url(path), "event_types": [f"{self.area}.*"], **fields}
        response = await self.client.post("/v1/endpoints", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def publish(self, name: str = "Created", **data: Any) -> dict[str, Any]:
        event_type = f"{self.area}.{name}"
        response = await self.client.post("/v1/events", json={"type": event_type, "data": data})
        assert response.status_code == 200, response.text
        return response.json()

    async def deliveries(
        self, endpoint_id: str, filter_: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"filter": filter_} if filter_ else {}
        response = await self.client.get(f"/v1/endpoints/{endpoint_id}/deliveries", params=params)
        assert response.status_code == 200, response.text
        return list(response.json()["deliveries"])

    async def wait_states(
        self, endpoint_id: str, states: set[str], count: int = 1, timeout: float = 30
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = await self.deliveries(endpoint_id)
            if len(found) >= count and all(d["state"] in states for d in found):
                return found
            await asyncio.sleep(0.1)
        raise AssertionError(f"deliveries never all in {states}: {found}")

    async def attempts(self, endpoint_id: str, delivery_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"/v1/endpoints/{endpoint_id}/deliveries/{delivery_id}/attempts"
        )
        assert response.status_code == 200, response.text
        return list(response.json()["attempts"])

    async def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/endpoints/{endpoint_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def outcome_events(self, delivery_id: str) -> list[dict[str, Any]]:
        rows = await query(
            self.database_url,
            "SELECT kwargs FROM webhooks.outbox WHERE task_name = 'conveyor.event'"
            " AND kwargs->'event'->'data'->>'delivery_id' = :d",
            d=delivery_id,
        )
        return [row[0]["event"] for row in rows]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module")
def tls_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsReceiver]:
    with TlsReceiver(tmp_path_factory.mktemp("tls")) as server:
        yield server


@pytest.fixture(scope="module")
async def hooks(
    settings: Settings,
    service_env: dict[str, str],
    receiver: Receiver,
    tls_receiver: TlsReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Hooks]:
    from app.main import create_app

    url, release = claim_redis_db(str(settings.broker_url))
    # HTTP/2 on (off by default): the HTTPS test below checks the worker negotiates it.
    webhooks = HOOKS.model_copy(update={"tls_ca_file": tls_receiver.ca_file, "http2": True})
    mine = settings.model_copy(update={"broker_url": url, "webhooks": webhooks})
    env = {**service_env, "CONVEYOR_BROKER_URL": url}
    for name, value in webhooks.model_dump(mode="json").items():
        if value is None:
            continue
        if name != "secret_encryption_key":
            env[f"CONVEYOR_WEBHOOKS__{name.upper()}"] = (
                json.dumps(value) if isinstance(value, list) else str(value)
            )
    logs = tmp_path_factory.mktemp("webhooks")
    procs = [
        Proc(
            [
                "worker",
                "--queues",
                "webhooks",
                "--concurrency",
                "2",
                "--pool",
                "prefork",
                "--name",
                f"webhooks-{os.urandom(3).hex()}@%h",
            ],
            env,
            logs / "worker.log",
        ),
        Proc(["relay"], env, logs / "relay.log"),
    ]
    try:
        procs[0].wait_for_log(" ready.", timeout=60)
        procs[1].wait_for_log("relay started", timeout=60)
        app = create_app(mine, celery=create_celery(mine))
        key = env.get("CONVEYOR_API_KEY")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://conveyor.test", headers=headers
        ) as client:
            yield Hooks(client, receiver, mine)
        await app.state.publisher.drain()
        await app.state.container.registry.dispose()
    finally:
        for proc in procs:
            proc.stop()
        release()


async def test_delivery_is_signed_per_standard_webhooks_and_recorded(hooks: Hooks):
    path = hooks.path()
    endpoint = await hooks.endpoint(path)
    assert endpoint["secret"].startswith("whsec_")
    event = await hooks.publish(order="o-1")
    assert event["deliveries"] == 1

    request = hooks.receiver.wait_for(path, 1)[0]
    assert verify_signature([endpoint["secret"]], request.headers, request.body)
    assert not verify_signature(["whsec_" + "A" * 44], request.headers, request.body)
    body = json.loads(request.body)
    assert body["type"] == f"{hooks.area}.Created" and body["data"] == {"order": "o-1"}
    assert request.headers["content-type"] == "application/json"

    [delivery] = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"})
    assert request.headers["webhook-id"] == delivery["id"]
    [attempt] = await hooks.attempts(endpoint["id"], delivery["id"])
    assert attempt["status_code"] == 200 and attempt["response_body"] == "ok"
    assert attempt["duration_ms"] > 0 and attempt["error"] is None
    [outcome] = await hooks.outcome_events(delivery["id"])
    assert outcome["type"] == "webhooks.DeliverySucceeded"
    assert set(outcome["data"]) == {
        "endpoint_id",
        "endpoint",
        "delivery_id",
        "event_type",
        "attempts",
        "latency_ms",
        "status_code",
    }
    assert outcome["data"]["endpoint"] == f"endpoints/{endpoint['id']}"
    assert outcome["data"]["status_code"] == 200 and outcome["data"]["attempts"] == 1
    assert isinstance(outcome["data"]["latency_ms"], float)


async def test_https_endpoint_is_delivered_over_http2(
    hooks: Hooks, tls_receiver: TlsReceiver
) -> None:
    # The worker's sender offers HTTP/2 by ALPN and trusts the receiver's private CA
    # (CONVEYOR_WEBHOOKS__TLS_CA_FILE); the deliveries are signed and recorded as usual.
    path = hooks.path()
    endpoint = await hooks.endpoint(path, url=tls_receiver.url(path))
    for n in range(3):
        await hooks.publish(order=f"o-{n}")
    requests = await asyncio.to_thread(tls_receiver.wait_for, path, 3)
    assert {r.http_version for r in requests} == {"2"}
    assert all(verify_signature([endpoint["secret"]], r.headers, r.body) for r in requests)
    deliveries = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"}, count=3)
    attempt = (await hooks.attempts(endpoint["id"], deliveries[0]["id"]))[0]
    assert attempt["status_code"] == 200 and attempt["response_body"].startswith("2 ")


async def test_5xx_and_closed_connection_are_retried_on_the_schedule(hooks: Hooks):
    path = hooks.path()
    hooks.receiver.plan(path, ERROR, Answer(close=True))
    endpoint = await hooks.endpoint(path)
    await hooks.publish()

    requests = hooks.receiver.wait_for(path, 3)
    [delivery] = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"})
    assert delivery["attempts"] == 3
    gaps = [b.time - a.time for a, b in itertools.pairwise(requests)]
    for gap, delay in zip(gaps, SCHEDULE):
        assert delay - 0.05 <= gap <= delay + 3.0, (gaps, SCHEDULE)
    # The same webhook-id on every attempt: receivers dedupe on it.
    assert {r.headers["webhook-id"] for r in requests} == {delivery["id"]}
    attempts = await hooks.attempts(endpoint["id"], delivery["id"])
    assert [a["status_code"] for a in attempts] == [500, None, 200]
    assert attempts[0]["response_body"] == "boom"
    assert "connection" in attempts[1]["error"].lower()


async def test_a_hanging_receiver_times_out_and_is_retried(hooks: Hooks):
    path = hooks.path()
    hooks.receiver.plan(path, Answer(hang=2.5))
    endpoint = await hooks.endpoint(path)
    await hooks.publish()
    [delivery] = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"}, timeout=40)
    attempts = await hooks.attempts(endpoint["id"], delivery["id"])
    assert attempts[0]["status_code"] is None and "timeout" in attempts[0]["error"]
    assert attempts[-1]["status_code"] == 200


async def test_429_retry_after_is_honoured(hooks: Hooks):
    path = hooks.path()
    hooks.receiver.plan(path, too_many(2.5))
    endpoint = await hooks.endpoint(path)
    await hooks.publish()
    first, second = hooks.receiver.wait_for(path, 2)
    assert second.time - first.time >= 2.4  # the schedule alone says 0.5 s
    [delivery] = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"})
    assert delivery["attempts"] == 2


async def test_permanent_4xx_fails_at_once_without_retry(hooks: Hooks):
    path = hooks.path()
    hooks.receiver.set_default(path, Answer(status=410, body=b"gone"))
    endpoint = await hooks.endpoint(path)
    await hooks.publish()
    [delivery] = await hooks.wait_states(endpoint["id"], {"FAILED"})
    await asyncio.sleep(SCHEDULE[0] + 1.0)
    assert hooks.receiver.count(path) == 1
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 410
    [outcome] = await hooks.outcome_events(delivery["id"])
    assert outcome["type"] == "webhooks.DeliveryFailed"
    assert outcome["data"]["status_code"] == 410 and outcome["data"]["error"] == "HTTP 410"


async def test_dead_after_the_last_attempt_then_manual_retry_delivers(hooks: Hooks):
    path = hooks.path()
    hooks.receiver.set_default(path, ERROR)
    endpoint = await hooks.endpoint(path)
    await hooks.publish()
    [delivery] = await hooks.wait_states(endpoint["id"], {"DEAD"}, timeout=40)
    assert delivery["attempts"] == len(SCHEDULE) + 1
    assert hooks.receiver.count(path) == len(SCHEDULE) + 1
    [outcome] = await hooks.outcome_events(delivery["id"])
    assert outcome["type"] == "webhooks.DeliveryDead"
    assert outcome["data"]["attempts"] == 4 and outcome["data"]["status_code"] == 500
    assert (await hooks.deliveries(endpoint["id"], 'state = "DEAD"'))[0]["id"] == delivery["id"]
    assert await hooks.deliveries(endpoint["id"], 'state = "SUCCEEDED"') == []

    hooks.receiver.set_default(path, OK)
    response = await hooks.client.post(f"/v1/deliveries/{delivery['id']}:retry")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "PENDING"
    [delivery] = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"})
    assert delivery["attempts"] == 5
    again = await hooks.client.post(f"/v1/deliveries/{delivery['id']}:retry")
    assert again.status_code == 400 and again.json()["error"]["status"] == "FAILED_PRECONDITION"


async def test_replay_requeues_failed_and_dead_deliveries_with_an_operation(hooks: Hooks):
    path = hooks.path()
    hooks.receiver.set_default(path, Answer(status=400, body=b"bad"))
    endpoint = await hooks.endpoint(path)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await hooks.publish(n=1)
    await hooks.publish(n=2)
    await hooks.wait_states(endpoint["id"], {"FAILED"}, count=2)

    hooks.receiver.set_default(path, OK)
    response = await hooks.client.post(
        f"/v1/endpoints/{endpoint['id']}:replay", json={"since": since.isoformat()}
    )
    assert response.status_code == 200, response.text
    op = response.json()
    assert op["metadata"]["type"] == "replay" and op["metadata"]["domain"] == "webhooks"
    done = await wait_done(hooks.client, op["name"])
    assert done["response"]["replayed"] == 2
    assert done["metadata"]["progress"]["done"] == done["metadata"]["progress"]["total"] == 2
    found = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"}, count=2)
    assert all(d["attempts"] == 2 for d in found)


async def test_breaker_opens_pauses_deliveries_and_closes_after_a_probe(hooks: Hooks):
    path = hooks.path()
    hooks.receiver.set_default(path, ERROR)
    endpoint = await hooks.endpoint(path)
    await hooks.publish(n=1)
    await hooks.publish(n=2)

    deadline = time.monotonic() + 30
    while (await hooks.get_endpoint(endpoint["id"]))["breaker"]["state"] != "OPEN":
        assert time.monotonic() < deadline, "breaker never opened"
        await asyncio.sleep(0.1)
    await hooks.wait_states(endpoint["id"], {"PAUSED"}, count=2)
    held = hooks.receiver.count(path)
    # The threshold-th failure opened it; an attempt already in flight may add one more.
    assert HOOKS.breaker_failure_threshold <= held <= HOOKS.breaker_failure_threshold + 1
    # Paused: kept, not attempted, not dropped.
    await asyncio.sleep(0.5)
    assert hooks.receiver.count(path) == held

    hooks.receiver.set_default(path, OK)
    found = await hooks.wait_states(endpoint["id"], {"SUCCEEDED"}, count=2, timeout=30)
    assert len(found) == 2
    state = await hooks.get_endpoint(endpoint["id"])
    assert state["breaker"] == {
        "state": "CLOSED",
        "consecutive_failures": 0,
        "failing_since": None,
        "until": None,
    }


async def test_disabled_endpoint_keeps_deliveries_paused_until_enabled(hooks: Hooks):
    path = hooks.path()
    endpoint = await hooks.endpoint(path, enabled=False)
    await hooks.publish()
    [_delivery] = await hooks.wait_states(endpoint["id"], {"PAUSED"})
    await asyncio.sleep(0.5)
    assert hooks.receiver.count(path) == 0
    response = await hooks.client.patch(f"/v1/endpoints/{endpoint['id']}", json={"enabled": True})
    assert response.status_code == 200 and response.json()["enabled"] is True
    await hooks.wait_states(endpoint["id"], {"SUCCEEDED"})
    assert hooks.receiver.count(path) == 1


async def test_rotated_secret_signs_with_both_secrets_during_grace(hooks: Hooks):
    path = hooks.path()
    endpoint = await hooks.endpoint(path)
    response = await hooks.client.post(f"/v1/endpoints/{endpoint['id']}:rotateSecret")
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["secret"] != endpoint["secret"] and rotated["previous_secret_expire_time"]
    await hooks.publish()
    request = hooks.receiver.wait_for(path, 1)[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verify_signature([rotated["secret"]], request.headers, request.body)
    assert verify_signature([endpoint["secret"]], request.headers, request.body)


def _in_broker(broker_url: str, queue: str, sent: set[str]) -> int:
    """Messages of ``sent`` still queued, or delivered and not acked yet."""
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(task_id in sent for task_id in task_ids(client, queue, unacked=True))
    finally:
        client.close()


async def test_integration_events_fan_out_once_per_event_id(hooks: Hooks):
    from domains.shared.events import IntegrationEvent

    path = hooks.path()
    endpoint = await hooks.endpoint(path, event_types=["imports.*"])
    other = await hooks.endpoint(hooks.path())
    event = IntegrationEvent(
        type="imports.ImportCompleted", data={"import_id": "i-1"}, source="imports"
    ).to_dict()
    celery = create_celery(hooks.settings)
    sent = {f"{event['id']}.webhooks", f"{event['id']}.webhooks.again"}
    for task_id in sorted(sent):  # at-least-once delivery: a duplicate changes nothing
        celery.send_task(
            "webhooks.handle_event",
            kwargs={"event": event},
            queue="webhooks",
            routing_key="webhooks",
            task_id=task_id,
        )
    # Positive control: both messages were handled to the end (acked), the duplicate too.
    deadline = time.monotonic() + 30
    while _in_broker(str(hooks.settings.broker_url), "webhooks", sent):
        assert time.monotonic() < deadline, "the two handle_event messages were not acked"
        await asyncio.sleep(0.05)

    # This event's deliveries only: another test's leftover imports event, relayed meanwhile,
    # may reach the endpoint too (same tenant, matching type).
    async def ours(endpoint_id: str) -> list[dict[str, Any]]:
        found = await hooks.deliveries(endpoint_id)
        return [d for d in found if d["event_id"] == event["id"]]

    [delivery] = await ours(endpoint["id"])
    assert await ours(other["id"]) == []
    deadline = time.monotonic() + 30
    while (await ours(endpoint["id"]))[0]["state"] != "SUCCEEDED":
        assert time.monotonic() < deadline, "the delivery did not succeed"
        await asyncio.sleep(0.1)
    [request] = [
        r for r in hooks.receiver.received(path) if r.headers["webhook-id"] == delivery["id"]
    ]
    assert json.loads(request.body)["type"] == "imports.ImportCompleted"
