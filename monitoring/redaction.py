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
# One search for "contains any of the parts" (the same test as a loop over them, in C).
_SENSITIVE_PART = re.compile("|".join(re.escape(part) for part in SENSITIVE_KEY_PARTS))
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
    return _SENSITIVE_PART.search(str(key).lower().replace("-", "_")) is not None


def redact_text(text: str) -> str:
    """Masks the credentials a free-form string may carry.

    Args:
        text: Any string.

    Returns:
        ``text`` with URL passwords, ``Bearer``/``Basic`` credentials, secret-looking query
        parameters (``?api_key=``, ``&token=``...) and Conveyor API keys replaced by ``***``.
    """
    return text if _nothing_to_mask(text) else _mask(text)


def _mask(text: str) -> str:
    # Every substitution of redact_text, whatever the text holds.
    text = _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)
    text = _AUTH_SCHEME.sub(rf"\g<scheme> {REDACTED}", text)
    text = _QUERY_SECRET.sub(_mask_query_value, text)
    return _CONVEYOR_KEY.sub(rf"\g<head>{REDACTED}", text)


def _nothing_to_mask(text: str) -> bool:
    # What every pattern above needs to match: a URL password an "@", a query parameter an
    # "=", a Conveyor key "cvk_", an auth scheme "bearer" or "basic" in any case. Without
    # them no substitution can change the text, and four scans are spared (every log line,
    # every published task's repr). Only for ASCII: case-insensitive matching also equates a
    # few non-ASCII letters with ASCII ones (U+017F with "s"), which lower() would not see.
    if "@" in text or "=" in text or "cvk_" in text or not text.isascii():
        return False
    lowered = text.lower()
    return "bearer" not in lowered and "basic" not in lowered


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
    return redacted_repr(list(args or ())), redacted_repr(dict(kwargs or {}))


def redacted_repr(value: Any) -> str:
    """Returns Celery's ``saferepr`` of ``value`` after :func:`redact`, bounded like its own.

    Args:
        value: Task arguments (a list) or keyword arguments (a dict), JSON-like.

    Returns:
        The repr, :data:`REPR_MAXSIZE` characters at most (plus closing brackets).
    """
    redacted = redact(value)
    return _flat_repr(redacted) or saferepr(redacted, REPR_MAXSIZE)


_FLAT_REPR_MAX = 900
"""Longest repr built by :func:`_flat_repr`: well under :data:`REPR_MAXSIZE`, so nothing in it
would have been cut by ``saferepr``."""


def _flat_repr(value: Any) -> str | None:
    """``saferepr`` of a list or dict holding only strings, built directly, else ``None``.

    Most published tasks are shown by a few strings (an operation, labels): Celery's streaming
    ``saferepr`` spent about 0.3 M instructions per message on them, a third of a publish.
    Same text: each string quoted as ``saferepr`` quotes it (single quotes, ``'`` escaped,
    nothing else), only when no string is cut (the whole repr is short).
    """
    if type(value) is dict:
        parts = []
        for key, item in value.items():
            if type(key) is not str or type(item) is not str:
                return None
            parts.append(f"{_quoted(key)}: {_quoted(item)}")
        text = "{" + ", ".join(parts) + "}"
    elif type(value) is list:
        if not all(type(item) is str for item in value):
            return None
        text = "[" + ", ".join(_quoted(item) for item in value) + "]"
    else:
        return None
    return text if len(text) <= _FLAT_REPR_MAX else None


def _quoted(text: str) -> str:
    # celery.utils.saferepr._format_chars for a string that is not truncated.
    return "'" + text.replace("'", "\\'") + "'"
