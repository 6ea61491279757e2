"""What the webhooks domain needs from the outside world, as protocols (implemented in ``app/``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from domains.shared.ssrf import IpAddress
from domains.webhooks.model import SendResult


class Sender(Protocol):
    """Sends one webhook request (an async HTTP client reused per process)."""

    async def send(
        self,
        url: str,
        addresses: Sequence[IpAddress],
        headers: Mapping[str, str],
        body: bytes,
    ) -> SendResult:
        """POSTs ``body`` to ``url``, connecting only to ``addresses`` (checked by the SSRF guard).

        Redirects are not followed; the result carries at most 4 KB of the response body.
        """


class RateLimiter(Protocol):
    """A global (cross-process) request rate limit per key."""

    async def acquire(self, key: str, per_second: float) -> float:
        """Takes one request slot; returns 0 if granted, else seconds to wait before trying."""


class NoRateLimit:
    """A limiter that always grants (tests, or no shared store)."""

    async def acquire(self, key: str, per_second: float) -> float:
        """Grants every request.

        Args:
            key: Ignored.
            per_second: Ignored.

        Returns:
            0.
        """
        return 0.0
