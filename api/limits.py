"""Request limits: a per-API-key token bucket in Redis (429) and request body caps per route (413).

The rate limit is global across API processes because the bucket lives in Redis and is updated
by one Lua script (atomic: no read-modify-write race between processes). If Redis is
unreachable the limiter lets requests through and logs it: an outage of the limiter must not
become an outage of the API. Without any Redis configured, each process keeps its own buckets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body

log = logging.getLogger(__name__)

BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1]) or burst
local ts = tonumber(data[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""
"""Token bucket: refill ``rate``/s up to ``burst``; take one token or return the wait in seconds."""


class TokenBucketLimiter:
    """Per-key token bucket, in Redis when a URL is given, else in this process."""

    def __init__(
        self, rate: float, burst: int, redis_url: str | None, *, prefix: str = "conveyor:rl:"
    ) -> None:
        """Creates the limiter (the Redis connection opens on first use).

        Args:
            rate: Tokens per second.
            burst: Bucket size.
            redis_url: ``redis://...`` or ``None`` for in-process buckets.
            prefix: Redis key prefix.
        """
        self.rate = rate
        self.burst = burst
        self._url = redis_url
        self._prefix = prefix
        self._redis: Any = None
        self._script: Any = None
        self._local: dict[str, tuple[float, float]] = {}
        self._warned = 0.0
        self._down_until = 0.0

    async def __call__(self, key: str) -> float:
        """Takes one token for ``key``.

        Args:
            key: The API key prefix.

        Returns:
            0 if the request may proceed, else the seconds until a token is available.
        """
        if self._url is None:
            return self._take_local(key)
        if time.monotonic() < self._down_until:
            return 0.0  # Redis failed a moment ago: don't make every request wait for it
        try:
            if self._script is None:
                import redis.asyncio as aioredis

                self._redis = aioredis.Redis.from_url(
                    self._url, socket_timeout=0.5, socket_connect_timeout=0.5
                )
                self._script = self._redis.register_script(BUCKET_SCRIPT)
            result = await self._script(keys=[self._prefix + key], args=[self.rate, self.burst])
            return float(result)
        except Exception as exc:  # fail open: the limiter must not take the API down
            now = time.monotonic()
            self._down_until = now + 5.0
            if now - self._warned > 30:
                self._warned = now
                log.warning("rate limiter: Redis unavailable (%r); requests are not limited", exc)
            return 0.0

    def _take_local(self, key: str) -> float:
        now = time.monotonic()
        tokens, ts = self._local.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - ts) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._local[key] = (tokens, now)
        return wait

    async def close(self) -> None:
        """Closes the Redis connection."""
        if self._redis is not None:
            redis_client, self._redis, self._script = self._redis, None, None
            try:
                await asyncio.wait_for(redis_client.aclose(), 2)
            except Exception:  # noqa: S110 - closing a dead connection is best effort
                pass


UPLOAD_ROUTE = re.compile(r"(:upload|/uploads?|/files|:import|/imports)$")
"""Route path templates whose bodies are files, capped by the upload limit instead."""


def _too_large(limit: int, *, upload: bool = False) -> dict[str, Any]:
    if upload:
        # The same answer as the file store's own cap: one limit per route, one error.
        return error_body(
            "RESOURCE_EXHAUSTED",
            f"the uploaded file is larger than the {limit}-byte limit of this route (the smaller"
            " of CONVEYOR_SECURITY__MAX_UPLOAD_BYTES and CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES);"
            " split it or compress it with gzip",
            http_code=413,
            reason="UPLOAD_TOO_LARGE",
            metadata={"limit_bytes": str(limit)},
        )
    return error_body(
        "OUT_OF_RANGE",
        f"request body is larger than {limit} bytes, the limit of this route",
        http_code=413,
        reason="REQUEST_TOO_LARGE",
        metadata={"limit_bytes": str(limit)},
    )


class _TooLarge(HTTPException):
    """413 raised while the body streams in; carries its full AIP-193 body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(413, body["error"]["message"])
        self.body = body


@dataclasses.dataclass(frozen=True)
class RouteInfo:
    """One HTTP route, flattened out of included routers.

    Attributes:
        path: Path template, e.g. ``/v1/operations/{operation_id}:cancel``.
        methods: HTTP methods.
        openapi_extra: The route's ``openapi_extra`` (``{"x-upload": True}`` marks uploads).
        pattern: Compiled matcher of ``path``.
    """

    path: str
    methods: frozenset[str]
    openapi_extra: dict[str, Any]
    pattern: re.Pattern[str]


def flat_routes(routes: Sequence[Any]) -> list[RouteInfo]:
    """Flattens routes, including those of included routers (FastAPI nests them).

    Args:
        routes: ``app.routes``.

    Returns:
        Every route with a path, in routing order.
    """
    found: list[RouteInfo] = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                original = getattr(context, "original_route", context)
                path = getattr(context, "path", "") or getattr(original, "path", "")
                methods = getattr(original, "methods", None) or set()
                extra = getattr(context, "openapi_extra", None) or {}
                if path:
                    found.append(
                        RouteInfo(path, frozenset(methods), dict(extra), compile_path(path)[0])
                    )
            continue
        path = getattr(route, "path", "")
        if path:
            methods = getattr(route, "methods", None) or set()
            extra = getattr(route, "openapi_extra", None) or {}
            found.append(RouteInfo(path, frozenset(methods), dict(extra), compile_path(path)[0]))
    return found


class BodyLimitMiddleware:
    """Caps request bodies per route: JSON routes at ``max_body_bytes``, upload routes (see
    :data:`UPLOAD_ROUTE`, or ``openapi_extra={"x-upload": True}``) at ``max_upload_bytes``.

    A declared ``Content-Length`` over the cap is refused before the body is read; a chunked body
    is counted as it streams and refused once it passes the cap (413 OUT_OF_RANGE).
    """

    def __init__(
        self, app: ASGIApp, *, routes: Any, max_body_bytes: int, max_upload_bytes: int
    ) -> None:
        """Wraps ``app``.

        Args:
            app: The ASGI app.
            routes: A callable returning the app's routes (resolved per request).
            max_body_bytes: Cap of ordinary routes.
            max_upload_bytes: Cap of upload routes.
        """
        self.app = app
        self._routes = routes
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self._flat: list[RouteInfo] | None = None  # built on the first request

    def limit_for(self, scope: Scope) -> int:
        """Returns the body cap of the route ``scope`` goes to.

        Args:
            scope: ASGI scope.

        Returns:
            Bytes.
        """
        return self._route_limit(scope)[0]

    def _route_limit(self, scope: Scope) -> tuple[int, bool]:
        if self._flat is None:
            self._flat = flat_routes(self._routes())
        path, method = scope.get("path", ""), scope.get("method", "")
        for route in self._flat:
            if method in route.methods and route.pattern.match(path):
                if route.openapi_extra.get("x-upload") or UPLOAD_ROUTE.search(route.path):
                    return self.max_upload_bytes, True
                break
        return self.max_body_bytes, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handles one ASGI call.

        Args:
            scope: ASGI scope.
            receive: ASGI receive.
            send: ASGI send.
        """
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit, upload = self._route_limit(scope)
        declared = None
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > limit:
            await JSONResponse(_too_large(limit, upload=upload), status_code=413)(
                scope, receive, send
            )
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body parsing: an AIP-193 413.
                    raise _TooLarge(_too_large(limit, upload=upload))
            return message

        await self.app(scope, counted, send)
