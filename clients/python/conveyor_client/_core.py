"""Request descriptions and the retry policy shared by the sync and asyncio clients.

Resources describe each API call as a :class:`Call` (sans I/O); :class:`SyncCore` and
:class:`AsyncCore` send it with one retry policy:

- a connection that could not be opened is retried for every call (nothing reached the server);
- 429 is retried for every call: the API refuses it before any handler runs;
- 503, timeouts and connections dropped mid-request are retried only for calls that are safe to
  repeat: reads, and creates carrying a ``request_id`` (AIP-155: the server answers a repeated
  ``request_id`` with the first result instead of doing the work twice);
- waits honour ``Retry-After`` (capped), else exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, Any

import httpx

from conveyor_client import errors

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
USER_AGENT = "conveyor-client-python/0.1"
CHUNK = 64 * 1024

Upload = str | os.PathLike[str] | IO[bytes] | bytes
"""A file to upload: a path, a binary file object (streamed) or bytes."""


def new_request_id() -> str:
    """Returns a fresh ``request_id`` (random UUID) for an idempotent create."""
    return str(uuid.uuid4())


@dataclasses.dataclass
class Call:
    """One API call, described without doing I/O.

    Attributes:
        method: HTTP method.
        path: Path under the base URL.
        params: Query parameters (``None`` values are dropped).
        json: JSON body.
        upload: File to stream as the raw body.
        headers: Extra headers.
        repeatable: Safe to send again after it may have reached the server (reads, creates
            with a request_id).
        timeout: Read timeout for this call (long polls), else the client's.
        accept_json: Whether a JSON answer is expected (``False`` for downloads).
    """

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    upload: Upload | None = None
    headers: dict[str, str] | None = None
    repeatable: bool = False
    timeout: float | None = None
    accept_json: bool = True

    def query(self) -> dict[str, Any] | None:
        """Returns the query parameters without ``None`` values."""
        if not self.params:
            return None
        return {k: v for k, v in self.params.items() if v is not None}


@dataclasses.dataclass
class RetryPolicy:
    """How often and how long to retry.

    Attributes:
        max_retries: Retries after the first try (0 disables retrying).
        backoff_base: First backoff in seconds (doubled per retry, with jitter).
        backoff_max: Longest backoff without Retry-After.
        retry_after_max: Longest wait honoured from a Retry-After header.
    """

    max_retries: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    retry_after_max: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        Args:
            retry: Retries already made.
            retry_after: The server's Retry-After, if any.

        Returns:
            The delay.
        """
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_base * (2**retry))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _retry_status(call: Call, response: httpx.Response) -> bool:
    if response.status_code == 429:
        return True
    return response.status_code == 503 and call.repeatable


def _retry_exception(call: Call, exc: httpx.TransportError) -> bool:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True  # the request never left
    return call.repeatable


def _failure(base_url: str, exc: httpx.TransportError) -> errors.ConnectionFailed:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return errors.ConnectionFailed(f"request to {base_url} {kind}: {exc or type(exc).__name__}")


def _headers(api_key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"accept": "application/json", "user-agent": USER_AGENT}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def _sync_body(upload: Upload) -> tuple[Any, Callable[[], None]]:
    """Returns ``(content, close)`` for one try of an upload (a path is opened afresh)."""
    if isinstance(upload, bytes):
        return upload, _nothing
    if isinstance(upload, str | os.PathLike):
        handle = open(upload, "rb")

        def chunks() -> Iterator[bytes]:
            while block := handle.read(CHUNK):
                yield block

        return chunks(), handle.close
    fileobj = upload

    def from_file() -> Iterator[bytes]:
        while block := fileobj.read(CHUNK):
            yield block

    return from_file(), _nothing


def _async_body(upload: Upload) -> tuple[Any, Callable[[], None]]:
    """Like :func:`_sync_body`, as an async iterator (file reads run in a thread)."""
    if isinstance(upload, bytes):
        return upload, _nothing
    if isinstance(upload, str | os.PathLike):
        handle: IO[bytes] = open(upload, "rb")
        close = handle.close
    else:
        handle = upload
        close = _nothing

    async def chunks() -> AsyncIterator[bytes]:
        while block := await asyncio.to_thread(handle.read, CHUNK):
            yield block

    return chunks(), close


def _nothing() -> None:
    return None


def _start(upload: Upload | None) -> int | None:
    """Position a seekable file object's upload starts at (to rewind it for a retry)."""
    if upload is None or isinstance(upload, bytes | str | os.PathLike):
        return None
    return upload.tell() if upload.seekable() else None


def _rewind(upload: Upload | None, start: int | None) -> None:
    if start is not None and not isinstance(upload, bytes | str | os.PathLike | None):
        upload.seek(start)


def _rewindable(upload: Upload | None) -> bool:
    if upload is None or isinstance(upload, bytes | str | os.PathLike):
        return True
    return upload.seekable()


class SyncCore:
    """Sends :class:`Call` s with httpx (blocking)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None,
        headers: dict[str, str] | None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=_headers(api_key, headers),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Closes the connection pool."""
        self.http.close()

    def send(self, call: Call, *, stream: bool = False) -> httpx.Response:
        """Sends ``call`` with the retry policy; raises the typed error of an error answer.

        Args:
            call: The call.
            stream: Return without reading the body (the caller closes the response).

        Returns:
            The successful response.

        Raises:
            errors.ApiError: The API answered an error (after retries).
            errors.ConnectionFailed: The API could not be reached (after retries).
        """
        retries = 0
        can_resend = _rewindable(call.upload)
        start = _start(call.upload)
        while True:
            if retries:
                _rewind(call.upload, start)
            content, close = _sync_body(call.upload) if call.upload is not None else (None, None)
            timeout = (
                httpx.Timeout(self.timeout, read=call.timeout + self.timeout)
                if call.timeout
                else httpx.USE_CLIENT_DEFAULT
            )
            try:
                request = self.http.build_request(
                    call.method,
                    call.path,
                    params=call.query(),
                    json=call.json,
                    content=content,
                    headers=call.headers,
                    timeout=timeout,
                )
                response = self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                if retries < self.retry.max_retries and _retry_exception(call, exc) and can_resend:
                    self.sleep(self.retry.delay(retries, None))
                    retries += 1
                    continue
                raise _failure(self.base_url, exc) from exc
            finally:
                if close is not None:
                    close()
            if response.status_code < 400:
                if not stream:
                    response.read()
                    response.close()
                return response
            response.read()
            response.close()
            if retries < self.retry.max_retries and _retry_status(call, response) and can_resend:
                self.sleep(self.retry.delay(retries, errors.retry_after_seconds(response)))
                retries += 1
                continue
            raise errors.from_response(response)

    def download(self, call: Call, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Streams the body of ``call`` into ``dest`` (never held whole in memory).

        Args:
            call: The call.
            dest: Path or binary file object.

        Returns:
            Bytes written.
        """
        response = self.send(call, stream=True)
        written = 0
        try:
            if isinstance(dest, str | os.PathLike):
                with open(dest, "wb") as out:
                    for block in response.iter_bytes(CHUNK):
                        written += out.write(block)
            else:
                for block in response.iter_bytes(CHUNK):
                    written += dest.write(block)
        finally:
            response.close()
        return written

    def json(self, call: Call) -> Any:
        """Sends ``call`` and returns the decoded JSON body.

        Args:
            call: The call.

        Returns:
            The JSON value.
        """
        return self.send(call).json()


class AsyncCore:
    """Sends :class:`Call` s with httpx (asyncio)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.AsyncBaseTransport | None,
        headers: dict[str, str] | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(api_key, headers),
            timeout=timeout,
            transport=transport,
        )

    async def sleep(self, seconds: float) -> None:
        """Waits ``seconds`` (a method so tests can observe the waits)."""
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        """Closes the connection pool."""
        await self.http.aclose()

    async def send(self, call: Call, *, stream: bool = False) -> httpx.Response:
        """Async twin of :meth:`SyncCore.send`.

        Args:
            call: The call.
            stream: Return without reading the body (the caller closes the response).

        Returns:
            The successful response.

        Raises:
            errors.ApiError: The API answered an error (after retries).
            errors.ConnectionFailed: The API could not be reached (after retries).
        """
        retries = 0
        can_resend = _rewindable(call.upload)
        start = _start(call.upload)
        while True:
            if retries:
                _rewind(call.upload, start)
            content, close = _async_body(call.upload) if call.upload is not None else (None, None)
            timeout = (
                httpx.Timeout(self.timeout, read=call.timeout + self.timeout)
                if call.timeout
                else httpx.USE_CLIENT_DEFAULT
            )
            try:
                request = self.http.build_request(
                    call.method,
                    call.path,
                    params=call.query(),
                    json=call.json,
                    content=content,
                    headers=call.headers,
                    timeout=timeout,
                )
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                if retries < self.retry.max_retries and _retry_exception(call, exc) and can_resend:
                    await self.sleep(self.retry.delay(retries, None))
                    retries += 1
                    continue
                raise _failure(self.base_url, exc) from exc
            finally:
                if close is not None:
                    close()
            if response.status_code < 400:
                if not stream:
                    await response.aread()
                    await response.aclose()
                return response
            await response.aread()
            await response.aclose()
            if retries < self.retry.max_retries and _retry_status(call, response) and can_resend:
                await self.sleep(self.retry.delay(retries, errors.retry_after_seconds(response)))
                retries += 1
                continue
            raise errors.from_response(response)

    async def download(self, call: Call, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Streams the body of ``call`` into ``dest`` (file writes run in a thread).

        Args:
            call: The call.
            dest: Path or binary file object.

        Returns:
            Bytes written.
        """
        response = await self.send(call, stream=True)
        written = 0
        out: IO[bytes] = (
            open(dest, "wb")  # noqa: ASYNC230 - closed below
            if isinstance(dest, str | os.PathLike)
            else dest
        )
        try:
            async for block in response.aiter_bytes(CHUNK):
                written += await asyncio.to_thread(out.write, block)
        finally:
            await response.aclose()
            if out is not dest:
                out.close()
        return written

    async def json(self, call: Call) -> Any:
        """Sends ``call`` and returns the decoded JSON body.

        Args:
            call: The call.

        Returns:
            The JSON value.
        """
        return (await self.send(call)).json()
