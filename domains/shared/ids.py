"""Identifiers: UUIDv7 (time ordered, so keyset pagination by id follows creation order)."""

from __future__ import annotations

import os
import threading
import time
import uuid

_RANDOM_BITS = 74  # rand_a (12) + rand_b (62): everything but the timestamp, version, variant
_STEP_BITS = 32  # an id in the same millisecond as the last: last + 1 .. 2**32 (RFC 9562 6.2)
_BLOCK = 4096  # bytes of os.urandom drawn at once: one getrandom() call per ~400 ids


class _Ids:
    """UUIDv7 of one process: increasing, with the clock's millisecond.

    ``uuid6.uuid7`` (used before) pushed the timestamp 1 ms ahead for every id drawn within
    the same millisecond as the last: under load (about 1,500 ids a second in an API process)
    a process's ids ran ahead of the clock by half a second every second, so another process's
    ids sorted before them, and it made a ``getrandom`` system call per id. Here an id within
    the same millisecond takes the last one's random part plus a random step (RFC 9562 6.2,
    "monotonic random"), and the random bytes are read from the OS in blocks.
    """

    def __init__(self) -> None:
        self._reset()
        # A child must neither repeat its parent's random bytes nor inherit a held lock.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._used = 0
        self._last_ms = 0
        self._last_random = 0

    def _random(self, nbytes: int) -> int:
        if self._used + nbytes > len(self._block):
            self._block, self._used = os.urandom(_BLOCK), 0
        start, self._used = self._used, self._used + nbytes
        return int.from_bytes(self._block[start : self._used], "big")

    def new(self) -> uuid.UUID:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms > self._last_ms:
                ms, random = now_ms, self._random(10) >> (80 - _RANDOM_BITS)
            else:
                # The same millisecond (or the clock stepped back): count on from the last id.
                ms = self._last_ms
                random = self._last_random + 1 + (self._random(4) >> (32 - _STEP_BITS))
                if random >> _RANDOM_BITS:  # 2**74 used up within one millisecond: next one
                    ms, random = ms + 1, self._random(10) >> (80 - _RANDOM_BITS + 1)
            self._last_ms, self._last_random = ms, random
        value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76  # unix_ts_ms, version 7
        value |= (random >> 62) << 64 | 0b10 << 62 | random & (1 << 62) - 1  # rand_a, var, rand_b
        return uuid.UUID(int=value)

    def hex(self, nbytes: int) -> str:
        with self._lock:
            return self._random(nbytes).to_bytes(nbytes, "big").hex()


_IDS = _Ids()


def new_id() -> uuid.UUID:
    """Returns a new UUIDv7.

    Returns:
        A time-ordered UUID (RFC 9562 version 7): its timestamp is the clock's millisecond,
        and within a process each id is greater than the one before.
    """
    return _IDS.new()


def random_hex(nbytes: int = 16) -> str:
    """Returns ``nbytes`` random bytes (from the OS) as hex, without a system call each.

    Args:
        nbytes: How many bytes.

    Returns:
        ``2 * nbytes`` hex digits.
    """
    return _IDS.hex(nbytes)


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
