"""Fetches an import's ``source_uri`` in the worker (httpx, streamed, SSRF-guarded)."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx

from app.adapters.webhooks_http import pinned_url
from domains.imports.storage import FileWriter
from domains.shared.errors import PermanentError, TransientError
from domains.shared.ssrf import UrlGuard

PRIVATE_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
)
"""Ranges ``allow_private_sources`` opens (never link-local / cloud metadata)."""


def source_guard(allowlist: list[str], *, allow_private: bool) -> UrlGuard:
    """Builds the guard for ``source_uri`` from the imports settings.

    Args:
        allowlist: ``CONVEYOR_IMPORTS__SOURCE_ALLOWLIST`` entries.
        allow_private: ``CONVEYOR_IMPORTS__ALLOW_PRIVATE_SOURCES``.

    Returns:
        The guard.
    """
    return UrlGuard.from_allowlist(
        [*allowlist, *(PRIVATE_NETWORKS if allow_private else ())],
        "CONVEYOR_IMPORTS__SOURCE_ALLOWLIST",
    )


class HttpSourceFetcher:
    """Streams an http(s) source into the import store."""

    def __init__(self, guard: UrlGuard, *, timeout: float = 60.0) -> None:
        """Creates the fetcher.

        Args:
            guard: SSRF guard, checked right before the request (DNS may have changed).
            timeout: Seconds for connect/read.
        """
        self._guard = guard
        self._timeout = timeout

    async def fetch(self, url: str, writer: FileWriter) -> None:
        """Downloads ``url`` into ``writer``; redirects are not followed (they would skip
        the guard).

        Args:
            url: http(s) URL.
            writer: Destination (enforces the size cap).

        Raises:
            UnsafeUrl: If the URL reaches a refused address.
            PermanentError: On a 4xx or a redirect.
            TransientError: On network errors or a 5xx.
        """
        addresses = await self._guard.check(url)
        # Connect to the address the guard checked, not to a second DNS answer (rebinding).
        target, host_header = pinned_url(url, addresses[0])
        extensions: dict[str, Any] = {}
        if url.lower().startswith("https:"):
            extensions["sni_hostname"] = urllib.parse.urlsplit(url).hostname  # TLS checks the name
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=False, trust_env=False
            ) as client:
                async with client.stream(
                    "GET", target, headers={"host": host_header}, extensions=extensions
                ) as response:
                    if 300 <= response.status_code < 400:
                        raise PermanentError(
                            f"source_uri answered a redirect ({response.status_code}) to"
                            f" {response.headers.get('location', '?')!r}; give the final URL"
                        )
                    if response.status_code >= 500 or response.status_code == 429:
                        raise TransientError(f"source_uri answered HTTP {response.status_code}")
                    if response.status_code >= 400:
                        raise PermanentError(
                            f"source_uri answered HTTP {response.status_code}; check the URL"
                            " and that it is readable without credentials"
                        )
                    async for block in response.aiter_raw(256 * 1024):
                        writer.write(block)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"fetching source_uri failed: {type(exc).__name__}: {exc}"
            ) from None
