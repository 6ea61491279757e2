"""AIP-155 request ids: one create per (tenant, request id), whatever the retries.

A create carrying a ``request_id`` stores it with a fingerprint of the request body on the
row it creates (a unique index per tenant settles concurrent twins). A retry with the same
body gets the first resource back; the same id with another body is ALREADY_EXISTS, so a
client reusing an id by mistake hears about it instead of getting someone else's resource.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from domains.shared.errors import AlreadyExists, Conflict, InvalidArgument

MAX_REQUEST_ID = 128
_EVENT_NAMESPACE = uuid.UUID("6f1d2c3e-5b0a-4c8e-9a57-3e1f0b9d2a64")


def check_request_id(request_id: str | None) -> None:
    """Checks a client-supplied request id.

    Args:
        request_id: The id, or ``None`` (no idempotency asked for).

    Raises:
        InvalidArgument: If it is empty, longer than 128 characters or not printable.
    """
    if request_id is not None and (
        not (1 <= len(request_id) <= MAX_REQUEST_ID) or not request_id.isprintable()
    ):
        raise InvalidArgument(
            f"request_id must be 1 to {MAX_REQUEST_ID} printable characters (a UUID is"
            " recommended)",
            reason="INVALID_REQUEST_ID",
            metadata={"field": "request_id"},
        )


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """Returns a stable hash of a create request's body.

    Args:
        body: The request fields, without ``request_id``.

    Returns:
        A hex SHA-256 of the canonical JSON.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def ensure_same_request(
    *, request_id: str, resource: str, stored_hash: str | None, request_hash: str
) -> None:
    """Refuses a request id replayed with a different body.

    Args:
        request_id: The request id.
        resource: Name of the resource the first request created (``datasets/...``).
        stored_hash: Fingerprint stored with that resource.
        request_hash: Fingerprint of this request.

    Raises:
        AlreadyExists: ``REQUEST_ID_REUSED`` if the bodies differ.
    """
    if stored_hash != request_hash:
        raise AlreadyExists(
            f"request_id {request_id!r} was already used with a different request body"
            f" (it created {resource}); use a new request_id for a new request",
            reason="REQUEST_ID_REUSED",
            metadata={"resource": resource, "request_id": request_id},
        )


def vanished(request_id: str) -> Conflict:
    """The error for a request id whose first resource was deleted while this retry ran.

    Args:
        request_id: The request id.

    Returns:
        An ABORTED error: retrying the request creates the resource anew.
    """
    return Conflict(
        f"the resource created with request_id {request_id!r} was deleted meanwhile; retry",
        reason="REQUEST_ID_CONFLICT",
        metadata={"request_id": request_id},
    )


def derived_id(tenant: str, request_id: str) -> uuid.UUID:
    """Returns the id a create with ``request_id`` gives its resource (the same every retry).

    For resources keyed by their id alone (published events), the id itself carries the
    request id; the tenant is part of it, so tenants never collide.

    Args:
        tenant: Caller's tenant.
        request_id: The request id.

    Returns:
        A name-based (version 5) UUID.
    """
    return uuid.uuid5(_EVENT_NAMESPACE, f"{tenant}\n{request_id}")
