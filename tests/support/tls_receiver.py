"""A real HTTPS webhook receiver speaking HTTP/2 and HTTP/1.1 (hypercorn in a thread, with a
certificate for ``localhost`` from a trustme test CA): it records each request's HTTP version,
client port and signature headers, and answers ``<http version> <client port>``; ``/slow...``
paths wait 0.2 s first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import socket
import threading
import time
from typing import Any

import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config

from app.runtime.embedded import find_free_port


@dataclasses.dataclass
class TlsRequest:
    """One request as the receiver saw it."""

    path: str
    http_version: str
    client_port: int
    headers: dict[str, str]
    body: bytes


class TlsReceiver:
    """Context manager: the server runs between ``__enter__`` and ``__exit__``."""

    def __init__(self, directory: pathlib.Path, *, max_requests: int = 1000) -> None:
        """Creates the CA, the certificate and the server's settings (not started yet).

        Args:
            directory: Where the PEM files go (``ca_file`` is the one clients trust).
            max_requests: Requests per connection before the server ends it (hypercorn's
                default, like nginx's ``keepalive_requests``).
        """
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        self.ca_file = str(directory / "ca.pem")
        chain, key = directory / "chain.pem", directory / "key.pem"
        ca.cert_pem.write_to_path(self.ca_file)
        cert.private_key_pem.write_to_path(str(key))
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        self.port = find_free_port()
        self.requests: list[TlsRequest] = []
        self.in_flight = 0
        self.peak = 0
        self._config = Config()
        self._config.bind = [f"127.0.0.1:{self.port}"]
        self._config.certfile, self._config.keyfile = str(chain), str(key)
        self._config.alpn_protocols = ["h2", "http/1.1"]
        self._config.loglevel = "WARNING"
        self._config.keep_alive_max_requests = max_requests
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str) -> str:
        """The URL of ``path`` by host name (the certificate's; it resolves to 127.0.0.1)."""
        return f"https://localhost:{self.port}{path}"

    def received(self, path: str) -> list[TlsRequest]:
        """The requests to ``path`` so far."""
        return [r for r in list(self.requests) if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[TlsRequest]:
        """Waits until ``count`` requests to ``path`` arrived; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(path)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{len(self.received(path))} requests to {path}, not {count}")

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if scope["path"].startswith("/slow"):
                await asyncio.sleep(0.2)
        finally:
            self.in_flight -= 1
        version, port = scope["http_version"], scope["client"][1]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append(TlsRequest(scope["path"], version, port, headers, body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{version} {port}".encode()})

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self._app, self._config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        self._loop.run_until_complete(main())

    def __enter__(self) -> TlsReceiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the HTTPS receiver did not start")

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
