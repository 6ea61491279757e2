"""Replica lag from WAL positions sampled over time (app.db.replicas.LagTracker): an idle primary is
no lag, a stalled replica's lag grows from the last position it is known to have replayed, and
the last replayed commit's time tightens the bound after a quiet period."""

from __future__ import annotations

import math

from app.db.replicas import LagTracker, parse_lsn


def test_parse_lsn_reads_both_halves():
    assert parse_lsn("0/3000000") == 0x3000000
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848


def test_an_idle_primary_is_no_lag_however_old_the_last_commit():
    tracker = LagTracker(window_seconds=30)
    for at in (100.0, 200.0, 300.0):
        reading = tracker.observe(at, 500, in_recovery=True, replay_lsn=500, replay_time=0.0)
        assert (reading.lag_seconds, reading.lag_bytes, reading.fresh_as_of) == (0.0, 0, at)


def test_a_stalled_replica_lags_from_the_last_position_it_replayed():
    tracker = LagTracker(window_seconds=30)
    tracker.observe(100.0, 500, in_recovery=True, replay_lsn=500, replay_time=None)
    # The primary writes; the replica stays at 500 (replay paused).
    reading = tracker.observe(101.0, 800, in_recovery=True, replay_lsn=500, replay_time=None)
    assert (reading.lag_seconds, reading.lag_bytes, reading.fresh_as_of) == (1.0, 300, 100.0)
    reading = tracker.observe(110.0, 900, in_recovery=True, replay_lsn=500, replay_time=None)
    assert reading.lag_seconds == 10.0 and reading.fresh_as_of == 100.0
    # Caught up to the 101 s position, not to the latest one.
    reading = tracker.observe(111.0, 950, in_recovery=True, replay_lsn=800, replay_time=None)
    assert reading.lag_seconds == 10.0 and reading.fresh_as_of == 101.0


def test_the_last_replayed_commit_bounds_the_lag_after_a_quiet_period():
    tracker = LagTracker(window_seconds=30)
    tracker.observe(0.0, 100, in_recovery=True, replay_lsn=100, replay_time=None)
    # No checks for 10 minutes; the replica replayed a commit of 599.5 s but not the newest WAL.
    reading = tracker.observe(600.0, 900, in_recovery=True, replay_lsn=850, replay_time=599.5)
    assert reading.lag_seconds == 0.5
    # Read-your-writes only trusts positions this process saw, not the other clock.
    assert reading.fresh_as_of == 0.0


def test_beyond_the_window_the_lag_still_counts_from_the_oldest_kept_position():
    tracker = LagTracker(window_seconds=30)
    tracker.observe(0.0, 100, in_recovery=True, replay_lsn=100, replay_time=None)
    for at in range(1, 100):
        reading = tracker.observe(
            float(at), 100 + at, in_recovery=True, replay_lsn=100, replay_time=None
        )
    assert reading.lag_seconds >= 30


def test_unknowns_are_never_judged_fresh():
    tracker = LagTracker(window_seconds=30)
    nothing = tracker.observe(5.0, 100, in_recovery=True, replay_lsn=None, replay_time=None)
    assert math.isinf(nothing.lag_seconds) and nothing.fresh_as_of == -math.inf
    no_primary = tracker.observe(9.0, None, in_recovery=True, replay_lsn=100, replay_time=7.0)
    assert (no_primary.lag_seconds, no_primary.primary_reachable) == (2.0, False)
    assert no_primary.fresh_as_of == -math.inf
    promoted = tracker.observe(10.0, 100, in_recovery=False, replay_lsn=None, replay_time=None)
    assert promoted.lag_seconds == 0.0
