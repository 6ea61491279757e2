"""The API's calls as :class:`~conveyor_client._core.Call` descriptions (shared by both clients)."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Callable
from typing import Any

from conveyor_client._core import Call, Upload, new_request_id


def seg(value: str) -> str:
    """Quotes one path segment."""
    return urllib.parse.quote(value, safe="")


def ident(value: str, collection: str) -> str:
    """``datasets/abc`` or ``abc`` -> ``abc`` (quoted for a path).

    Args:
        value: A resource name or id.
        collection: Its collection, e.g. ``datasets``.

    Returns:
        The quoted id.

    Raises:
        ValueError: If it is empty.
    """
    text = str(value).strip().removeprefix("/").removeprefix(collection + "/")
    if not text:
        raise ValueError(f"{collection} name {value!r} is empty")
    return seg(text)


def op_path(name: str) -> str:
    """``operations/platform.x`` or ``platform.x`` -> ``/v1/operations/platform.x``."""
    return "/v1/operations/" + ident(name, "operations")


def nested(name: str, parent: str | None, collection: str, child: str) -> tuple[str, str]:
    """Splits ``collection/P/child/C`` or (parent ``P``, ``C``) into quoted ``(P, C)``.

    Args:
        name: Full name or the child's id.
        parent: Parent name or id when ``name`` is an id.
        collection: Parent collection (``datasets``).
        child: Child collection (``imports``).

    Returns:
        Quoted parent and child ids.

    Raises:
        ValueError: If the parent cannot be told.
    """
    parts = str(name).strip("/").split("/")
    if len(parts) == 4 and parts[0] == collection and parts[2] == child:
        return seg(parts[1]), seg(parts[3])
    if parent is None:
        raise ValueError(f"pass the full name {collection}/<id>/{child}/<id>, or the parent")
    return ident(parent, collection), ident(name, child)


def page_params(filter_: str | None, page_size: int | None, token: str | None) -> dict[str, Any]:
    """Query parameters of a list call."""
    return {"filter": filter_, "page_size": page_size, "page_token": token or None}


def timestamp(value: dt.datetime | str) -> str:
    """RFC 3339 text of a timestamp (naive datetimes are taken as UTC)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def clean(body: dict[str, Any]) -> dict[str, Any]:
    """Drops ``None`` values (fields the caller left out)."""
    return {k: v for k, v in body.items() if v is not None}


# -- operations ------------------------------------------------------------------------------


def lister(
    path: str, filter_: str | None, page_size: int | None, **extra: Any
) -> Callable[[str | None], Call]:
    """Returns ``page_token -> Call`` for a list call (AIP-158 paging, AIP-160 filter).

    Args:
        path: Collection path.
        filter_: Filter, if any.
        page_size: Items per page, if set.
        **extra: More query parameters (e.g. ``order_by``).

    Returns:
        The factory.
    """

    def page(token: str | None) -> Call:
        params = {**page_params(filter_, page_size, token), **extra}
        return Call("GET", path, params=params, repeatable=True)

    return page


def operations_wait(name: str, timeout: float) -> Call:
    """POST :wait (a read: safe to repeat)."""
    return Call(
        "POST", op_path(name) + ":wait", json={"timeout": timeout}, repeatable=True, timeout=timeout
    )


# -- idempotent creates (AIP-155) ------------------------------------------------------------


def create(path: str, fields: dict[str, Any], request_id: str | None) -> Call:
    """POST ``path`` with ``fields`` (``None`` dropped) and a request_id (generated when not
    given), so the create is resent safely after a lost answer, a 503 or a 429.

    Args:
        path: Collection path, e.g. ``/v1/datasets``.
        fields: The request fields.
        request_id: AIP-155 request id, or ``None`` for a fresh one.

    Returns:
        The repeatable call.
    """
    body = clean({**fields, "request_id": request_id or new_request_id()})
    return Call("POST", path, json=body, repeatable=True)


def datasets_create(
    display_name: str,
    fields: list[dict[str, Any]],
    key_field: str,
    source_uri: str | None,
    request_id: str | None,
) -> Call:
    """POST /v1/datasets with a request_id."""
    return create(
        "/v1/datasets",
        {
            "display_name": display_name,
            "fields": fields,
            "key_field": key_field,
            "source_uri": source_uri,
        },
        request_id,
    )


def endpoints_create(
    url: str,
    event_types: list[str],
    description: str | None,
    enabled: bool | None,
    rate_limit: float | None,
    request_id: str | None,
) -> Call:
    """POST /v1/endpoints with a request_id."""
    return create(
        "/v1/endpoints",
        {
            "url": url,
            "event_types": event_types,
            "description": description,
            "enabled": enabled,
            "rate_limit": rate_limit,
        },
        request_id,
    )


def events_publish(type_: str, data: dict[str, Any] | None, request_id: str | None) -> Call:
    """POST /v1/events with a request_id."""
    return create("/v1/events", {"type": type_, "data": data or {}}, request_id)


def schedules_create(fields: dict[str, Any], request_id: str | None) -> Call:
    """POST /v1/schedules with a request_id.

    Args:
        fields: ``workflow``, ``cron``, ``interval_seconds``, ``args``... (``None`` dropped).
        request_id: AIP-155 request id, or ``None`` for a fresh one.

    Returns:
        The repeatable call.
    """
    return create("/v1/schedules", fields, request_id)


# -- pings -----------------------------------------------------------------------------------


def pings_create(
    message: str,
    sleep_seconds: float | None,
    steps: int | None,
    fail_attempts: int | None,
    request_id: str | None,
) -> Call:
    """POST /v1/pings with a request_id (generated when not given)."""
    return create(
        "/v1/pings",
        {
            "message": message,
            "sleep_seconds": sleep_seconds,
            "steps": steps,
            "fail_attempts": fail_attempts,
        },
        request_id,
    )


# -- imports ---------------------------------------------------------------------------------

_MEDIA = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


def imports_create(
    dataset: str,
    file: Upload | None,
    *,
    format: str | None,
    source_uri: str | None,
    request_id: str | None,
    gzip: bool,
) -> Call:
    """POST /v1/datasets/{id}/imports: the file streamed as the raw body, or a source_uri."""
    path = f"/v1/datasets/{ident(dataset, 'datasets')}/imports"
    rid = request_id or new_request_id()
    if (file is None) == (source_uri is None):
        raise ValueError("pass exactly one of file and source_uri")
    if source_uri is not None:
        body = clean({"source_uri": source_uri, "format": format, "request_id": rid})
        return Call("POST", path, json=body, repeatable=True)
    if gzip:
        media = "application/gzip"
    else:
        guess = format
        if guess in (None, "auto") and isinstance(file, str):
            guess = "jsonl" if file.endswith((".jsonl", ".ndjson")) else "csv"
        media = _MEDIA.get(guess or "csv", "text/csv")
    return Call(
        "POST",
        path,
        params={"format": format, "request_id": rid},
        upload=file,
        headers={"content-type": media},
        repeatable=True,
    )


# -- reports ---------------------------------------------------------------------------------


def reports_create(
    type_: str,
    period: str | dict[str, str] | None,
    format: str | None,
    request_id: str | None,
) -> Call:
    """POST /v1/reports with a request_id."""
    return create("/v1/reports", {"type": type_, "period": period, "format": format}, request_id)
