"""The webhook sender's connection pools, against a real local HTTP server: one keep-alive pool
per endpoint, each capped at ``max_connections_per_endpoint``, at most ``max_endpoint_pools``
of them per process (least recently used closed first)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest

from app.adapters.webhooks_http import HttpxSender
from app.config.sections.webhooks import WebhooksSettings
from tests.support.webhooks import Answer, Receiver

LOCAL = [ipaddress.ip_address("127.0.0.1")]


@pytest.fixture
def server() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


async def _post(sender: HttpxSender, url: str) -> int | None:
    result = await sender.send(url, LOCAL, {"content-type": "application/json"}, b"{}")
    return result.status_code


async def test_each_endpoint_has_its_own_pool_capped_per_endpoint(server: Receiver) -> None:
    sender = HttpxSender(WebhooksSettings(max_connections_per_endpoint=3))
    for path in ("/a", "/b"):
        server.set_default(path, Answer(hang=0.3))
    a, b = server.url("/a"), server.url("/b")
    try:
        statuses = await asyncio.gather(*(_post(sender, u) for u in [a, b] * 12))
        assert statuses == [200] * 24
        # At most 3 requests at a time per endpoint, over at most 3 connections each...
        assert (server.most_in_flight("/a"), server.most_in_flight("/b")) == (3, 3)
        peers = {path: {r.peer_port for r in server.received(path)} for path in ("/a", "/b")}
        assert len(peers["/a"]) <= 3 and len(peers["/b"]) <= 3
        # ...and the two endpoints' connections are not shared (one pool would give 3 in all).
        assert not peers["/a"] & peers["/b"]
        assert sender.pools == 2
        # Kept alive: a second round opens no new connection.
        for path in ("/a", "/b"):
            server.set_default(path, Answer())
        await asyncio.gather(*(_post(sender, u) for u in [a, b] * 3))
        assert {r.peer_port for r in server.received("/a")} == peers["/a"]
        assert {r.peer_port for r in server.received("/b")} == peers["/b"]
    finally:
        await sender.aclose()


async def test_the_least_recently_used_endpoint_pool_is_closed_past_the_cap(
    server: Receiver,
) -> None:
    sender = HttpxSender(WebhooksSettings(max_endpoint_pools=2))
    a, b, c = (server.url(p) for p in ("/a", "/b", "/c"))
    try:
        assert await _post(sender, a) == 200
        first = sender.client(a)
        assert await _post(sender, b) == 200
        assert await _post(sender, a) == 200  # a is the most recent now: b goes next
        assert await _post(sender, c) == 200
        assert sender.pools == 2
        await asyncio.sleep(0.05)  # the eviction closes b's client in a task
        assert sender.client(a) is first and not first.is_closed  # order now: c, a
        assert await _post(sender, b) == 200  # a new pool for b; c (least recent) goes
        assert await _post(sender, c) == 200  # a new pool for c; a (least recent) goes
        assert sender.pools == 2
        await asyncio.sleep(0.05)
        assert first.is_closed
        assert await _post(sender, a) == 200  # and comes back with a new pool
        assert sender.client(a) is not first
    finally:
        await sender.aclose()


async def test_a_request_in_flight_finishes_when_its_pool_is_closed_past_the_cap(
    server: Receiver,
) -> None:
    sender = HttpxSender(WebhooksSettings(max_endpoint_pools=1))
    server.set_default("/slow", Answer(hang=0.5))
    slow, other = server.url("/slow"), server.url("/other")
    try:
        in_flight = asyncio.create_task(_post(sender, slow))
        await asyncio.to_thread(server.wait_for, "/slow", 1, 5)  # being answered now
        first = sender.client(slow)
        assert await _post(sender, other) == 200  # evicts /slow's pool while it is busy
        assert sender.pools == 1
        assert await in_flight == 200, "the evicted pool's request in flight was cut"
        await asyncio.sleep(0.05)
        assert first.is_closed  # closed once its last request finished
    finally:
        await sender.aclose()


async def test_waiting_for_an_endpoint_slot_is_bounded_by_the_timeout(server: Receiver) -> None:
    # One request at a time, each answered after 1 s, waits of at most 1.5 s: the second
    # request waits 1 s and goes through, the third would wait 2 s and gives up at 1.5 s, as
    # httpx's pool timeout did (the attempt's lease counts on that bound).
    sender = HttpxSender(WebhooksSettings(max_connections_per_endpoint=1, timeout_seconds=1.5))
    server.set_default("/slow", Answer(hang=1.0))
    url = server.url("/slow")

    async def post(delay: float) -> tuple[int | None, str | None]:
        await asyncio.sleep(delay)  # in this order
        result = await sender.send(url, LOCAL, {"content-type": "application/json"}, b"{}")
        return result.status_code, result.error

    try:
        results = await asyncio.gather(post(0), post(0.05), post(0.1))
    finally:
        await sender.aclose()
    assert results[:2] == [(200, None), (200, None)]
    assert results[2] == (None, "timeout (PoolTimeout) after 1.5s")
    assert server.most_in_flight("/slow") == 1
