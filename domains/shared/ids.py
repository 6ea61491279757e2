"""Identifiers: UUIDv7 (time ordered, so keyset pagination by id follows creation order)."""

from __future__ import annotations

import uuid

import uuid6


def new_id() -> uuid.UUID:
    """Returns a new UUIDv7.

    Returns:
        A time-ordered UUID (RFC 9562 version 7).
    """
    return uuid.UUID(int=uuid6.uuid7().int)


def parse_id(text: str, *, what: str = "id") -> uuid.UUID:
    """Parses a UUID given by a client.

    Args:
        text: The text to parse.
        what: Name of the field, for the error message.

    Returns:
        The parsed UUID.

    Raises:
        InvalidArgument: If ``text`` is not a UUID.
    """
    from domains.shared.errors import InvalidArgument

    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(
            f"{what} {text!r} is not a valid UUID", reason="INVALID_ID", metadata={"field": what}
        ) from None
