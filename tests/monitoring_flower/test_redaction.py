"""Redaction of task args for monitors: what Flower, task events and worker logs show."""

from __future__ import annotations

import ast

import pytest
from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring import redaction
from monitoring.redaction import (
    REDACTED,
    is_sensitive_key,
    redact,
    redact_text,
    redacted_repr,
    task_reprs,
)


@pytest.mark.parametrize(
    "key",
    [
        "secret",
        "webhook_secret",
        "signing_secret",
        "password",
        "DB_PASSWORD",
        "token",
        "refresh_token",
        "api_key",
        "X-Api-Key",
        "apikey",
        "Authorization",
        "private_key",
        "credentials",
        "Cookie",
    ],
)
def test_secret_looking_keys_are_sensitive(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize("key", ["operation_id", "url", "name", "events", "page_size", 3])
def test_ordinary_keys_are_not_sensitive(key: object) -> None:
    assert not is_sensitive_key(key)


def test_redact_masks_sensitive_values_at_any_depth_and_keeps_the_rest() -> None:
    value = {
        "operation_id": "0190-abc",
        "webhook_secret": "whsec_1",
        "target": {
            "url": "https://hooks.example/x",
            "headers": [{"Authorization": "Bearer abc"}, {"X-Api-Key": {"nested": "k"}}],
        },
        "count": 3,
    }
    assert redact(value) == {
        "operation_id": "0190-abc",
        "webhook_secret": REDACTED,
        "target": {
            "url": "https://hooks.example/x",
            "headers": [{"Authorization": REDACTED}, {"X-Api-Key": REDACTED}],
        },
        "count": 3,
    }
    assert value["webhook_secret"] == "whsec_1", "the input is not modified"


def test_redact_text_masks_url_passwords_and_bearer_credentials() -> None:
    assert redact_text("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert (
        redact_text("https://user:p4ss@hooks.example/x?a=1")
        == "https://user:***@hooks.example/x?a=1"
    )
    assert redact_text("Bearer eyJ.abc-def") == "Bearer ***"
    assert redact_text("basic dXNlcjpwYXNz") == "basic ***"
    assert redact_text("https://hooks.example/x") == "https://hooks.example/x"
    assert redact_text("pong: hi") == "pong: hi"


def test_task_reprs_are_celery_shaped_and_hold_no_secret() -> None:
    args = ["0190-abc", {"url": "https://u:hunter2@h/x"}]
    kwargs = {"webhook_secret": "whsec_1", "api_key": "key_2", "attempt": 2}
    argsrepr, kwargsrepr = task_reprs(args, kwargs)
    assert ast.literal_eval(argsrepr) == ["0190-abc", {"url": "https://u:***@h/x"}]
    assert ast.literal_eval(kwargsrepr) == {
        "webhook_secret": REDACTED,
        "api_key": REDACTED,
        "attempt": 2,
    }
    for secret in ("hunter2", "whsec_1", "key_2"):
        assert secret not in argsrepr + kwargsrepr
    assert task_reprs(None, None) == ("[]", "{}")
    assert task_reprs((), {}) == ("[]", "{}")


def test_task_reprs_are_bounded_like_celerys() -> None:
    argsrepr, _ = task_reprs(["x" * 5000], {})
    assert len(argsrepr) <= 1100


def test_a_workflow_task_is_shown_by_name_and_labels_not_a_bare_uuid() -> None:
    from app.runtime.outbox import workflow_reprs
    from domains.shared.outbox import OutboxMessage

    op_id = "0192f000-0000-7000-8000-000000000001"
    message = OutboxMessage(
        task_name="imports.run",
        queue="imports",
        args=[op_id],
        task_id=op_id,
        headers={
            "operation": f"operations/imports.{op_id}",
            "display": {"dataset": "Orders", "file": "orders.csv", "bytes": "70", "format": "csv"},
        },
    )
    argsrepr, kwargsrepr = workflow_reprs(message) or ("", "")
    assert argsrepr == "()"
    assert ast.literal_eval(kwargsrepr) == {
        "operation": f"operations/imports.{op_id}",
        "dataset": "Orders",
        "file": "orders.csv",
        "bytes": "70",
        "format": "csv",
    }
    # Anything else keeps Celery's own (redacted) reprs.
    other = OutboxMessage(task_name="platform.sweep", queue="platform", args=[], task_id="x")
    assert workflow_reprs(other) is None


# What the shortcuts must give: the full substitutions, and Celery's own saferepr.
_TRIGGERS = st.sampled_from(
    [
        "@",
        "=",
        "?api_key=",
        "&sig=",
        "cvk_0123456789ab_secretsecret",
        "Bearer ",
        "BASIC ",
        "ba\u017fic ",
        "://u:p@h",
        "'",
    ]
)
_TEXT = st.lists(st.one_of(st.text(max_size=12), _TRIGGERS), max_size=6).map("".join)


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_redact_text_skips_only_texts_no_substitution_would_change(text: str) -> None:
    assert redact_text(text) == redaction._mask(text)


def test_redact_text_still_masks_what_only_unicode_case_folding_matches() -> None:
    # "\u017f" (long s) matches "s" case-insensitively: the ASCII shortcut must not skip it.
    assert redact_text("ba\u017fic dXNlcjpwYXNz") == "ba\u017fic ***"
    assert redact_text("BEARER abc") == "BEARER ***"


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=20))
def test_sensitive_keys_are_those_containing_a_sensitive_part(key: str) -> None:
    normalized = key.lower().replace("-", "_")
    assert is_sensitive_key(key) == any(p in normalized for p in redaction.SENSITIVE_KEY_PARTS)


_FLAT = st.one_of(
    st.dictionaries(_TEXT, _TEXT, max_size=6),
    st.lists(_TEXT, max_size=6),
    st.dictionaries(st.text(max_size=5), st.text(max_size=400), max_size=4),
)


@settings(max_examples=400, deadline=None)
@given(_FLAT)
def test_the_flat_repr_is_celerys_saferepr(value: object) -> None:
    fast = redaction._flat_repr(value)
    if fast is not None:
        assert fast == saferepr(value, redaction.REPR_MAXSIZE)


def test_short_flat_values_take_the_flat_repr_and_others_celerys() -> None:
    shown = {"operation": "operations/platform.0192", "message": "it's \\ \u00e9\n"}
    assert redaction._flat_repr(shown) == saferepr(shown, redaction.REPR_MAXSIZE)
    assert redaction._flat_repr(["a", "b'c"]) == "['a', 'b\\'c']"
    assert redaction._flat_repr({"a": 1}) is None  # not only strings
    assert redaction._flat_repr(["x" * 5000]) is None  # would be cut: saferepr cuts it
    assert redacted_repr(["x" * 5000]) == saferepr(["x" * 5000], redaction.REPR_MAXSIZE)
    assert redacted_repr({"token": "t", "url": "https://u:pw@h"}) == (
        "{'token': '***', 'url': 'https://u:***@h'}"
    )
