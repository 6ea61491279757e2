"""The webhooks service against the real database and a real receiver (no broker: the
service's ``deliver`` is called directly, as the task would)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from app.adapters.webhooks_http import HttpxSender
from app.config.sections.webhooks import WebhooksSettings
from app.container import Container
from app.db import EngineRegistry
from domains.shared.errors import FailedPrecondition, NotFound
from domains.shared.events import IntegrationEvent
from domains.shared.outbox import OutboxMessage
from domains.shared.ssrf import UrlGuard
from domains.webhooks.service import WebhooksService
from domains.webhooks.signing import SecretBox
from tests.support.ops import query
from tests.support.webhooks import Receiver

HOOKS = WebhooksSettings(timeout_seconds=2.0, connect_timeout_seconds=1.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
async def services(settings: Any, database_url: str) -> AsyncIterator[dict[str, WebhooksService]]:
    registry = EngineRegistry(settings)
    container = Container(settings, registry)  # no after_commit: nothing is published
    factory = container.uow_factory("webhooks")
    box = SecretBox("test-key")
    sender = HttpxSender(HOOKS)

    def make(allow: list[str]) -> WebhooksService:
        return WebhooksService(
            factory,  # type: ignore[arg-type]
            sender=sender,
            guard=UrlGuard.from_allowlist(allow),
            box=box,
        )

    yield {"allowing": make(["127.0.0.1"]), "strict": make([])}
    await sender.aclose()
    await registry.dispose()
    # Leave no dispatch behind for relays of other tests.
    await query(
        database_url, "UPDATE webhooks.outbox SET sent_time = now() WHERE sent_time IS NULL"
    )


async def _one_delivery(service: WebhooksService, tenant: str, endpoint_id: Any) -> Any:
    page = await service.list_deliveries(tenant, endpoint_id, [], page_size=10, after=None)
    [delivery] = page.items
    return delivery


async def test_url_is_checked_again_at_send_time(services, receiver):
    # Created while allowed (think: DNS said public), sent when refused (DNS now internal).
    endpoint, _ = await services["allowing"].create_endpoint(
        "t-ssrf", url=receiver.url("/h"), event_types=["orders.*"]
    )
    await services["allowing"].publish_event("t-ssrf", event_type="orders.Created", data={})
    delivery = await _one_delivery(services["strict"], "t-ssrf", endpoint.id)
    counts = await services["strict"].deliver([delivery.id])
    assert counts["failed"] == 1
    assert receiver.count() == 0
    [attempt] = await services["strict"].list_attempts("t-ssrf", endpoint.id, delivery.id)
    assert attempt.status_code is None and "refused" in (attempt.error or "")
    assert (await _one_delivery(services["strict"], "t-ssrf", endpoint.id)).state == "FAILED"


async def test_deliver_is_idempotent_per_attempt(services, receiver):
    service = services["allowing"]
    endpoint, _ = await service.create_endpoint(
        "t-idem", url=receiver.url("/i"), event_types=["orders.*"]
    )
    await service.publish_event("t-idem", event_type="orders.Created", data={"a": 1})
    delivery = await _one_delivery(service, "t-idem", endpoint.id)
    assert (await service.deliver([delivery.id]))["succeeded"] == 1
    assert (await service.deliver([delivery.id])) == {"sent": 0}  # a redelivered message
    assert receiver.count("/i") == 1
    with pytest.raises(FailedPrecondition):
        await service.retry_delivery("t-idem", delivery.id)


async def test_integration_event_fans_out_once_to_matching_endpoints_of_its_tenant(services):
    service = services["allowing"]
    url = "https://93.184.216.34/hook"
    match, _ = await service.create_endpoint("t-fan", url=url, event_types=["imports.*"])
    other, _ = await service.create_endpoint("t-fan", url=url, event_types=["orders.*"])
    await service.create_endpoint("t-fan-2", url=url, event_types=["imports.*"])
    event = IntegrationEvent(
        type="imports.ImportCompleted", data={"import_id": "i"}, source="imports", tenant="t-fan"
    ).to_dict()
    assert await service.handle_event(event) == 1
    assert await service.handle_event(event) == 0
    own = IntegrationEvent(type="webhooks.DeliveryDead", data={}, source="webhooks", tenant="t-fan")
    assert await service.handle_event(own.to_dict()) == 0
    delivery = await _one_delivery(service, "t-fan", match.id)
    assert delivery.event_type == "imports.ImportCompleted"
    assert '"import_id":"i"' in delivery.body
    empty = await service.list_deliveries("t-fan", other.id, [], page_size=10, after=None)
    assert empty.items == []


async def test_tenants_never_see_each_other(services):
    service = services["allowing"]
    endpoint, _ = await service.create_endpoint(
        "t-a", url="https://93.184.216.34/hook", event_types=["orders.*"], enabled=False
    )
    await service.publish_event("t-a", event_type="orders.Created", data={})
    delivery = await _one_delivery(service, "t-a", endpoint.id)
    with pytest.raises(NotFound):
        await service.get_endpoint("t-b", endpoint.id)
    with pytest.raises(NotFound):
        await service.list_deliveries("t-b", endpoint.id, [], page_size=10, after=None)
    with pytest.raises(NotFound):
        await service.get_delivery("t-b", delivery.id)
    with pytest.raises(NotFound):
        await service.retry_delivery("t-b", delivery.id)
    with pytest.raises(NotFound):
        await service.delete_endpoint("t-b", endpoint.id)
    page = await service.list_endpoints("t-b", page_size=50, after_id=None)
    assert endpoint.id not in {e.id for e in page.items}
    assert (
        await service.publish_event("t-b", event_type="orders.Created", data={})
    ).deliveries == 0


async def test_upkeep_takes_back_attempts_whose_worker_vanished(services, database_url):
    service = services["allowing"]
    endpoint, _ = await service.create_endpoint(
        "t-stuck", url="https://93.184.216.34/hook", event_types=["orders.*"]
    )
    await service.publish_event("t-stuck", event_type="orders.Created", data={})
    delivery = await _one_delivery(service, "t-stuck", endpoint.id)
    await query(
        database_url,
        "UPDATE webhooks.deliveries SET state = 'SENDING', attempts = 1,"
        " lease_until = now() - interval '1 second' WHERE id = :id",
        id=delivery.id,
    )
    report = await service.probe_breakers()
    assert report["recovered"] >= 1
    assert (await _one_delivery(service, "t-stuck", endpoint.id)).state == "PENDING"


async def test_a_binary_answer_is_recorded_safely(services, receiver):
    from tests.support.webhooks import Answer

    service = services["allowing"]
    receiver.set_default("/bin", Answer(status=200, body=b"\x00\xffbinary"))
    endpoint, _ = await service.create_endpoint(
        "t-bin", url=receiver.url("/bin"), event_types=["orders.*"]
    )
    await service.publish_event("t-bin", event_type="orders.Created", data={})
    delivery = await _one_delivery(service, "t-bin", endpoint.id)
    assert (await service.deliver([delivery.id]))["succeeded"] == 1
    [attempt] = await service.list_attempts("t-bin", endpoint.id, delivery.id)
    assert attempt.response_body.endswith("binary") and "\x00" not in attempt.response_body


async def test_rate_limit_is_shared_through_redis_and_reschedules(services, receiver, broker_url):
    from app.adapters.webhooks_http import RedisRateLimiter

    limiter = RedisRateLimiter(broker_url, prefix=f"test-rate-{id(receiver)}")
    waits = [await limiter.acquire("k", 2.0) for _ in range(6)]
    assert waits.count(0.0) <= 4 and any(w > 0 for w in waits)  # at most 2 per 1 s window
    assert all(w <= 1.1 for w in waits)

    service = services["allowing"]
    service._limiter = RedisRateLimiter(broker_url, prefix=f"test-rate-svc-{id(receiver)}")
    endpoint, _ = await service.create_endpoint(
        "t-rate", url=receiver.url("/rate"), event_types=["orders.*"], rate_limit=1
    )
    for _ in range(3):
        await service.publish_event("t-rate", event_type="orders.Created", data={})
    page = await service.list_deliveries("t-rate", endpoint.id, [], page_size=10, after=None)
    counts = await service.deliver([d.id for d in page.items])
    assert 1 <= counts["sent"] <= 2  # the rest wait for the next window (not an attempt)
    page = await service.list_deliveries("t-rate", endpoint.id, [], page_size=10, after=None)
    later = [d for d in page.items if d.state == "PENDING"]
    assert later and all(d.attempts == 0 and d.next_attempt_time for d in later)


async def test_a_redelivered_message_waits_for_the_lease_then_takes_over(
    services, receiver, database_url
):
    # A worker killed mid-attempt: acks_late puts the message back while the row is SENDING.
    service = services["allowing"]
    endpoint, _ = await service.create_endpoint(
        "t-lease", url=receiver.url("/lease"), event_types=["orders.*"]
    )
    await service.publish_event("t-lease", event_type="orders.Created", data={})
    delivery = await _one_delivery(service, "t-lease", endpoint.id)
    await query(
        database_url,
        "UPDATE webhooks.deliveries SET state = 'SENDING', attempts = 1, cycle_attempts = 1,"
        " lease_until = now() + interval '30 seconds' WHERE id = :id",
        id=delivery.id,
    )
    assert await service.deliver([delivery.id]) == {"sent": 0}
    [(available,)] = await query(
        database_url,
        "SELECT available_time - now() FROM webhooks.outbox WHERE task_id = :t",
        t=f"{delivery.id}.1.lease",
    )
    assert available.total_seconds() > 25  # a look again when the lease ends
    await query(
        database_url,
        "UPDATE webhooks.deliveries SET lease_until = now() - interval '1 second' WHERE id = :id",
        id=delivery.id,
    )
    assert (await service.deliver([delivery.id]))["succeeded"] == 1
    assert receiver.count("/lease") == 1
    assert (await _one_delivery(service, "t-lease", endpoint.id)).attempts == 2


async def test_fan_out_hands_its_deliver_messages_to_the_fast_path(settings, database_url):
    # The deliver messages a fan-out writes reach the after-commit publisher as messages (a
    # bug once handed their ids, which the publisher could not send: every delivery then
    # waited for the relay's grace period).
    handed: list[tuple[str, list[Any]]] = []

    async def after_commit(domain: str, messages: list[Any], /, *, urgent: bool = False) -> None:
        handed.append((domain, list(messages)))

    registry = EngineRegistry(settings)
    sender = HttpxSender(HOOKS)
    try:
        container = Container(settings, registry, after_commit=after_commit)
        service = WebhooksService(
            container.uow_factory("webhooks"),  # type: ignore[arg-type]
            sender=sender,
            guard=UrlGuard.from_allowlist(["127.0.0.1"]),
            box=SecretBox("test-key"),
        )
        await service.create_endpoint(
            "t-fast", url="http://127.0.0.1:9/h", event_types=["orders.*"]
        )
        handed.clear()
        await service.publish_event("t-fast", event_type="orders.Created", data={})
        messages = [m for domain, batch in handed if domain == "webhooks" for m in batch]
        assert messages, "the fan-out handed nothing to the fast path"
        assert all(isinstance(m, OutboxMessage) for m in messages), messages
        assert "webhooks.deliver" in {m.task_name for m in messages}
    finally:
        await sender.aclose()
        await registry.dispose()
        await query(
            database_url, "UPDATE webhooks.outbox SET sent_time = now() WHERE sent_time IS NULL"
        )
