"""Redaction of secrets in what monitors see of a task: its ``argsrepr``/``kwargsrepr``.

A Celery message carries the real arguments in its body for the worker, and their *repr* in its
headers (``argsrepr``/``kwargsrepr``) for everything else: the ``task-received`` event Flower
builds its task page from, and the worker's log lines. Celery computes that repr from the real
arguments unless the publisher passes its own, so the publisher passes
:func:`task_reprs`: the same repr with every secret-looking value replaced by ``"***"``.

Secret-looking means a mapping key containing one of :data:`SENSITIVE_KEY_PARTS`
(``webhook_secret``, ``X-Api-Key``, ``Authorization``, ``refresh_token``...), at any depth, plus
the password in a URL (``redis://:pw@host``) and ``Bearer``/``Basic`` credentials in any string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from celery.utils.saferepr import saferepr

REDACTED = "***"
"""What a secret value is replaced with."""

SENSITIVE_KEY_PARTS: tuple[str, ...] = (
    "secret",
    "password",
    "passwd",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "private_key",
    "credential",
    "cookie",
)
"""A key containing any of these (case-insensitive, ``-`` read as ``_``) holds a secret."""

REPR_MAXSIZE = 1024
"""Longest repr, as Celery's own ``argsrepr_maxsize``/``kwargsrepr_maxsize``."""

_MAX_DEPTH = 32
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*):[^@/?#\s]+@")
_AUTH_SCHEME = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
# A query parameter whose name looks secret (?api_key=, &access_token=, ?key=, ;password=...),
# URL-encoded or not; the value ends at the next separator, quote or space.
_QUERY_SECRET = re.compile(
    r"(?i)(?P<name>[?&;](?:[^=&;\s\"'#?]*(?:secret|passw|token|api[_-]?key|apikey|auth"
    r"|credential|private[_-]?key|signature|session)[^=&;\s\"'#?]*|key|sig|code)=)"
    r"[^&;\s\"'#]+"
)
# A Conveyor API key anywhere (cvk_<prefix>_<secret>): the prefix stays, it names the key.
_CONVEYOR_KEY = re.compile(r"\b(?P<head>cvk_[0-9a-f]{12}_)[A-Za-z0-9_-]{8,}")


def is_sensitive_key(key: object) -> bool:
    """Says whether a mapping key names a secret.

    Args:
        key: A mapping key.

    Returns:
        ``True`` for keys like ``secret``, ``signing_secret``, ``X-Api-Key``, ``password``.
    """
    normalized = str(key).lower().replace("-", "_")
    return any(part in normalized for part in SENSITIVE_KEY_PARTS)


def redact_text(text: str) -> str:
    """Masks the credentials a free-form string may carry.

    Args:
        text: Any string.

    Returns:
        ``text`` with URL passwords, ``Bearer``/``Basic`` credentials, secret-looking query
        parameters (``?api_key=``, ``&token=``...) and Conveyor API keys replaced by ``***``.
    """
    text = _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)
    text = _AUTH_SCHEME.sub(rf"\g<scheme> {REDACTED}", text)
    text = _QUERY_SECRET.sub(_mask_query_value, text)
    return _CONVEYOR_KEY.sub(rf"\g<head>{REDACTED}", text)


_NOT_SECRET_PARAMS = frozenset({"page_token", "next_page_token"})  # signed cursors, not keys


def _mask_query_value(match: re.Match[str]) -> str:
    name = match.group("name")
    if name[1:-1].lower() in _NOT_SECRET_PARAMS:
        return match.group(0)
    return f"{name}{REDACTED}"


def redact(value: Any, _depth: int = 0) -> Any:
    """Returns a copy of ``value`` with every secret replaced by :data:`REDACTED`.

    Mappings, lists and tuples are walked to any depth; the value of a sensitive key is masked
    whatever its type; strings lose URL passwords and bearer tokens. Nothing is modified in place.

    Args:
        value: Task arguments (JSON-like data).
        _depth: Recursion depth (internal).

    Returns:
        The redacted copy.
    """
    if _depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_sensitive_key(key) else redact(item, _depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        items = [redact(item, _depth + 1) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, str):
        return redact_text(value)
    return value


def task_reprs(args: Any, kwargs: Any) -> tuple[str, str]:
    """Returns the ``argsrepr`` and ``kwargsrepr`` to publish a task with.

    Pass them to ``send_task``/``apply_async`` (``argsrepr=..., kwargsrepr=...``): Flower, the
    ``task-received`` event and the worker's log lines then show these instead of the real args.

    Args:
        args: The task's positional arguments.
        kwargs: The task's keyword arguments.

    Returns:
        ``(argsrepr, kwargsrepr)``, shaped like Celery's own (``saferepr``, 1024 characters at
        most).
    """
    return (
        saferepr(redact(list(args or ())), REPR_MAXSIZE),
        saferepr(redact(dict(kwargs or {})), REPR_MAXSIZE),
    )
