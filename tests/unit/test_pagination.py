"""Unit tests for api.pagination: AIP-158 page sizes and page tokens."""

from __future__ import annotations

import base64
import json

import pytest

from api.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    clamp_page_size,
    decode_page_token,
    encode_page_token,
    query_fingerprint,
)
from domains.shared.errors import InvalidArgument

# ---- clamp_page_size ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 0])
def test_unset_page_size_uses_default(size: int | None) -> None:
    assert clamp_page_size(size) == DEFAULT_PAGE_SIZE == 50


@pytest.mark.parametrize("size", [1, 50, 999, 1000])
def test_page_size_within_limit_is_kept(size: int) -> None:
    assert clamp_page_size(size) == size


@pytest.mark.parametrize("size", [1001, 10**9])
def test_page_size_above_maximum_is_coerced(size: int) -> None:
    assert clamp_page_size(size) == MAX_PAGE_SIZE == 1000


def test_negative_page_size_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as info:
        clamp_page_size(-1)
    assert info.value.reason == "INVALID_PAGE_SIZE"
    assert "page_size must not be negative" in info.value.message


# ---- query_fingerprint ----------------------------------------------------------------------


def test_fingerprint_is_short_hex_and_stable() -> None:
    fingerprint = query_fingerprint("parents/p1", "done = true", "create_time desc")
    assert fingerprint == query_fingerprint("parents/p1", "done = true", "create_time desc")
    assert len(fingerprint) == 16
    int(fingerprint, 16)


def test_fingerprint_changes_with_any_part() -> None:
    base = query_fingerprint("p", "done = true", "create_time")
    assert base != query_fingerprint("p", "done = false", "create_time")
    assert base != query_fingerprint("p", "done = true", "create_time desc")
    assert base != query_fingerprint("q", "done = true", "create_time")


def test_fingerprint_separates_parts() -> None:
    assert query_fingerprint("ab", "c") != query_fingerprint("a", "bc")


def test_fingerprint_treats_none_like_empty() -> None:
    assert query_fingerprint("p", None, "") == query_fingerprint("p", "", None)


# ---- page tokens ----------------------------------------------------------------------------

FP = query_fingerprint("parents/p1", "done = true", "create_time desc")
POSITION: dict[str, object] = {"create_time": "2026-01-31T12:00:00Z", "id": "op-123", "n": 7}


def token_error(token: str, fingerprint: str = FP) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        decode_page_token(token, query_fingerprint=fingerprint)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    return info.value


def test_token_round_trips_position() -> None:
    token = encode_page_token(POSITION, query_fingerprint=FP)
    assert decode_page_token(token, query_fingerprint=FP) == POSITION


def test_token_is_url_safe_without_padding() -> None:
    token = encode_page_token({"id": "??>>~~"}, query_fingerprint=FP)
    assert token.replace("-", "").replace("_", "").isalnum()
    assert "=" not in token


def test_token_does_not_expose_position_as_plain_text() -> None:
    token = encode_page_token(POSITION, query_fingerprint=FP)
    assert "op-123" not in token


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_means_first_page(token: str | None) -> None:
    assert decode_page_token(token, query_fingerprint=FP) is None


def test_empty_position_round_trips() -> None:
    token = encode_page_token({}, query_fingerprint=FP)
    assert decode_page_token(token, query_fingerprint=FP) == {}


def test_garbled_token_is_invalid() -> None:
    error = token_error("not a token!")
    assert error.message == "page_token is invalid or expired; start again without page_token"


@pytest.mark.parametrize("token", ["a", "abcd", "====", "A" * 10, "A" * 200])
def test_random_tokens_are_invalid(token: str) -> None:
    assert "invalid or expired" in token_error(token).message


def test_tampered_token_is_detected() -> None:
    token = encode_page_token(POSITION, query_fingerprint=FP)
    for index in range(len(token)):
        replacement = "A" if token[index] != "A" else "B"
        tampered = token[:index] + replacement + token[index + 1 :]
        with pytest.raises(InvalidArgument, match="invalid or expired"):
            decode_page_token(tampered, query_fingerprint=FP)


def test_forged_position_without_valid_signature_is_rejected() -> None:
    token = encode_page_token({"id": "op-1"}, query_fingerprint=FP)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    signature = raw[-32:]
    forged_payload = json.dumps({"f": FP, "p": {"id": "op-999"}}, separators=(",", ":"))
    forged = base64.urlsafe_b64encode(forged_payload.encode() + signature).rstrip(b"=")
    assert "invalid or expired" in token_error(forged.decode()).message


def test_unsigned_payload_is_rejected() -> None:
    payload = json.dumps({"f": FP, "p": {"id": "op-1"}}).encode()
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    assert "invalid or expired" in token_error(token).message


def test_token_signed_with_another_secret_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PAGE_TOKEN_SECRET", "secret-one")
    token = encode_page_token(POSITION, query_fingerprint=FP)
    monkeypatch.setenv("CONVEYOR_PAGE_TOKEN_SECRET", "secret-two")
    assert "invalid or expired" in token_error(token).message


def test_secret_from_environment_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PAGE_TOKEN_SECRET", "prod-secret")
    token = encode_page_token(POSITION, query_fingerprint=FP)
    assert decode_page_token(token, query_fingerprint=FP) == POSITION


def test_dev_fallback_secret_is_used_without_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONVEYOR_PAGE_TOKEN_SECRET", raising=False)
    token = encode_page_token(POSITION, query_fingerprint=FP)
    assert decode_page_token(token, query_fingerprint=FP) == POSITION
    monkeypatch.setenv("CONVEYOR_PAGE_TOKEN_SECRET", "prod-secret")
    assert "invalid or expired" in token_error(token).message


def test_token_from_a_different_query_is_rejected() -> None:
    token = encode_page_token(POSITION, query_fingerprint=FP)
    other = query_fingerprint("parents/p1", "done = false", "create_time desc")
    error = token_error(token, other)
    assert error.message == (
        "page_token does not match the request; keep filter and order_by the same across pages"
    )


def test_token_from_a_different_order_is_rejected() -> None:
    token = encode_page_token(POSITION, query_fingerprint=FP)
    other = query_fingerprint("parents/p1", "done = true", "create_time")
    assert "does not match the request" in token_error(token, other).message


def test_non_serializable_position_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        encode_page_token({"when": object()}, query_fingerprint=FP)
