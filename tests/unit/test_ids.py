"""UUIDv7 ids: increasing within a process, on the clock's millisecond, never repeated across a
fork; random hex for request ids."""

from __future__ import annotations

import itertools
import os
import time
import uuid

from domains.shared.ids import new_id, random_hex


def _ms(value: uuid.UUID) -> int:
    return value.int >> 80


def test_ids_are_version_7_and_increase_even_within_one_millisecond() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)
    # The positive control: many ids shared a millisecond, so the counting branch ran.
    same = sum(_ms(a) == _ms(b) for a, b in itertools.pairwise(ids))
    assert same > len(ids) // 2


def test_ids_keep_the_clock_millisecond_under_load() -> None:
    # uuid6.uuid7 pushed the timestamp 1 ms ahead per id drawn within one millisecond: after
    # 50,000 quick ids it was about 50 s in the future.
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(50_000)]
    after = time.time_ns() // 1_000_000
    assert before <= _ms(ids[0]) <= _ms(ids[-1]) <= after


def test_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    new_id()  # the parent has a block of random bytes under way
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.write(write, b"".join(new_id().bytes for _ in range(500)))
        finally:
            os._exit(0)
    os.close(write)
    mine = {new_id().bytes[6:] for _ in range(500)}  # the random part (and version, variant)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    theirs = {data[i + 6 : i + 16] for i in range(0, len(data), 16)}
    assert len(theirs) == 500
    assert not mine & theirs


def test_random_hex() -> None:
    values = {random_hex() for _ in range(1000)}
    assert len(values) == 1000
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in values)
    assert len(random_hex(4)) == 8
