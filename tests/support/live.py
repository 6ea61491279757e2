"""The API on a real socket (uvicorn in a thread), for clients that speak HTTP: the Python
client's sync half and the browser tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def live_api(settings: Any, celery: Any) -> Iterator[str]:
    """Serves ``create_app(settings)`` on 127.0.0.1 at a free port; yields its base URL.

    Args:
        settings: Settings.
        celery: The Celery app the API publishes with.

    Yields:
        ``http://127.0.0.1:<port>``.
    """
    import uvicorn

    from app.main import create_app

    app = create_app(settings, celery=celery)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live API did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
