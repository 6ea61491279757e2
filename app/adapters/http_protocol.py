"""The API's HTTP/1.1 protocol: uvicorn's httptools parser with h11's cap on a request's head.

uvicorn's ``h11`` protocol refuses a request line + headers that grow past
``h11_max_incomplete_event_size`` (so a client trickling endless headers cannot fill memory),
but h11 is pure Python: it cost ~8% of the API's CPU per submit in the submit benchmark.
``httptools`` (llhttp, in C) is uvicorn's fast parser but buffers an unfinished head without
a bound. :class:`CappedHttpToolsProtocol` keeps the fast parser and adds h11's cap: reads that
leave the current request's head unfinished are counted, and past the cap the client gets
``400`` and the connection closes. As with h11, a head that arrives whole is parsed however
long it is (the app answers a too-long URL itself). The count starts again when a request
begins, so it may run one read past the cap; it bounds memory, as h11's does.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CappedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses a request head larger than the config's
    ``h11_max_incomplete_event_size``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_cap: int = self.config.h11_max_incomplete_event_size or 16 * 1024
        self._head_open = True  # before the first request, bytes are its head
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        """Parser callback: a request begins, so its head's count starts at 0."""
        super().on_message_begin()
        self._head_open, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        """Parser callback: the head is complete, so the body is not counted."""
        self._head_open = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        """Feeds the parser, unless the unfinished head has grown past the cap.

        Args:
            data: Bytes read from the client.
        """
        if self._head_open and b"\r\n\r\n" not in data:
            # As h11 does, only a head still unfinished counts (a whole one read at once is
            # parsed, however long): what the parser must hold while the client goes on.
            self._head_bytes += len(data)
            if self._head_bytes > self._head_cap:
                self.logger.warning(
                    "request line and headers over %d bytes refused", self._head_cap
                )
                self.send_400_response("Request line and headers too large.")
                return
        super().data_received(data)
