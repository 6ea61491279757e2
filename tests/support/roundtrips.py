"""Counts PostgreSQL round trips on the wire: a TCP proxy in front of the test server.

A round trip is a turn of the conversation: the client sends (one or more packets) after the
server has answered. Pre-ping, BEGIN, each statement, COMMIT and ROLLBACK are one each, whatever
library sent them, so a count is stable where times are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import Self


class RoundTripCounter:
    """``async with RoundTripCounter(host, port) as proxy``: point a URL at ``proxy.port``."""

    def __init__(self, host: str, port: int) -> None:
        """Creates the proxy (it listens on ``async with``).

        Args:
            host: PostgreSQL host.
            port: PostgreSQL port.
        """
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.turns = 0
        self.port = 0

    def url(self, url: str) -> str:
        """Returns ``url`` with its host and port replaced by the proxy's.

        Args:
            url: A database URL of the proxied server.

        Returns:
            The URL through the proxy.
        """
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        answered = [True]  # the first packet of a connection is a turn too

        async def pump(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool
        ) -> None:
            try:
                while data := await reader.read(65536):
                    if from_client:
                        if answered[0]:
                            self.turns += 1
                            answered[0] = False
                    else:
                        answered[0] = True
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        for reader, writer, from_client in (
            (client_r, server_w, True),
            (server_r, client_w, False),
        ):
            task = asyncio.ensure_future(pump(reader, writer, from_client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
