"""Redaction of task args for monitors: what Flower, task events and worker logs show."""

from __future__ import annotations

import ast

import pytest

from monitoring.redaction import REDACTED, is_sensitive_key, redact, redact_text, task_reprs


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
