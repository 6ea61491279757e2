"""The webhook sender's connection pools, against a real local HTTP server: one keep-alive pool
per endpoint, each capped at ``max_connections_per_endpoint``, at most ``max_endpoint_pools``
of them per process (least recently used closed first)."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from app.adapters.webhooks_http import HttpxSender
from app.config.sections.webhooks import WebhooksSettings

LOCAL = [ipaddress.ip_address("127.0.0.1")]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self.peers: defaultdict[str, set[int]] = defaultdict(set)
        self.hang = 0.0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        server = self.server
        with server.lock:
            server.in_flight[self.path] += 1
            server.most_in_flight[self.path] = max(
                server.most_in_flight[self.path], server.in_flight[self.path]
            )
            server.peers[self.path].add(self.client_address[1])
        time.sleep(server.hang)
        with server.lock:
            server.in_flight[self.path] -= 1
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


async def _post(sender: HttpxSender, url: str) -> int | None:
    result = await sender.send(url, LOCAL, {"content-type": "application/json"}, b"{}")
    return result.status_code


async def test_each_endpoint_has_its_own_pool_capped_per_endpoint(server: _Server) -> None:
    sender = HttpxSender(WebhooksSettings(max_connections_per_endpoint=3))
    server.hang = 0.3
    a, b = _url(server, "/a"), _url(server, "/b")
    try:
        statuses = await asyncio.gather(*(_post(sender, u) for u in [a, b] * 12))
        assert statuses == [200] * 24
        # At most 3 requests at a time per endpoint, over at most 3 connections each...
        assert server.most_in_flight == {"/a": 3, "/b": 3}
        assert len(server.peers["/a"]) <= 3 and len(server.peers["/b"]) <= 3
        # ...and the two endpoints' connections are not shared (one pool would give 3 in all).
        assert not server.peers["/a"] & server.peers["/b"]
        assert sender.pools == 2
        # Kept alive: a second round opens no new connection.
        before = {path: set(ports) for path, ports in server.peers.items()}
        server.hang = 0.0
        await asyncio.gather(*(_post(sender, u) for u in [a, b] * 3))
        assert server.peers == before
    finally:
        await sender.aclose()


async def test_the_least_recently_used_endpoint_pool_is_closed_past_the_cap(
    server: _Server,
) -> None:
    sender = HttpxSender(WebhooksSettings(max_endpoint_pools=2))
    a, b, c = (_url(server, p) for p in ("/a", "/b", "/c"))
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
