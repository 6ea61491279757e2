"""Adapters of the webhooks domain: the HTTP sender (a keep-alive ``httpx.AsyncClient`` per
endpoint in each worker process, created lazily on the runtime's event loop) and the Redis rate
limiter.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import functools
import ipaddress
import math
import os
import ssl
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from app.config.sections.webhooks import WebhooksSettings
from domains.shared.ssrf import IpAddress
from domains.webhooks.model import RESPONSE_BODY_LIMIT, SendResult


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parses a ``Retry-After`` header (seconds or an HTTP date).

    Args:
        value: The header value.
        now: Current Unix time (default: now).

    Returns:
        Seconds to wait (>= 0), or ``None`` if absent or unparsable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@functools.lru_cache(maxsize=4096)
def pinned_url(url: str, address: IpAddress) -> tuple[str, str]:
    """Rewrites ``url`` to connect to ``address`` (checked by the SSRF guard), so that DNS
    cannot change between the check and the connection (rebinding).

    Args:
        url: The endpoint URL.
        address: The address to connect to.

    Returns:
        ``(url with the address as host, Host header value)``.
    """
    parts = urllib.parse.urlsplit(url)
    host = str(parts.hostname)
    literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    port = f":{parts.port}" if parts.port else ""
    host_header = (f"[{host}]" if ":" in host else host) + port
    return urllib.parse.urlunsplit(parts._replace(netloc=literal + port)), host_header


class HttpxSender:
    """Sends webhook requests with a keep-alive pool per endpoint.

    One ``httpx.AsyncClient`` per endpoint URL (at most ``max_endpoint_pools`` per process;
    the least recently used is closed once its requests in flight have finished), each
    holding at most ``max_connections_per_endpoint`` connections, all sharing one TLS
    context. Per endpoint because httpcore looks at every
    connection of a pool (an expiry check, a readability poll) whenever a request starts or
    ends: in one pool shared by every endpoint that scan grew with all the open connections
    and took half of a busy webhook worker's CPU. Per endpoint it stays short, and a slow
    endpoint cannot take the connections the others need. ``max_concurrent_requests`` still
    bounds the requests in flight per process.

    With ``http2`` on, HTTPS endpoints are offered HTTP/2: a receiver that accepts it gets the
    endpoint's requests multiplexed over one connection. The per-endpoint cap then bounds
    requests in flight (a semaphore per pool), as the connection cap does for HTTP/1.1.

    Clients are created on first use inside the runtime loop (after fork in prefork workers),
    keep connections alive across tasks, never follow redirects and ignore proxy environment
    variables.
    """

    def __init__(self, settings: WebhooksSettings) -> None:
        """Creates the sender (no client yet).

        Args:
            settings: Timeouts and concurrency.
        """
        self._settings = settings
        self._clients: collections.OrderedDict[str, httpx.AsyncClient] = collections.OrderedDict()
        self._owner: tuple[int, int] | None = None
        self._tls: ssl.SSLContext | None = None
        # Requests in flight per client, and evicted clients still busy: a pool is closed
        # only once its last request has finished (closing it would cut them).
        self._busy: collections.Counter[httpx.AsyncClient] = collections.Counter()
        self._retired: list[httpx.AsyncClient] = []
        # Requests in flight per pool: HTTP/2 multiplexes them over one connection, so the
        # connection cap alone would no longer bound what one slow endpoint holds.
        self._slots: dict[httpx.AsyncClient, asyncio.Semaphore] = {}

    def client(self, endpoint_url: str) -> httpx.AsyncClient:
        """Returns the pool of ``endpoint_url`` in this process, on the running loop.

        Args:
            endpoint_url: The endpoint's URL (its pool's key).

        Returns:
            The client.
        """
        owner = (os.getpid(), id(asyncio.get_running_loop()))
        if self._owner != owner:
            # A forked child or another loop: the parent's connections are not ours to use.
            self._clients = collections.OrderedDict()
            self._busy, self._retired, self._slots = collections.Counter(), [], {}
            self._owner = owner
        client = self._clients.get(endpoint_url)
        if client is not None:
            self._clients.move_to_end(endpoint_url)
            return client
        s = self._settings
        if self._tls is None:
            self._tls = self.tls_context(s)  # loading the CA bundles once, not per pool
        per_endpoint = min(s.max_connections_per_endpoint, s.max_concurrent_requests)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_seconds, connect=s.connect_timeout_seconds),
            follow_redirects=False,
            trust_env=False,
            verify=self._tls,
            http2=s.http2,
            limits=httpx.Limits(
                max_connections=per_endpoint, max_keepalive_connections=per_endpoint
            ),
        )
        self._clients[endpoint_url] = client
        self._slots[client] = asyncio.Semaphore(per_endpoint)
        while len(self._clients) > s.max_endpoint_pools:
            _, evicted = self._clients.popitem(last=False)
            self._retired.append(evicted)  # closed by the next request to finish, when idle
        return client

    @staticmethod
    def tls_context(settings: WebhooksSettings) -> ssl.SSLContext:
        """The TLS context of every pool: certifi's CAs (or ``SSL_CERT_FILE``'s) plus
        ``tls_ca_file``'s, if set.

        Args:
            settings: Webhooks settings.

        Returns:
            The context (certificates and host names verified).

        Raises:
            ValueError: If ``tls_ca_file`` cannot be read as PEM certificates (the attempt
                records this message, so the operator sees which setting to fix).
        """
        context = httpx.create_ssl_context()
        if settings.tls_ca_file:
            try:
                context.load_verify_locations(cafile=settings.tls_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"CONVEYOR_WEBHOOKS__TLS_CA_FILE {settings.tls_ca_file!r} cannot be loaded"
                    f" as PEM certificates: {exc}"
                ) from None
        return context

    @property
    def pools(self) -> int:
        """Endpoint pools open in this process (tests, metrics)."""
        return len(self._clients)

    async def aclose(self) -> None:
        """Closes every client (shutdown, tests)."""
        clients = [*self._clients.values(), *self._retired]
        self._clients, self._retired, self._slots = collections.OrderedDict(), [], {}
        for client in clients:
            await client.aclose()

    async def _close_retired(self) -> None:
        idle = [c for c in self._retired if not self._busy[c]]
        if idle:
            self._retired = [c for c in self._retired if self._busy[c]]
            for client in idle:
                self._slots.pop(client, None)
                await client.aclose()

    async def send(
        self,
        url: str,
        addresses: Sequence[IpAddress],
        headers: Mapping[str, str],
        body: bytes,
    ) -> SendResult:
        """POSTs ``body`` to ``url`` through the first checked address.

        Args:
            url: Endpoint URL.
            addresses: Addresses the guard accepted for its host.
            headers: Request headers (signatures included).
            body: Request body.

        Returns:
            Status, duration (until the response headers), first 4 KB of the body, or the error.
        """
        target, host_header = pinned_url(url, addresses[0])
        request_headers = {**headers, "host": host_header}
        extensions: dict[str, Any] = {}
        if url.lower().startswith("https:"):
            extensions["sni_hostname"] = urllib.parse.urlsplit(url).hostname
        client = self.client(url)
        slots = self._slots[client]
        self._busy[client] += 1
        try:
            # Waiting for a slot is bounded as httpx bounds the wait for a pooled connection
            # (its pool timeout): the attempt's lease allows for that wait and the request.
            wait = self._settings.timeout_seconds
            if not slots.locked():
                await slots.acquire()  # a free slot: no timer to arm
            else:
                try:
                    async with asyncio.timeout(wait):
                        await slots.acquire()
                except TimeoutError:
                    return SendResult(
                        None, wait * 1000, error=f"timeout (PoolTimeout) after {wait:.1f}s"
                    )
            try:
                return await self._post(client, target, request_headers, body, extensions)
            finally:
                slots.release()
        finally:
            self._busy[client] -= 1
            if not self._busy[client]:
                del self._busy[client]
            await self._close_retired()

    async def _post(
        self,
        client: httpx.AsyncClient,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        extensions: dict[str, Any],
    ) -> SendResult:
        start = time.perf_counter()
        try:
            request = client.build_request(
                "POST", target, content=body, headers=headers, extensions=extensions
            )
            response = await client.send(request, stream=True)
            duration = (time.perf_counter() - start) * 1000
            try:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) >= RESPONSE_BODY_LIMIT:
                        break
            except httpx.HTTPError:
                pass  # the status is what counts; a broken body is kept as far as it came
            finally:
                await response.aclose()
            return SendResult(
                status_code=response.status_code,
                duration_ms=duration,
                body=bytes(data[:RESPONSE_BODY_LIMIT]).decode("utf-8", "replace"),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        except httpx.TimeoutException as exc:
            return SendResult(
                None,
                (time.perf_counter() - start) * 1000,
                error=f"timeout ({type(exc).__name__}) after {time.perf_counter() - start:.1f}s",
            )
        except httpx.HTTPError as exc:
            return SendResult(
                None,
                (time.perf_counter() - start) * 1000,
                error=f"connection error: {type(exc).__name__}: {exc}"[:500],
            )


class RedisRateLimiter:
    """A global rate limit per key: fixed windows counted in Redis (shared by all workers)."""

    def __init__(self, url: str, prefix: str = "conveyor:webhooks:rate") -> None:
        """Creates the limiter (the client is made lazily per process and loop).

        Args:
            url: Redis URL.
            prefix: Key prefix.
        """
        self._url = url
        self._prefix = prefix
        self._client: Any = None
        self._owner: tuple[int, int] | None = None

    def _redis(self) -> Any:
        import redis.asyncio as aioredis

        owner = (os.getpid(), id(asyncio.get_running_loop()))
        if self._client is None or self._owner != owner:
            self._client = aioredis.Redis.from_url(self._url, socket_connect_timeout=2)
            self._owner = owner
        return self._client

    async def acquire(self, key: str, per_second: float) -> float:
        """Takes a slot in the current window.

        Args:
            key: E.g. the endpoint id.
            per_second: Allowed rate.

        Returns:
            0 if granted, else seconds until the next window.
        """
        window = max(1.0, 1.0 / per_second)
        capacity = max(1, int(per_second * window))
        now = time.time()
        index = int(now // window)
        name = f"{self._prefix}:{key}:{index}"
        client = self._redis()
        pipe = client.pipeline()
        pipe.incr(name)
        pipe.expire(name, int(window) + 2)
        count, _ = await pipe.execute()
        if int(count) <= capacity:
            return 0.0
        return (index + 1) * window - now + 0.01
