"""ASGI middleware: request id (``X-Request-Id`` in, echoed out) for correlation, and the
read-your-writes fence of a caller's replica reads.
"""

from __future__ import annotations

import contextvars
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domains.shared.consistency import read_fence
from domains.shared.errors import InvalidArgument
from domains.shared.ids import random_hex

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdMiddleware:
    """Takes ``X-Request-Id`` (or makes one), exposes it in ``request.state.request_id`` and a
    context variable, and echoes it on the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wraps ``app``.

        Args:
            app: The ASGI app.
        """
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handles one ASGI call.

        Args:
            scope: ASGI scope.
            receive: ASGI receive.
            send: ASGI send.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID.match(incoming) else random_hex(16)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


CONSISTENCY_TOKEN_HEADER = "x-conveyor-consistency-token"  # noqa: S105 - a header name
"""Response header of a successful write, and request header a later read may send back."""

_TOKEN = re.compile(r"^\d{1,12}(\.\d{1,9})?$")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReadYourWritesMiddleware:
    """Makes a caller's lists show its own writes although lists read a lagging replica.

    A successful write (any ``/v1`` call but GET/HEAD/OPTIONS, :wait included, since it is how
    a caller learns a job's outcome) records the time per API key and answers with
    ``X-Conveyor-Consistency-Token``. A later request by the same key in this process, or any
    request sending such a token (which works across API processes and callers), sets
    :data:`domains.shared.consistency.read_fence`: its replica reads then go to the primary
    until the replica has replayed past that time.
    """

    def __init__(self, app: ASGIApp, *, window_seconds: float) -> None:
        """Wraps ``app``.

        Args:
            app: The ASGI app.
            window_seconds: How long a key's last write is remembered; older writes are on any
                replica within the maximum lag anyway.
        """
        self.app = app
        self._window = window_seconds
        self._writes: dict[str, float] = {}

    def _fence(self, who: str | None, header: str | None, now: float) -> float | None:
        fence = self._writes.get(who) if who is not None else None
        if fence is not None and fence < now - self._window:
            fence = None
        if header is not None:
            if not _TOKEN.match(header):
                raise InvalidArgument(
                    f"{CONSISTENCY_TOKEN_HEADER} must be the value a write response carried"
                    f" (seconds, like 1764870000.123456); got {header[:40]!r}",
                    reason="INVALID_CONSISTENCY_TOKEN",
                )
            # A token from the future cannot ask for more than "everything written until now".
            token = min(float(header), now)
            fence = token if fence is None else max(fence, token)
        return fence

    def _remember(self, who: str, at: float) -> None:
        self._writes[who] = at
        if len(self._writes) > 10000:  # bounded: forget writes older than the window
            horizon = at - self._window
            self._writes = {k: v for k, v in self._writes.items() if v >= horizon}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handles one ASGI call.

        Args:
            scope: ASGI scope.
            receive: ASGI receive.
            send: ASGI send.
        """
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        who = None
        if principal is not None:
            who = principal.key_id or f"tenant:{principal.tenant}"
        raw = dict(scope.get("headers") or []).get(CONSISTENCY_TOKEN_HEADER.encode())
        header = raw.decode("latin-1").strip() if raw is not None else None
        fence = self._fence(who, header, time.time())
        writes = scope.get("method", "GET") not in _SAFE_METHODS

        async def send_with_token(message: Message) -> None:
            if (
                writes
                and message["type"] == "http.response.start"
                and 200 <= int(message["status"]) < 300
            ):
                # After the handler committed: everything it wrote is before this time.
                at = time.time()
                if who is not None:
                    self._remember(who, at)
                token = f"{at:.6f}".encode()
                message.setdefault("headers", []).append((CONSISTENCY_TOKEN_HEADER.encode(), token))
            await send(message)

        reset = read_fence.set(fence)
        try:
            await self.app(scope, receive, send_with_token if writes else send)
        finally:
            read_fence.reset(reset)
