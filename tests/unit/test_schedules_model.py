"""Schedule timing: cron and interval validation, due slots, missed runs, time zones."""

from __future__ import annotations

import datetime as dt

import pytest

from domains.platform.schedules.model import (
    Schedule,
    parse_time_zone,
    validate_cron,
    validate_timing,
)
from domains.shared.errors import FailedPrecondition, InvalidArgument

T0 = dt.datetime(2026, 3, 28, 12, 0, tzinfo=dt.UTC)


def schedule(**kw) -> Schedule:
    values = dict(
        id="s1",
        tenant="default",
        display_name="",
        workflow="platform.ping",
        task=None,
        args={},
        cron=None,
        interval_seconds=10.0,
        time_zone="UTC",
        enabled=True,
        catch_up=False,
        system=False,
        create_time=T0,
        update_time=T0,
        next_run_time=T0,
    )
    values.update(kw)
    return Schedule(**values)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("* * *", "has 3 field(s)"),
        ("61 * * * *", "not valid"),
        ("* * * * mon-xyz", "not valid"),
        ("every day", "has 2 field(s)"),
    ],
)
def test_bad_cron_is_invalid_argument_saying_why(expression, fragment):
    with pytest.raises(InvalidArgument) as info:
        validate_cron(expression)
    assert fragment in info.value.message
    assert info.value.reason == "INVALID_CRON"


def test_good_cron_and_aliases_are_normalized():
    assert validate_cron("  0   6 * * * ") == "0 6 * * *"
    assert validate_cron("@DAILY") == "@daily"


def test_exactly_one_of_cron_and_interval():
    with pytest.raises(InvalidArgument, match="exactly one"):
        validate_timing("0 6 * * *", 10, min_interval_seconds=1)
    with pytest.raises(InvalidArgument, match="exactly one"):
        validate_timing(None, None, min_interval_seconds=1)
    with pytest.raises(InvalidArgument, match="between 1 and"):
        validate_timing(None, 0.5, min_interval_seconds=1)
    assert validate_timing(None, 2, min_interval_seconds=1) == (None, 2.0)


def test_unknown_time_zone_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="IANA"):
        parse_time_zone("Mars/Olympus")
    with pytest.raises(InvalidArgument):
        parse_time_zone("../etc/passwd")
    assert str(parse_time_zone("Europe/Paris")) == "Europe/Paris"


def test_interval_not_due_fires_nothing():
    slots, nxt = schedule().due_slots(T0 - dt.timedelta(seconds=1), max_catch_up=10)
    assert slots == [] and nxt == T0


def test_missed_interval_slots_fire_once_for_the_latest():
    now = T0 + dt.timedelta(seconds=95)
    slots, nxt = schedule().due_slots(now, max_catch_up=10)
    assert slots == [T0 + dt.timedelta(seconds=90)]
    assert nxt == T0 + dt.timedelta(seconds=100)


def test_catch_up_fires_every_missed_slot_bounded():
    now = T0 + dt.timedelta(seconds=95)
    slots, nxt = schedule(catch_up=True).due_slots(now, max_catch_up=100)
    assert slots == [T0 + dt.timedelta(seconds=10 * k) for k in range(10)]
    assert nxt == T0 + dt.timedelta(seconds=100)
    bounded, _ = schedule(catch_up=True).due_slots(now, max_catch_up=3)
    assert bounded == [T0 + dt.timedelta(seconds=10 * k) for k in (7, 8, 9)]


def test_disabled_schedule_is_never_due():
    slots, _ = schedule(enabled=False).due_slots(T0 + dt.timedelta(hours=1), max_catch_up=10)
    assert slots == []


def test_cron_is_evaluated_in_the_schedule_time_zone_across_dst():
    # Europe/Paris moves to summer time on 2026-03-29: 06:00 local is 05:00 UTC, then 04:00 UTC.
    s = schedule(cron="0 6 * * *", interval_seconds=None, time_zone="Europe/Paris")
    first = s.slot_after(T0)
    assert first == dt.datetime(2026, 3, 29, 4, 0, tzinfo=dt.UTC)
    before = s.slot_after(dt.datetime(2026, 3, 27, 12, 0, tzinfo=dt.UTC))
    assert before == dt.datetime(2026, 3, 28, 5, 0, tzinfo=dt.UTC)


def test_missed_cron_slots_fire_once_unless_catch_up():
    s = schedule(cron="*/15 * * * *", interval_seconds=None, next_run_time=T0)
    now = T0 + dt.timedelta(minutes=50)
    slots, nxt = s.due_slots(now, max_catch_up=10)
    assert slots == [T0 + dt.timedelta(minutes=45)]
    assert nxt == T0 + dt.timedelta(minutes=60)
    s.catch_up = True
    slots, nxt = s.due_slots(now, max_catch_up=10)
    assert slots == [T0 + dt.timedelta(minutes=m) for m in (0, 15, 30, 45)]
    assert nxt == T0 + dt.timedelta(minutes=60)


def test_cron_slot_exactly_now_is_due():
    s = schedule(cron="*/15 * * * *", interval_seconds=None, next_run_time=T0)
    slots, nxt = s.due_slots(T0, max_catch_up=10)
    assert slots == [T0] and nxt == T0 + dt.timedelta(minutes=15)


def test_mark_fired_moves_last_and_next_run_time():
    s = schedule()
    s.mark_fired([T0], T0 + dt.timedelta(seconds=10))
    assert s.last_run_time == T0 and s.next_run_time == T0 + dt.timedelta(seconds=10)


def test_system_schedule_cannot_be_deleted():
    with pytest.raises(FailedPrecondition, match="system schedule"):
        schedule(system=True).check_deletable()
