"""Console session cookies: signed, tamper-evident, expiring; CSRF tokens compared exactly."""

from __future__ import annotations

import time

from api.console import session as sessions

KEY = b"k" * 32


def test_a_signed_session_round_trips_and_hides_nothing_it_should_not():
    s = sessions.new_session("cvk_abc_secret", max_age=60)
    value = sessions.dump(s, KEY)
    assert "cvk_abc_secret" not in value
    assert sessions.load(value, KEY) == s
    assert sessions.csrf_ok(s, s.csrf) and not sessions.csrf_ok(s, s.csrf + "x")
    assert not sessions.csrf_ok(s, None)


def test_tampered_foreign_or_expired_cookies_are_refused():
    s = sessions.new_session("cvk_abc_secret", max_age=60)
    value = sessions.dump(s, KEY)
    body, _, sig = value.partition(".")
    forged = sessions.dump(sessions.Session("cvk_other_key", s.csrf, s.expires), b"x" * 32)
    assert sessions.load(forged, KEY) is None  # signed with another key
    assert sessions.load(f"{body[:-2]}AA.{sig}", KEY) is None  # body changed
    assert sessions.load(body, KEY) is None and sessions.load(None, KEY) is None
    expired = sessions.Session("cvk_abc_secret", "c", time.time() - 1)
    assert sessions.load(sessions.dump(expired, KEY), KEY) is None
