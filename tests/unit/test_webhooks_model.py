"""Webhooks rules without I/O: signatures (spec vector), secrets at rest, outcome
classification, retry schedule with jitter and Retry-After, circuit breaker transitions."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from app.adapters.webhooks_http import parse_retry_after, pinned_url
from domains.shared.errors import Internal, InvalidArgument
from domains.webhooks import signing
from domains.webhooks.model import (
    BreakerPolicy,
    BreakerState,
    Endpoint,
    Gate,
    Outcome,
    RetryPolicy,
    SendResult,
    event_body,
    validate_event_type,
    validate_event_types,
)
from tests.support.webhooks import verify_signature

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def test_signature_matches_the_standard_webhooks_reference_vector():
    signature = signing.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_new_secrets_are_whsec_base64_of_32_random_bytes_and_verify():
    first, second = signing.new_secret(), signing.new_secret()
    assert first != second and first.startswith("whsec_")
    assert len(signing.secret_key(first)) == 32
    header = signing.signature_header([first, second], "d-1", 1_700_000_000, b"{}")
    headers = {"webhook-id": "d-1", "webhook-timestamp": "1700000000", "webhook-signature": header}
    assert verify_signature([first], headers, b"{}", now=1_700_000_000)
    assert verify_signature([second], headers, b"{}", now=1_700_000_000)
    assert not verify_signature([first], headers, b"{ }", now=1_700_000_000)
    assert not verify_signature([first], headers, b"{}", now=1_700_000_000 + 3600)


def test_secret_box_round_trips_and_refuses_a_wrong_key_or_tampering():
    box = signing.SecretBox("key-1")
    sealed = box.seal("whsec_abc")
    assert "whsec" not in sealed and sealed != box.seal("whsec_abc")  # random nonce
    assert box.open(sealed) == "whsec_abc"
    with pytest.raises(Internal):
        signing.SecretBox("key-2").open(sealed)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(Internal):
        box.open(tampered)


def test_secret_box_opens_each_sealed_value_once_and_still_refuses_other_keys():
    box = signing.SecretBox("key-1")
    first, second = box.seal("whsec_one"), box.seal("whsec_two")
    assert [box.open(s) for s in (first, second, first, second)] == [
        "whsec_one",
        "whsec_two",
        "whsec_one",
        "whsec_two",
    ]
    # What one box opened is not an answer for a box with another key (the cache is the box's).
    for _ in range(2):
        with pytest.raises(Internal):
            signing.SecretBox("key-2").open(first)
    calls = []
    original = box._open
    box._open = lambda sealed: calls.append(sealed) or original(sealed)  # type: ignore[method-assign]
    assert box.open(first) == "whsec_one" and calls == []  # opened once already
    assert box.open(box.seal("whsec_three")) == "whsec_three" and len(calls) == 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCEEDED),
        (204, Outcome.SUCCEEDED),
        (400, Outcome.FAILED),
        (404, Outcome.FAILED),
        (410, Outcome.FAILED),
        (408, Outcome.RETRY),
        (409, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (302, Outcome.RETRY),
        (None, Outcome.RETRY),
    ],
)
def test_outcome_classification(status, outcome):
    assert SendResult(status, 1.0).outcome() == outcome


def test_refused_url_is_permanent():
    assert SendResult(None, 0.0, error="URL refused", permanent=True).outcome() == Outcome.FAILED


def test_retry_schedule_full_jitter_and_retry_after():
    policy = RetryPolicy(schedule=(5.0, 300.0), jitter=1.0, max_retry_after=60.0)
    assert policy.max_attempts == 3
    assert policy.next_delay(1, None, rand=0.0) == 5.0
    assert policy.next_delay(1, None, rand=0.5) == 2.5
    assert 0 <= policy.next_delay(2, None) <= 300.0
    assert policy.next_delay(3, None) is None
    assert policy.next_delay(1, 30.0, rand=0.9) == 30.0  # Retry-After wins when longer
    assert policy.next_delay(1, 5000.0, rand=0.9) == 60.0  # ...capped
    exact = RetryPolicy(schedule=(1.0, 2.0), jitter=0.0)
    assert [exact.next_delay(n, None) for n in (1, 2, 3)] == [1.0, 2.0, None]


def test_default_schedule_is_eight_attempts_over_about_a_day():
    policy = RetryPolicy()
    assert policy.max_attempts == 8
    assert 20 * 3600 <= sum(policy.schedule) <= 30 * 3600


def _endpoint(**kw) -> Endpoint:
    return Endpoint(
        id=uuid.uuid4(),
        tenant="t",
        url="https://example.com/hook",
        description="",
        event_types=["imports.*", "orders.created"],
        enabled=True,
        secret="sealed",
        create_time=NOW,
        update_time=NOW,
        **kw,
    )


def test_event_type_patterns_match_with_wildcards():
    endpoint = _endpoint()
    assert endpoint.matches("imports.ImportCompleted")
    assert endpoint.matches("orders.created")
    assert not endpoint.matches("orders.deleted")
    assert not endpoint.matches("webhooks.DeliveryDead")


def test_event_type_validation():
    assert validate_event_types(["a.*", "a.*", "b.c"]) == ["a.*", "b.c"]
    for bad in ([], ["has space"], ["x" * 201]):
        with pytest.raises(InvalidArgument):
            validate_event_types(bad)
    validate_event_type("orders.Created")
    for bad in ("orders", "webhooks.DeliveryDead", "a..b", "a.*"):
        with pytest.raises(InvalidArgument):
            validate_event_type(bad)


def test_breaker_opens_after_threshold_probes_after_cooldown_and_closes():
    policy = BreakerPolicy(failure_threshold=3, cooldown_seconds=60, disable_after_seconds=86400)
    endpoint = _endpoint()
    assert endpoint.gate(NOW) == Gate.SEND
    assert endpoint.record_failure(NOW, policy) == (False, False)
    assert endpoint.record_failure(NOW, policy) == (False, False)
    assert endpoint.record_failure(NOW, policy) == (True, False)
    assert endpoint.breaker_state == BreakerState.OPEN
    assert endpoint.gate(NOW + dt.timedelta(seconds=59)) == Gate.PAUSE
    later = NOW + dt.timedelta(seconds=60)
    assert endpoint.gate(later) == Gate.PROBE
    endpoint.start_probe(later, policy)
    assert endpoint.gate(later) == Gate.PAUSE  # one probe at a time
    # The probe fails: open again for another cool-down.
    assert endpoint.record_failure(later, policy) == (True, False)
    assert endpoint.gate(later + dt.timedelta(seconds=61)) == Gate.PROBE
    assert endpoint.record_success(later) is True
    assert endpoint.healthy and endpoint.gate(later) == Gate.SEND


def test_endpoint_failing_for_days_is_disabled_with_a_reason():
    policy = BreakerPolicy(failure_threshold=1000, disable_after_seconds=3 * 86400)
    endpoint = _endpoint()
    endpoint.record_failure(NOW, policy)
    _opened, disabled = endpoint.record_failure(NOW + dt.timedelta(days=3), policy)
    assert disabled and not endpoint.enabled
    assert "failing since" in (endpoint.disabled_reason or "")
    assert endpoint.gate(NOW) == Gate.PAUSE
    endpoint.enable(NOW)
    assert endpoint.enabled and endpoint.disabled_reason is None and endpoint.healthy


def test_rotation_keeps_the_old_secret_for_the_grace_period():
    endpoint = _endpoint()
    endpoint.rotate("sealed-2", NOW, dt.timedelta(hours=1))
    assert endpoint.signing_secrets(NOW) == ["sealed-2", "sealed"]
    assert endpoint.signing_secrets(NOW + dt.timedelta(hours=2)) == ["sealed-2"]


def test_event_body_is_the_standard_webhooks_envelope():
    assert event_body("orders.Created", NOW, {"a": 1}) == (
        '{"type":"orders.Created","timestamp":"2026-11-25T12:00:00Z","data":{"a":1}}'
    )


def test_retry_after_parsing():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_requests_are_pinned_to_the_checked_address():
    import ipaddress

    url, host = pinned_url("https://example.com:8443/a?b=1", ipaddress.ip_address("93.184.216.34"))
    assert url == "https://93.184.216.34:8443/a?b=1" and host == "example.com:8443"
    url, host = pinned_url("http://example.com/x", ipaddress.ip_address("2606:2800::1"))
    assert url == "http://[2606:2800::1]/x" and host == "example.com"
