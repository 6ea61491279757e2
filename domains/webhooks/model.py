"""Webhook endpoints, deliveries and attempts: the rules, without I/O.

- An **endpoint** receives the events whose type matches one of its patterns (``fnmatch``,
  e.g. ``imports.*``). It has a signing secret (and the previous one during a rotation), an
  optional rate limit, and a circuit breaker.
- A **delivery** is one event for one endpoint. Its id is the ``webhook-id`` header, stable
  across attempts, so receivers can drop duplicates.
- An **attempt** is one HTTP request of a delivery and what came back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import fnmatch
import random
import re
import uuid
from typing import Any

from domains.shared.errors import InvalidArgument

MAX_EVENT_TYPES = 50
MAX_DESCRIPTION = 1000
RESPONSE_BODY_LIMIT = 4096
"""Bytes of a response body kept on an attempt."""

EVENT_TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_*?\[\]!-]+(\.[A-Za-z0-9_*?\[\]!-]+)*$")
EVENT_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)+$")
RESERVED_PREFIX = "webhooks."
"""Event types of this domain itself: never delivered as webhooks (no loops)."""


class DeliveryState(enum.StrEnum):
    """Life cycle of a delivery."""

    PENDING = "PENDING"
    """Waiting for its next attempt (``next_attempt_time``)."""
    SENDING = "SENDING"
    """An attempt is in flight (until ``lease_until``)."""
    SUCCEEDED = "SUCCEEDED"
    """The endpoint answered 2xx."""
    FAILED = "FAILED"
    """The endpoint answered a permanent 4xx; not retried."""
    DEAD = "DEAD"
    """Every attempt of the schedule failed."""
    PAUSED = "PAUSED"
    """Held while the endpoint's breaker is open or the endpoint is disabled (not dropped)."""


FINAL_STATES = frozenset({DeliveryState.SUCCEEDED, DeliveryState.FAILED, DeliveryState.DEAD})
REPLAYABLE_STATES = frozenset({DeliveryState.FAILED, DeliveryState.DEAD})


class BreakerState(enum.StrEnum):
    """Circuit breaker of an endpoint."""

    CLOSED = "CLOSED"
    """Deliveries flow."""
    OPEN = "OPEN"
    """Too many consecutive failures: deliveries are PAUSED until ``breaker_until``."""
    HALF_OPEN = "HALF_OPEN"
    """One probe delivery is in flight; its outcome closes or re-opens the breaker."""


class Outcome(enum.StrEnum):
    """How an attempt ended."""

    SUCCEEDED = "SUCCEEDED"
    RETRY = "RETRY"
    FAILED = "FAILED"


@dataclasses.dataclass(frozen=True)
class SendResult:
    """What one HTTP attempt returned.

    Attributes:
        status_code: HTTP status, ``None`` if no response (timeout, connection error).
        duration_ms: Time from request to response (or error), in milliseconds.
        body: First 4 KB of the response body (decoded leniently).
        error: What went wrong without a response, or why it was refused.
        retry_after: Seconds from a ``Retry-After`` header, if any.
        permanent: The request must not be retried whatever the status (e.g. SSRF refusal).
    """

    status_code: int | None
    duration_ms: float
    body: str = ""
    error: str | None = None
    retry_after: float | None = None
    permanent: bool = False

    def outcome(self) -> Outcome:
        """Classifies the attempt.

        2xx succeeded; 4xx other than 408, 409 and 429 failed for good; everything else
        (5xx, 408, 409, 429, 3xx since redirects are not followed, timeouts, connection errors)
        is retried.

        Returns:
            The outcome.
        """
        if self.permanent:
            return Outcome.FAILED
        code = self.status_code
        if code is not None and 200 <= code < 300:
            return Outcome.SUCCEEDED
        if code is not None and 400 <= code < 500 and code not in (408, 409, 429):
            return Outcome.FAILED
        return Outcome.RETRY

    def describe(self) -> str:
        """Returns a one-line error text for a failed attempt."""
        if self.error:
            return self.error
        return f"HTTP {self.status_code}"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When failed attempts are retried.

    Attributes:
        schedule: Delay before each retry (seconds); attempts = ``len(schedule) + 1``.
        jitter: Share of each delay drawn at random (1 = full jitter).
        max_retry_after: Cap of an honoured ``Retry-After``.
    """

    schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    jitter: float = 1.0
    max_retry_after: float = 86400.0

    @property
    def max_attempts(self) -> int:
        """Attempts before a delivery is DEAD."""
        return len(self.schedule) + 1

    def next_delay(
        self, attempts_done: int, retry_after: float | None, rand: float | None = None
    ) -> float | None:
        """Returns the delay before the next attempt, or ``None`` when none is left.

        Args:
            attempts_done: Attempts made in this cycle (1 after the first failure).
            retry_after: The endpoint's ``Retry-After``, honoured (capped) when longer.
            rand: A number in [0, 1) (default: random) for the jitter.

        Returns:
            Seconds to wait, or ``None``.
        """
        if attempts_done >= self.max_attempts:
            return None
        base = self.schedule[attempts_done - 1]
        r = random.random() if rand is None else rand
        delay = base * (1 - self.jitter * r)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


@dataclasses.dataclass(frozen=True)
class BreakerPolicy:
    """Circuit breaker thresholds.

    Attributes:
        failure_threshold: Consecutive failures that open the breaker.
        cooldown_seconds: Open time before a probe.
        disable_after_seconds: Failing this long without a success disables the endpoint.
        probe_lease_seconds: A probe not settled in this long may be replaced by another.
    """

    failure_threshold: int = 10
    cooldown_seconds: float = 60.0
    disable_after_seconds: float = 5 * 86400.0
    probe_lease_seconds: float = 60.0


class Gate(enum.StrEnum):
    """What an endpoint lets a delivery do now."""

    SEND = "SEND"
    PROBE = "PROBE"
    PAUSE = "PAUSE"


def validate_event_types(patterns: list[str]) -> list[str]:
    """Checks an endpoint's event type patterns.

    Args:
        patterns: E.g. ``["imports.*", "orders.created"]``.

    Returns:
        The patterns, de-duplicated in order.

    Raises:
        InvalidArgument: If the list is empty, too long, or a pattern is malformed.
    """
    if not patterns:
        raise InvalidArgument(
            "event_types must list at least one event type or pattern such as imports.*",
            metadata={"field": "event_types"},
        )
    if len(patterns) > MAX_EVENT_TYPES:
        raise InvalidArgument(
            f"event_types may list at most {MAX_EVENT_TYPES} patterns",
            metadata={"field": "event_types"},
        )
    seen: list[str] = []
    for pattern in patterns:
        if not (1 <= len(pattern) <= 200) or not EVENT_TYPE_PATTERN.match(pattern):
            raise InvalidArgument(
                f"event type pattern {pattern[:200]!r} is malformed; use dotted names with"
                " optional wildcards, e.g. imports.* or orders.created",
                metadata={"field": "event_types"},
            )
        if pattern not in seen:
            seen.append(pattern)
    return seen


def validate_event_type(event_type: str) -> None:
    """Checks the type of a custom event.

    Args:
        event_type: E.g. ``orders.Created``.

    Raises:
        InvalidArgument: If it is malformed or reserved.
    """
    if not (1 <= len(event_type) <= 200) or not EVENT_TYPE.match(event_type):
        raise InvalidArgument(
            f"event type {event_type[:200]!r} is malformed; use <area>.<Name>, e.g. orders.Created",
            metadata={"field": "type"},
        )
    if event_type.startswith(RESERVED_PREFIX):
        raise InvalidArgument(
            "event types starting with webhooks. are reserved for delivery outcomes",
            metadata={"field": "type"},
        )


@dataclasses.dataclass
class Endpoint:
    """A URL that receives events.

    Attributes:
        id: Endpoint id (``endpoints/{id}``).
        tenant: Owner.
        url: Where events are POSTed.
        description: Free text.
        event_types: Patterns of the event types it receives.
        enabled: Whether deliveries are sent.
        disabled_reason: Why it was disabled (automatically or by an operator).
        secret: Signing secret, sealed (encrypted at rest).
        previous_secret: The secret before the last rotation, sealed, while in grace.
        previous_secret_expire_time: End of the rotation grace period.
        rate_limit: Maximum requests per second, ``None`` for no limit.
        consecutive_failures: Failed attempts since the last success.
        failing_since: First failure since the last success.
        breaker_state: Circuit breaker state.
        breaker_until: OPEN: end of the cool-down; HALF_OPEN: end of the probe's lease.
        create_time: Creation time.
        update_time: Last change.
        request_id: AIP-155 request id of the create call, if it sent one.
        request_hash: Fingerprint of that create request (a replay must match it).
    """

    id: uuid.UUID
    tenant: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    secret: str
    create_time: dt.datetime
    update_time: dt.datetime
    disabled_reason: str | None = None
    previous_secret: str | None = None
    previous_secret_expire_time: dt.datetime | None = None
    rate_limit: float | None = None
    consecutive_failures: int = 0
    failing_since: dt.datetime | None = None
    breaker_state: str = BreakerState.CLOSED
    breaker_until: dt.datetime | None = None
    request_id: str | None = None
    request_hash: str | None = None

    @property
    def name(self) -> str:
        """Resource name ``endpoints/{id}``."""
        return f"endpoints/{self.id}"

    def matches(self, event_type: str) -> bool:
        """Whether the endpoint subscribes to ``event_type``.

        Args:
            event_type: E.g. ``imports.ImportCompleted``.

        Returns:
            True if a pattern matches.
        """
        return any(fnmatch.fnmatchcase(event_type, p) for p in self.event_types)

    def signing_secrets(self, now: dt.datetime) -> list[str]:
        """Returns the sealed secrets that sign now (current first, then the previous one).

        Args:
            now: Current time.

        Returns:
            Sealed secrets.
        """
        found = [self.secret]
        if (
            self.previous_secret
            and self.previous_secret_expire_time
            and now < self.previous_secret_expire_time
        ):
            found.append(self.previous_secret)
        return found

    def rotate(self, sealed_new: str, now: dt.datetime, grace: dt.timedelta) -> None:
        """Replaces the secret; the old one keeps signing for ``grace``.

        Args:
            sealed_new: The new sealed secret.
            now: Current time.
            grace: How long the old one still signs.
        """
        self.previous_secret = self.secret
        self.previous_secret_expire_time = now + grace
        self.secret = sealed_new
        self.update_time = now

    @property
    def healthy(self) -> bool:
        """Closed breaker and no failure since the last success (the fast path)."""
        return self.breaker_state == BreakerState.CLOSED and self.consecutive_failures == 0

    def gate(self, now: dt.datetime) -> Gate:
        """Says whether a delivery may go now (without taking a probe slot).

        Args:
            now: Current time.

        Returns:
            SEND, PROBE (the cool-down or a probe's lease passed) or PAUSE.
        """
        if not self.enabled:
            return Gate.PAUSE
        if self.breaker_state == BreakerState.CLOSED:
            return Gate.SEND
        if self.breaker_until is not None and now >= self.breaker_until:
            return Gate.PROBE
        return Gate.PAUSE

    def start_probe(self, now: dt.datetime, policy: BreakerPolicy) -> None:
        """Takes the probe slot (HALF_OPEN until the probe settles or its lease ends).

        Args:
            now: Current time.
            policy: Breaker thresholds.
        """
        self.breaker_state = BreakerState.HALF_OPEN
        self.breaker_until = now + dt.timedelta(seconds=policy.probe_lease_seconds)
        self.update_time = now

    def record_success(self, now: dt.datetime) -> bool:
        """Closes the breaker after a 2xx.

        Args:
            now: Current time.

        Returns:
            True if the breaker was not closed (paused deliveries should resume).
        """
        reopened = self.breaker_state != BreakerState.CLOSED
        self.consecutive_failures = 0
        self.failing_since = None
        self.breaker_state = BreakerState.CLOSED
        self.breaker_until = None
        self.update_time = now
        return reopened

    def record_failure(self, now: dt.datetime, policy: BreakerPolicy) -> tuple[bool, bool]:
        """Counts a failed attempt; opens the breaker or disables the endpoint when due.

        Args:
            now: Current time.
            policy: Thresholds.

        Returns:
            ``(opened, disabled)``: whether this failure opened the breaker, disabled the
            endpoint.
        """
        self.consecutive_failures += 1
        if self.failing_since is None:
            self.failing_since = now
        self.update_time = now
        failing_for = (now - self.failing_since).total_seconds()
        if self.enabled and failing_for >= policy.disable_after_seconds:
            self.enabled = False
            self.disabled_reason = (
                f"disabled automatically: failing since {self.failing_since.isoformat()}"
                f" ({self.consecutive_failures} consecutive failed attempts); fix the receiver"
                " and set enabled to true"
            )
            return False, True
        if self.breaker_state == BreakerState.HALF_OPEN or (
            self.breaker_state == BreakerState.CLOSED
            and self.consecutive_failures >= policy.failure_threshold
        ):
            self.breaker_state = BreakerState.OPEN
            self.breaker_until = now + dt.timedelta(seconds=policy.cooldown_seconds)
            return True, False
        return False, False

    def enable(self, now: dt.datetime) -> None:
        """Enables the endpoint again (operator), with a closed breaker.

        Args:
            now: Current time.
        """
        self.enabled = True
        self.disabled_reason = None
        self.record_success(now)


@dataclasses.dataclass
class Delivery:
    """One event for one endpoint.

    Attributes:
        id: Delivery id; also the ``webhook-id`` header (stable across attempts).
        tenant: Owner.
        endpoint_id: The endpoint.
        event_id: The event (unique per endpoint).
        event_type: The event's type.
        body: The exact JSON body sent (signed as is).
        state: Life-cycle state.
        attempts: Attempts made in all.
        cycle_attempts: Attempts in the current retry cycle (a manual retry starts a new one).
        next_attempt_time: When the next attempt is due (PENDING).
        lease_until: SENDING: when an attempt whose worker vanished may be taken over.
        last_status_code: Status of the last attempt, if it got a response.
        last_error: Error of the last failed attempt.
        create_time: Creation time.
        update_time: Last change.
        end_time: When it reached a final state.
    """

    id: uuid.UUID
    tenant: str
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    body: str
    create_time: dt.datetime
    update_time: dt.datetime
    state: str = DeliveryState.PENDING
    attempts: int = 0
    cycle_attempts: int = 0
    next_attempt_time: dt.datetime | None = None
    lease_until: dt.datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    end_time: dt.datetime | None = None

    def name(self) -> str:
        """Resource name ``endpoints/{endpoint}/deliveries/{id}``."""
        return f"endpoints/{self.endpoint_id}/deliveries/{self.id}"

    def start_attempt(self, now: dt.datetime, lease: dt.timedelta) -> int:
        """PENDING -> SENDING.

        Args:
            now: Current time.
            lease: How long the attempt may take before another may take it over.

        Returns:
            The attempt number (fencing token).
        """
        self.state = DeliveryState.SENDING
        self.attempts += 1
        self.cycle_attempts += 1
        self.lease_until = now + lease
        self.update_time = now
        return self.attempts

    def pause(self, now: dt.datetime) -> None:
        """Holds the delivery (breaker open, endpoint disabled).

        Args:
            now: Current time.
        """
        self.state = DeliveryState.PAUSED
        self.lease_until = None
        self.update_time = now

    def schedule(self, now: dt.datetime, at: dt.datetime) -> None:
        """Back to PENDING, due at ``at``.

        Args:
            now: Current time.
            at: Next attempt time.
        """
        self.state = DeliveryState.PENDING
        self.next_attempt_time = at
        self.lease_until = None
        self.update_time = now

    def settle(self, now: dt.datetime, state: DeliveryState, result: SendResult) -> None:
        """Records an attempt's outcome as the delivery's new state.

        Args:
            now: Current time.
            state: PENDING (retry), SUCCEEDED, FAILED or DEAD.
            result: The attempt.
        """
        self.state = state
        self.last_status_code = result.status_code
        self.last_error = None if state == DeliveryState.SUCCEEDED else result.describe()
        self.lease_until = None
        self.update_time = now
        if state in FINAL_STATES:
            self.end_time = now
            self.next_attempt_time = None

    def restart(self, now: dt.datetime) -> None:
        """A new retry cycle (manual retry, replay): PENDING now.

        Args:
            now: Current time.
        """
        self.cycle_attempts = 0
        self.end_time = None
        self.schedule(now, now)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One HTTP request of a delivery.

    Attributes:
        id: Attempt row id.
        delivery_id: The delivery.
        tenant: Owner.
        attempt: 1-based number.
        time: When it was sent.
        status_code: HTTP status, or ``None``.
        duration_ms: Duration in milliseconds.
        response_body: First 4 KB of the response body.
        error: Error without a response (timeout, connection, refused URL).
    """

    id: uuid.UUID
    delivery_id: uuid.UUID
    tenant: str
    attempt: int
    time: dt.datetime
    status_code: int | None
    duration_ms: float
    response_body: str
    error: str | None


def event_body(event_type: str, time: dt.datetime, data: dict[str, Any]) -> str:
    """Returns the JSON body of a delivery (Standard Webhooks: ``type``, ``timestamp``, ``data``).

    Args:
        event_type: The event type.
        time: When the event happened.
        data: Its payload.

    Returns:
        Compact JSON.
    """
    import json

    return json.dumps(
        {"type": event_type, "timestamp": time.isoformat().replace("+00:00", "Z"), "data": data},
        separators=(",", ":"),
        default=str,
    )
