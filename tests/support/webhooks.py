"""A real webhook receiver for tests and benchmarks: a threaded HTTP server on 127.0.0.1 whose
answers are programmed per path (200, 500, 429 + Retry-After, hang, close the connection),
and a reference verifier of Standard Webhooks signatures written from the spec.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import http.server
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the receiver does with one request.

    Attributes:
        status: HTTP status to answer.
        body: Response body.
        headers: Extra response headers (e.g. ``Retry-After``).
        hang: Seconds to wait before answering (longer than the sender's timeout = a hang).
        close: Close the connection without any response.
    """

    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    hang: float = 0.0
    close: bool = False


OK = Answer()
ERROR = Answer(status=500, body=b"boom")


def too_many(retry_after: float) -> Answer:
    """A 429 with ``Retry-After`` (seconds)."""
    return Answer(status=429, body=b"slow down", headers=(("Retry-After", f"{retry_after:g}"),))


@dataclasses.dataclass(frozen=True)
class Received:
    """One request the receiver got.

    Attributes:
        time: ``time.monotonic()`` on arrival.
        path: Request path.
        headers: Lower-cased headers.
        body: Raw body.
        peer_port: The sender's port (one per connection).
    """

    time: float
    path: str
    headers: dict[str, str]
    body: bytes
    peer_port: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        receiver = self.server.receiver
        answer = receiver._record(
            Received(
                time=time.monotonic(),
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                peer_port=int(self.client_address[1]),
            )
        )
        try:
            self._answer(answer)
        finally:
            receiver._done(self.path)

    def _answer(self, answer: Answer) -> None:
        if answer.close:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if answer.hang:
            time.sleep(answer.hang)
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    receiver: Receiver


class Receiver:
    """The programmable receiver; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, deque[Answer]] = defaultdict(deque)
        self._defaults: dict[str, Answer] = {}
        self.requests: list[Received] = []
        self._in_flight: Counter[str] = Counter()
        self._most_in_flight: Counter[str] = Counter()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.port = int(self._server.server_address[1])

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, *answers: Answer, then: Answer | None = None) -> None:
        """Answers the next requests on ``path`` with ``answers`` in order, then ``then``
        (default: the path's previous default, else 200)."""
        with self._lock:
            self._plans[path].extend(answers)
            if then is not None:
                self._defaults[path] = then

    def set_default(self, path: str, answer: Answer) -> None:
        with self._lock:
            self._plans[path].clear()
            self._defaults[path] = answer

    def _record(self, request: Received) -> Answer:
        with self._lock:
            self.requests.append(request)
            self._in_flight[request.path] += 1
            self._most_in_flight[request.path] = max(
                self._most_in_flight[request.path], self._in_flight[request.path]
            )
            plan = self._plans.get(request.path)
            if plan:
                return plan.popleft()
            return self._defaults.get(request.path, OK)

    def _done(self, path: str) -> None:
        with self._lock:
            self._in_flight[path] -= 1

    def most_in_flight(self, path: str) -> int:
        """The most requests on ``path`` the receiver was answering at one time."""
        with self._lock:
            return self._most_in_flight[path]

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def count(self, path: str | None = None) -> int:
        with self._lock:
            if path is None:
                return len(self.requests)
            return sum(1 for r in self.requests if r.path == path)

    def wait_for(self, path: str, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(
            f"{path}: {len(self.received(path))} of {count} requests in {timeout}s"
        )


def verify_signature(
    secrets: list[str],
    headers: dict[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Reference verifier written from the Standard Webhooks spec (not from Conveyor's code).

    The signed content is ``msg_id + "." + timestamp + "." + body``; the key is the
    base64-decoded part of ``whsec_<base64>``; ``webhook-signature`` is a space-separated list
    of ``v1,<base64 HMAC-SHA256>``; any one matching signature by any accepted secret
    verifies. The timestamp must be within ``tolerance`` seconds of now (replay protection).
    """
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    content = f"{msg_id}.{timestamp}.".encode() + body
    for secret in secrets:
        key = base64.b64decode(secret.split("_", 1)[1])
        expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for part in headers["webhook-signature"].split(" "):
            version, _, signature = part.partition(",")
            if version == "v1" and hmac.compare_digest(signature, expected):
                return True
    return False
