"""Webhooks rules on the in-memory fakes: endpoint validation and idempotent create, fan-out to
matching endpoints only (once per event), delivery outcomes, the circuit breaker, retry and
replay."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence

import pytest

from domains.operations.model import State
from domains.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from domains.shared.events import EVENT_TASK, IntegrationEvent
from domains.shared.ssrf import IpAddress, UrlGuard
from domains.webhooks.model import BreakerPolicy, BreakerState, DeliveryState, SendResult
from domains.webhooks.service import DELIVER_TASK, PROBE_TASK, WebhooksConfig, WebhooksService
from domains.webhooks.signing import SecretBox
from tests.fakes.operations import FakeDatabase
from tests.fakes.webhooks import FakeWebhooksUnitOfWork, webhooks_database

URL = "http://127.0.0.1:9/hook"


class ScriptedSender:
    """Answers each request with the next status of a script (no network)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.sent: list[tuple[str, dict[str, str]]] = []

    async def send(
        self,
        url: str,
        addresses: Sequence[IpAddress],
        headers: Mapping[str, str],
        body: bytes,
    ) -> SendResult:
        self.sent.append((url, dict(headers)))
        return SendResult(self.statuses.pop(0) if self.statuses else 200, 1.0)


@pytest.fixture
def db() -> FakeDatabase:
    return webhooks_database()


def make(
    db: FakeDatabase, sender: ScriptedSender | None = None, *, threshold: int = 10
) -> WebhooksService:
    return WebhooksService(
        lambda: FakeWebhooksUnitOfWork(db),
        sender=sender or ScriptedSender(),
        guard=UrlGuard.from_allowlist(["127.0.0.1"]),
        box=SecretBox("test-key"),
        config=WebhooksConfig(
            breaker=BreakerPolicy(failure_threshold=threshold), progress_interval=0
        ),
    )


def event(tenant: str = "t1", type_: str = "imports.ImportCompleted") -> dict:
    return IntegrationEvent(type=type_, data={"n": 1}, source="imports", tenant=tenant).to_dict()


def deliver_ids(db: FakeDatabase) -> list:
    # The delivery ids the committed "webhooks.deliver" messages carry.
    return [i for m in db.published if m.task_name == DELIVER_TASK for i in m.args[0]]


async def test_create_endpoint_validates_its_fields(db):
    svc = make(db)
    with pytest.raises(InvalidArgument):
        await svc.create_endpoint("t1", url=URL, event_types=[])
    with pytest.raises(InvalidArgument):
        await svc.create_endpoint("t1", url=URL, event_types=["imports.*"], rate_limit=0)
    with pytest.raises(InvalidArgument):
        await svc.create_endpoint("t1", url=URL, event_types=["imports.*"], description="a\x00")
    strict = WebhooksService(
        lambda: FakeWebhooksUnitOfWork(db),
        sender=ScriptedSender(),
        guard=UrlGuard.from_allowlist([]),
        box=SecretBox("test-key"),
    )
    with pytest.raises(InvalidArgument):  # loopback is refused without an allowlist
        await strict.create_endpoint("t1", url=URL, event_types=["imports.*"])
    assert db.state["endpoints"] == {}


async def test_create_endpoint_is_idempotent_per_request_id(db):
    svc = make(db)
    first, secret = await svc.create_endpoint(
        "t1", url=URL, event_types=["imports.*"], request_id="r-1"
    )
    again, same_secret = await svc.create_endpoint(
        "t1", url=URL, event_types=["imports.*"], request_id="r-1"
    )

    assert (again.id, same_secret) == (first.id, secret)
    assert len(db.state["endpoints"]) == 1
    with pytest.raises(AlreadyExists):
        await svc.create_endpoint("t1", url=URL, event_types=["orders.*"], request_id="r-1")


async def test_an_event_fans_out_once_to_the_matching_endpoints_of_its_tenant(db):
    svc = make(db)
    wanted, _ = await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])
    await svc.create_endpoint("t1", url=URL, event_types=["orders.*"])
    await svc.create_endpoint("t2", url=URL, event_types=["imports.*"])
    envelope = event("t1")

    assert await svc.handle_event(envelope) == 1
    assert await svc.handle_event(envelope) == 0  # a redelivered event

    [delivery] = db.state["deliveries"].values()
    assert delivery.endpoint_id == wanted.id
    assert deliver_ids(db) == [str(delivery.id)]
    assert (await FakeWebhooksUnitOfWork(db).autocommit(_inbox_counts)) == {"HANDLED": 1}


async def _inbox_counts(uow):
    return await uow.inbox.counts()


async def test_own_outcome_events_are_never_delivered(db):
    svc = make(db)
    await svc.create_endpoint("t1", url=URL, event_types=["*"])

    assert await svc.handle_event(event("t1", "webhooks.DeliveryFailed")) == 0
    assert db.state["deliveries"] == {}


async def test_a_published_event_with_a_request_id_is_one_event(db):
    svc = make(db)
    await svc.create_endpoint("t1", url=URL, event_types=["orders.*"])

    first = await svc.publish_event(
        "t1", event_type="orders.Created", data={"a": 1}, request_id="p"
    )
    again = await svc.publish_event(
        "t1", event_type="orders.Created", data={"a": 1}, request_id="p"
    )

    assert again.id == first.id and again.deliveries == first.deliveries == 1
    assert len(db.state["deliveries"]) == 1
    with pytest.raises(AlreadyExists):
        await svc.publish_event("t1", event_type="orders.Created", data={"a": 2}, request_id="p")


async def test_deliver_records_each_outcome(db):
    sender = ScriptedSender(200, 500, 404)
    svc = make(db, sender)
    for _ in range(3):
        await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])
    await svc.handle_event(event("t1"))
    ids = sorted(db.state["deliveries"])

    counts = await svc.deliver(ids)

    assert (counts["succeeded"], counts["retry"], counts["failed"]) == (1, 1, 1)
    states = sorted(str(d.state) for d in db.state["deliveries"].values())
    assert states == ["FAILED", "PENDING", "SUCCEEDED"]
    assert len(db.state["attempts"]) == 3
    assert all("webhook-signature" in headers for _, headers in sender.sent)
    outcomes = sorted(m.kwargs["event"]["type"] for m in db.published if m.task_name == EVENT_TASK)
    assert outcomes == ["webhooks.DeliveryFailed", "webhooks.DeliverySucceeded"]
    [retry] = [m for m in db.published if m.task_name == DELIVER_TASK and m.task_id.endswith(".2")]
    assert retry.available_time is not None and retry.available_time > retry.created_time


async def test_a_delivery_is_attempted_once_per_message(db):
    sender = ScriptedSender(200)
    svc = make(db, sender)
    await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])
    await svc.handle_event(event("t1"))
    ids = list(db.state["deliveries"])

    await svc.deliver(ids)
    assert await svc.deliver(ids) == {"sent": 0}  # a redelivered task message
    assert len(sender.sent) == 1


async def test_the_breaker_opens_after_n_failures_and_pauses_new_deliveries(db):
    svc = make(db, ScriptedSender(500, 500), threshold=2)
    endpoint, _ = await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])
    for _ in range(2):
        await svc.handle_event(event("t1"))
    await svc.deliver(sorted(db.state["deliveries"]))

    opened = db.state["endpoints"][endpoint.id]
    assert opened.breaker_state == BreakerState.OPEN
    assert any(m.task_name == PROBE_TASK for m in db.published)

    await svc.handle_event(event("t1"))
    newest = max(db.state["deliveries"].values(), key=lambda d: d.id)
    assert newest.state == DeliveryState.PAUSED


async def test_enabling_a_disabled_endpoint_resumes_its_paused_deliveries(db):
    svc = make(db)
    endpoint, _ = await svc.create_endpoint("t1", url=URL, event_types=["imports.*"], enabled=False)
    await svc.handle_event(event("t1"))
    [paused] = db.state["deliveries"].values()
    assert paused.state == DeliveryState.PAUSED and deliver_ids(db) == []

    await svc.update_endpoint("t1", endpoint.id, enabled=True)

    assert db.state["deliveries"][paused.id].state == DeliveryState.PENDING
    assert deliver_ids(db) == [str(paused.id)]


async def test_update_and_delete_are_per_tenant(db):
    svc = make(db)
    endpoint, _ = await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])

    with pytest.raises(NotFound):
        await svc.update_endpoint("t2", endpoint.id, description="x")
    with pytest.raises(InvalidArgument):
        await svc.update_endpoint("t1", endpoint.id, event_types=[])
    await svc.delete_endpoint("t1", endpoint.id)
    with pytest.raises(NotFound):
        await svc.get_endpoint("t1", endpoint.id)


async def test_only_failed_or_dead_deliveries_are_retried(db):
    svc = make(db, ScriptedSender(404))
    await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])
    await svc.handle_event(event("t1"))
    [delivery] = db.state["deliveries"].values()
    with pytest.raises(FailedPrecondition):
        await svc.retry_delivery("t1", delivery.id)

    await svc.deliver([delivery.id])
    retried = await svc.retry_delivery("t1", delivery.id)

    assert retried.state == DeliveryState.PENDING
    assert deliver_ids(db).count(str(delivery.id)) == 2


async def test_replay_requeues_failed_deliveries_since_a_time(db):
    svc = make(db, ScriptedSender(404, 404))
    endpoint, _ = await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])
    for _ in range(2):
        await svc.handle_event(event("t1"))
    await svc.deliver(sorted(db.state["deliveries"]))
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with pytest.raises(InvalidArgument):
        await svc.replay("t1", endpoint.id, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))

    op = await svc.replay("t1", endpoint.id, since, request_id="replay-1")
    assert (await svc.replay("t1", endpoint.id, since, request_id="replay-1")).id == op.id
    response = await svc.run_replay(op.id, since)

    assert response == {"endpoint": f"endpoints/{endpoint.id}", "replayed": 2}
    assert db.operations[op.id].state == State.SUCCEEDED
    assert {d.state for d in db.state["deliveries"].values()} == {DeliveryState.PENDING}


async def test_a_change_rolled_back_is_invisible(db):
    svc = make(db)
    endpoint, _ = await svc.create_endpoint("t1", url=URL, event_types=["imports.*"])
    before = dataclasses.replace(db.state["endpoints"][endpoint.id])

    with pytest.raises(NotFound):  # the update of a missing endpoint raises inside the uow
        await svc.update_endpoint("t1", uuid.UUID(int=0), description="x")
    async with FakeWebhooksUnitOfWork(db) as uow:
        changed = await uow.webhooks.get_endpoint(endpoint.id)
        assert changed is not None
        changed.description = "never committed"
        await uow.webhooks.save_endpoint(changed)

    assert db.state["endpoints"][endpoint.id] == before
