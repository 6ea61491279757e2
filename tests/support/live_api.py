"""A real uvicorn server on a free port, in this event loop, for tests that need a socket
(keep-alive connections, what uvicorn itself logs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn

from app.runtime.embedded import find_free_port


@contextlib.asynccontextmanager
async def serve(app: Any, **client: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Serves ``app`` with uvicorn (h11, as ``conveyor api``) and yields one keep-alive client.

    Args:
        app: The ASGI app.
        **client: Extra ``httpx.AsyncClient`` arguments (headers...).

    Yields:
        A client on ``http://127.0.0.1:<port>`` (one pooled connection).
    """
    port = find_free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http="h11", log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10, **client
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response`` (same port: the
    keep-alive connection survived)."""
    stream = response.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])
