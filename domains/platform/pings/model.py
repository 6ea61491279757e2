"""Ping: a diagnostic workflow that goes through the whole pipeline (API, outbox, broker, worker)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from domains.shared.errors import InvalidArgument

MAX_SLEEP_SECONDS = 600.0
MAX_STEPS = 1000
MAX_FAIL_ATTEMPTS = 20


@dataclasses.dataclass
class Ping:
    """A ping and its reply.

    Attributes:
        id: Ping id (the resource is ``pings/{id}``).
        message: Text echoed back in the reply.
        sleep_seconds: How long the worker works on it (split into ``steps`` units).
        steps: Units of work; progress and cancellation are checked between them.
        fail_attempts: The first N attempts fail with a transient error (exercises retries).
        operation_id: The operation carrying it out.
        create_time: Creation time.
        complete_time: When the reply was written.
        reply: ``pong: <message>`` once done.
        worker: Host name of the worker that answered.
        completions: How many times the reply was written; exactly 1 once done.
        tenant: Tenant of the principal that sent it; only that tenant sees it.
    """

    id: uuid.UUID
    message: str
    sleep_seconds: float
    steps: int
    fail_attempts: int
    operation_id: uuid.UUID
    create_time: dt.datetime
    complete_time: dt.datetime | None = None
    reply: str | None = None
    worker: str | None = None
    completions: int = 0
    tenant: str = "default"

    @property
    def name(self) -> str:
        """Resource name ``pings/{id}``."""
        return f"pings/{self.id}"

    @staticmethod
    def validate(message: str, sleep_seconds: float, steps: int, fail_attempts: int) -> None:
        """Checks the inputs of a new ping.

        Args:
            message: Text to echo.
            sleep_seconds: Work duration.
            steps: Units of work.
            fail_attempts: Attempts that fail on purpose.

        Raises:
            InvalidArgument: Naming the bad field.
        """
        if len(message) > 1000:
            raise InvalidArgument(
                "message must be at most 1000 characters", metadata={"field": "message"}
            )
        if not 0 <= sleep_seconds <= MAX_SLEEP_SECONDS:
            raise InvalidArgument(
                f"sleep_seconds must be between 0 and {MAX_SLEEP_SECONDS:g}",
                metadata={"field": "sleep_seconds"},
            )
        if not 1 <= steps <= MAX_STEPS:
            raise InvalidArgument(
                f"steps must be between 1 and {MAX_STEPS}", metadata={"field": "steps"}
            )
        if not 0 <= fail_attempts <= MAX_FAIL_ATTEMPTS:
            raise InvalidArgument(
                f"fail_attempts must be between 0 and {MAX_FAIL_ATTEMPTS}",
                metadata={"field": "fail_attempts"},
            )

    def answer(self, now: dt.datetime, worker: str) -> None:
        """Writes the reply. No guard against a second answer on purpose: the operation's fencing
        token is what makes it happen once, and ``completions`` (with the effect log) shows it.

        Args:
            now: Current time.
            worker: Answering worker.
        """
        self.reply = f"pong: {self.message}"
        self.worker = worker
        self.complete_time = now
        self.completions += 1
