"""API level: the Operations resource (AIP-151) over the real database and broker.

Tests that need an operation to stay PENDING use the ``stack`` fixture: its broker database
has no worker, so nothing runs the tasks the API dispatches. Tests that need a worker use the
session's in-process ``celery_worker``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.container import DOMAIN_TABLES
from domains.operations.model import TERMINAL_STATES, State
from domains.shared.clock import utcnow
from domains.shared.ids import new_id
from tests.support.ops import wait_done

# ---------------------------------------------------------------------- helpers


def op_path(name: str) -> str:
    """``operations/platform.<id>`` -> ``/v1/operations/platform.<id>``."""
    return f"/v1/{name}"


def id_of(name: str) -> uuid.UUID:
    return uuid.UUID(name.rpartition(".")[2])


def assert_error(response, http: int, status: str, *, reason: str | None = None, text=()):
    assert response.status_code == http, response.text
    error = response.json()["error"]
    assert error["code"] == http
    assert error["status"] == status
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    if reason is not None:
        assert error["details"][0]["reason"] == reason
    for fragment in text:
        assert fragment in error["message"], error["message"]
    return error


async def create_ping(client, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/pings", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def op_row(
    domain: str,
    *,
    type_: str = "ping",
    state: State = State.PENDING,
    create_time: dt.datetime | None = None,
) -> dict[str, Any]:
    """A row of ``<domain>.operations`` as the repository writes it."""
    when = create_time or utcnow()
    op_id = new_id()
    return {
        "id": op_id,
        "domain": domain,
        "type": type_,
        "target": f"things/{op_id}",
        "state": state.value,
        "done": state in TERMINAL_STATES,
        "progress": {"done": 0, "total": None, "message": ""},
        "attempt": 0,
        "dispatch_count": 1,
        "dispatch": {"task_name": f"{domain}.{type_}", "queue": domain, "args": [], "kwargs": {}},
        "create_time": when,
        "update_time": when,
        "error": (
            {"status": "INTERNAL", "message": "boom", "details": []}
            if state == State.FAILED
            else None
        ),
        "lease_seconds": 30.0,
        "pending_deadline_seconds": 300.0,
    }


async def insert_rows(database_url: str, rows: list[dict[str, Any]]) -> None:
    """Inserts operation rows straight into their domain schemas."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            for domain in {row["domain"] for row in rows}:
                table = DOMAIN_TABLES[domain].operations
                await conn.execute(sa.insert(table), [r for r in rows if r["domain"] == domain])
    finally:
        await engine.dispose()


def name_of(row: dict[str, Any]) -> str:
    return f"operations/{row['domain']}.{row['id']}"


async def list_names(client, **params: Any) -> list[str]:
    response = await client.get("/v1/operations", params=params)
    assert response.status_code == 200, response.text
    return [op["name"] for op in response.json()["operations"]]


# --------------------------------------------------------------------------- get


async def test_get_operation_returns_the_aip151_resource(stack):
    created = await create_ping(stack.client, message="get me")
    response = await stack.client.get(op_path(created["name"]))
    assert response.status_code == 200, response.text
    op = response.json()
    assert op["name"] == created["name"]
    assert op["name"].startswith("operations/platform.")
    assert op["done"] is False
    assert op.get("error") is None and op.get("response") is None
    meta = op["metadata"]
    assert meta["@type"] == "type.googleapis.com/conveyor.v1.OperationMetadata"
    assert meta["domain"] == "platform"
    assert meta["type"] == "ping"
    assert meta["state"] == "PENDING"
    assert meta["target"].startswith("pings/")
    assert meta["attempt"] == 0


@pytest.mark.parametrize(
    "operation_id", ["not-a-name", "platform", "platform.not-a-uuid", f"platform{uuid.uuid4()}"]
)
async def test_get_with_malformed_name_is_invalid_argument(client, operation_id):
    response = await client.get(f"/v1/operations/{operation_id}")
    assert_error(
        response, 400, "INVALID_ARGUMENT", reason="INVALID_OPERATION_NAME", text=["malformed"]
    )


@pytest.mark.parametrize("domain", ["platform", "imports", "nosuchdomain"])
async def test_get_unknown_operation_is_not_found(client, domain):
    response = await client.get(f"/v1/operations/{domain}.{uuid.uuid4()}")
    assert_error(response, 404, "NOT_FOUND", reason="OPERATION_NOT_FOUND")


# ----------------------------------------------------------------------- filters


@pytest.fixture
async def filter_rows(clean_db, stack, database_url) -> dict[str, str]:
    """Six operations across domains, states, types and creation times (by letter)."""
    base = utcnow() - dt.timedelta(days=1)
    rows = {
        "A": op_row("platform", state=State.SUCCEEDED, create_time=base + dt.timedelta(hours=1)),
        "B": op_row("platform", state=State.PENDING, create_time=base + dt.timedelta(hours=2)),
        "C": op_row(
            "platform", type_="sweep", state=State.FAILED, create_time=base + dt.timedelta(hours=3)
        ),
        "D": op_row(
            "imports", type_="import", state=State.RUNNING, create_time=base + dt.timedelta(hours=4)
        ),
        "E": op_row(
            "reports",
            type_="report",
            state=State.SUCCEEDED,
            create_time=base + dt.timedelta(hours=5),
        ),
    }
    await insert_rows(database_url, list(rows.values()))
    names = {key: name_of(row) for key, row in rows.items()}
    names["F"] = (await create_ping(stack.client, message="via api"))["name"]  # PENDING, now
    names["base+3h"] = (base + dt.timedelta(hours=3)).isoformat()
    names["base+1h"] = (base + dt.timedelta(hours=1)).isoformat()
    names["B-id"] = str(rows["B"]["id"])
    return names


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ("", "ABCDEF"),
        ("done = false", "BDF"),
        ("done = true", "ACE"),
        ("metadata.state = SUCCEEDED", "AE"),
        ('metadata.state = "PENDING"', "BF"),
        ("done != true", "BDF"),
        ('metadata.domain = "platform"', "ABCF"),
        ('metadata.domain != "platform"', "DE"),
        ('metadata.domain = "webhooks"', ""),
        ('metadata.type = "ping"', "ABF"),
        ('create_time > "{base+3h}"', "DEF"),
        ('create_time >= "{base+3h}"', "CDEF"),
        ('create_time <= "{base+3h}"', "ABC"),
        ('create_time < "{base+3h}" create_time > "{base+1h}"', "B"),
        ('metadata.domain = "platform" AND done = false', "BF"),
        ('metadata.type = "ping" metadata.domain != "imports"', "ABF"),
        ('metadata.state = PENDING AND create_time <= "{base+3h}"', "B"),
        ("metadata.state = PENDING AND done = false", "BF"),
        ("metadata.state = PENDING AND done = true", ""),
        ('metadata.type = "ping" AND done = true', "A"),
        ('metadata.target = "things/{B}"', "B"),
        ('done = true AND create_time > "{base+3h}"', "E"),
    ],
)
async def test_list_filters_select_matching_operations_in_creation_order(
    stack, filter_rows, filter_, expected
):
    text = filter_.replace("{base+3h}", filter_rows["base+3h"])
    text = text.replace("{base+1h}", filter_rows["base+1h"]).replace("{B}", filter_rows["B-id"])
    names = await list_names(stack.client, filter=text)
    assert names == [filter_rows[key] for key in expected]


@pytest.mark.parametrize(
    ("filter_", "fragments"),
    [
        ('color = "red"', ['unknown field "color"', "metadata.state"]),
        ("done = true OR done = false", ["OR is not supported", "AND"]),
        ("metadata.state = DONE", ["metadata.state must be one of", "SUCCEEDED", '"DONE"']),
        ("done = maybe", ["done must be true or false"]),
        ('create_time > "yesterday"', ["invalid timestamp", "RFC 3339"]),
        ('metadata.domain > "a"', ['operator ">" is not supported']),
        ("NOT done = true", ["NOT is not supported"]),
        ("(done = true)", ["parentheses"]),
        ("done =", ["expected a value"]),
        # Filters no index serves at scale are refused (AIP-160), saying what is served.
        ("metadata.state != SUCCEEDED", ['"!=" is not supported for metadata.state', "with ="]),
        ('update_time < "2026-01-01T00:00:00Z"', ["update_time cannot be filtered", "create_time"]),
        ('metadata.type = "ping" metadata.state = PENDING', ["cannot be combined"]),
        ('create_time != "2026-01-01T00:00:00Z"', ['"!=" is not supported for create_time']),
    ],
)
async def test_bad_filter_is_invalid_argument_naming_the_problem(client, filter_, fragments):
    response = await client.get("/v1/operations", params={"filter": filter_})
    error = assert_error(
        response, 400, "INVALID_ARGUMENT", reason="INVALID_FILTER", text=["filter: ", *fragments]
    )
    assert error["details"][0]["metadata"] == {"filter": filter_}


# ------------------------------------------------------------------------ paging


async def test_paging_returns_every_operation_exactly_once_in_id_order(
    clean_db, stack, database_url
):
    via_api = [(await create_ping(stack.client, message=f"p{i}"))["name"] for i in range(10)]
    rows = [op_row("platform") for _ in range(1990)] + [
        op_row("imports", type_="import", state=State.SUCCEEDED) for _ in range(500)
    ]
    await insert_rows(database_url, rows)
    expected = sorted([*via_api, *(name_of(r) for r in rows)], key=id_of)
    assert len(expected) == 2500

    pages: list[list[str]] = []
    tokens: list[str] = []
    token = ""
    while True:
        params: dict[str, Any] = {"page_size": 1000}
        if token:
            params["page_token"] = token
        response = await stack.client.get("/v1/operations", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([op["name"] for op in body["operations"]])
        token = body["next_page_token"]
        tokens.append(token)
        if not token or len(pages) > 5:
            break

    assert [len(page) for page in pages] == [1000, 1000, 500]
    assert tokens[-1] == ""
    assert all(tokens[:-1])
    seen = [name for page in pages for name in page]
    assert seen == expected  # every operation once, in id (creation) order, across domains


async def test_default_page_size_is_50_and_oversized_requests_are_coerced_to_1000(
    clean_db, database_url, client
):
    await insert_rows(database_url, [op_row("webhooks", type_="delivery") for _ in range(1100)])
    default = (await client.get("/v1/operations")).json()
    assert len(default["operations"]) == 50
    assert default["next_page_token"]
    response = await client.get("/v1/operations", params={"page_size": 5000})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["operations"]) == 1000
    assert body["next_page_token"]
    rest = (
        await client.get(
            "/v1/operations", params={"page_size": 5000, "page_token": body["next_page_token"]}
        )
    ).json()
    assert len(rest["operations"]) == 100
    assert rest["next_page_token"] == ""


async def test_page_size_may_change_between_pages(clean_db, database_url, client):
    rows = [op_row("platform") for _ in range(5)]
    await insert_rows(database_url, rows)
    first = (await client.get("/v1/operations", params={"page_size": 2})).json()
    rest = (
        await client.get(
            "/v1/operations", params={"page_size": 10, "page_token": first["next_page_token"]}
        )
    ).json()
    names = [op["name"] for op in first["operations"] + rest["operations"]]
    assert names == [name_of(r) for r in rows]
    assert rest["next_page_token"] == ""


async def test_negative_page_size_is_invalid_argument(client):
    response = await client.get("/v1/operations", params={"page_size": -1})
    assert_error(response, 400, "INVALID_ARGUMENT", reason="INVALID_PAGE_SIZE")


async def first_token(client, **params: Any) -> str:
    response = await client.get("/v1/operations", params={"page_size": 1, **params})
    assert response.status_code == 200, response.text
    token = response.json()["next_page_token"]
    assert token
    return token


async def test_tampered_page_token_is_invalid_argument(clean_db, database_url, client):
    await insert_rows(database_url, [op_row("platform") for _ in range(3)])
    token = await first_token(client)
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    for bad in (flipped, token[:-2], token + "x", "not a token!", "e30"):
        response = await client.get("/v1/operations", params={"page_token": bad})
        assert_error(
            response, 400, "INVALID_ARGUMENT", reason="INVALID_PAGE_TOKEN", text=["page_token"]
        )


async def test_page_token_reused_with_another_filter_is_invalid_argument(
    clean_db, database_url, client
):
    await insert_rows(database_url, [op_row("platform") for _ in range(3)])
    token = await first_token(client, filter="done = false")
    same = await client.get(
        "/v1/operations", params={"page_size": 1, "filter": "done = false", "page_token": token}
    )
    assert same.status_code == 200, same.text
    for other in ("done = true", ""):
        response = await client.get(
            "/v1/operations", params={"page_size": 1, "filter": other, "page_token": token}
        )
        assert_error(
            response,
            400,
            "INVALID_ARGUMENT",
            reason="INVALID_PAGE_TOKEN",
            text=["does not match the request"],
        )


# ----------------------------------------------------------------------- cancel


async def test_cancel_pending_operation_ends_cancelled(stack):
    created = await create_ping(stack.client, message="cancel me")
    response = await stack.client.post(f"{op_path(created['name'])}:cancel")
    assert response.status_code == 200, response.text
    op = response.json()
    assert op["metadata"]["state"] == "CANCELLED"
    assert op["done"] is True
    assert op["error"]["code"] == 1
    assert op["error"]["status"] == "CANCELLED"
    got = (await stack.client.get(op_path(created["name"]))).json()
    assert got["metadata"]["state"] == "CANCELLED"
    assert got["metadata"]["end_time"] is not None


async def test_cancel_done_operation_is_failed_precondition(stack):
    created = await create_ping(stack.client, message="twice")
    assert (await stack.client.post(f"{op_path(created['name'])}:cancel")).status_code == 200
    response = await stack.client.post(f"{op_path(created['name'])}:cancel")
    assert_error(
        response, 400, "FAILED_PRECONDITION", reason="OPERATION_DONE", text=["already done"]
    )


async def test_cancel_unknown_operation_is_not_found(client):
    response = await client.post(f"/v1/operations/platform.{uuid.uuid4()}:cancel")
    assert_error(response, 404, "NOT_FOUND")


# ------------------------------------------------------------------------- wait


async def test_wait_on_pending_operation_returns_not_done_after_the_timeout(stack):
    created = await create_ping(stack.client, message="slow")
    started = time.monotonic()
    response = await stack.client.post(f"{op_path(created['name'])}:wait", json={"timeout": 0.2})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["done"] is False
    assert response.json()["metadata"]["state"] == "PENDING"
    assert 0.2 <= elapsed < 2


async def test_wait_accepts_a_duration_string(stack):
    created = await create_ping(stack.client, message="slow")
    response = await stack.client.post(f"{op_path(created['name'])}:wait", json={"timeout": "0.1s"})
    assert response.status_code == 200, response.text
    assert response.json()["done"] is False


async def test_wait_on_done_operation_returns_at_once(stack):
    created = await create_ping(stack.client, message="done")
    await stack.client.post(f"{op_path(created['name'])}:cancel")
    started = time.monotonic()
    response = await stack.client.post(f"{op_path(created['name'])}:wait", json={"timeout": 30})
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("timeout", [61, -1, "61s", "soon"])
async def test_wait_with_timeout_out_of_range_is_invalid_argument(stack, timeout):
    created = await create_ping(stack.client, message="x")
    response = await stack.client.post(
        f"{op_path(created['name'])}:wait", json={"timeout": timeout}
    )
    assert_error(response, 400, "INVALID_ARGUMENT", reason="INVALID_TIMEOUT", text=["timeout"])


# ----------------------------------------------------------------------- delete


async def test_delete_pending_operation_is_failed_precondition(stack):
    created = await create_ping(stack.client, message="keep")
    response = await stack.client.delete(op_path(created["name"]))
    assert_error(response, 400, "FAILED_PRECONDITION", reason="OPERATION_NOT_DONE")
    assert (await stack.client.get(op_path(created["name"]))).status_code == 200


async def test_delete_done_operation_removes_it(stack):
    created = await create_ping(stack.client, message="bye")
    await stack.client.post(f"{op_path(created['name'])}:cancel")
    response = await stack.client.delete(op_path(created["name"]))
    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert_error(await stack.client.get(op_path(created["name"])), 404, "NOT_FOUND")
    assert_error(await stack.client.delete(op_path(created["name"])), 404, "NOT_FOUND")


async def test_ping_stays_readable_after_its_operation_is_deleted(stack):
    created = await create_ping(stack.client, message="orphan")
    await stack.client.post(f"{op_path(created['name'])}:cancel")
    assert (await stack.client.delete(op_path(created["name"]))).status_code == 200
    ping_id = created["metadata"]["target"].removeprefix("pings/")
    response = await stack.client.get(f"/v1/pings/{ping_id}")
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------ retry


async def test_retry_of_a_non_failed_operation_is_failed_precondition(stack):
    created = await create_ping(stack.client, message="fine")
    response = await stack.client.post(f"{op_path(created['name'])}:retry")
    assert_error(response, 400, "FAILED_PRECONDITION", reason="OPERATION_NOT_FAILED")
    await stack.client.post(f"{op_path(created['name'])}:cancel")
    response = await stack.client.post(f"{op_path(created['name'])}:retry")
    assert_error(response, 400, "FAILED_PRECONDITION", text=["CANCELLED"])


async def test_ping_failing_past_max_retries_fails_then_retry_runs_it_again(
    client, celery_worker, settings
):
    """fail_attempts counts attempts across retries (operation.attempt keeps growing), while
    each delivery gets task_max_retries + 1 tries (3 + 1 = 4 in the test settings):
    attempts 1-4 fail -> FAILED; :retry, attempts 5-8 fail -> FAILED; :retry, attempts 9-10
    fail and attempt 11 > 10 succeeds.
    """
    tries = settings.task_max_retries + 1
    assert tries == 4
    created = await create_ping(client, message="stubborn", fail_attempts=10)
    name = created["name"]

    failed = await wait_done(client, name)
    assert failed["metadata"]["state"] == "FAILED"
    assert failed["metadata"]["attempt"] == tries
    assert failed["error"]["status"] == "UNAVAILABLE"
    assert failed["error"]["code"] == 14
    assert f"gave up after {tries} attempts" in failed["error"]["message"]
    assert "deliberate failure" in failed["error"]["message"]
    assert failed.get("response") is None

    retried = await client.post(f"{op_path(name)}:retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["metadata"]["state"] == "PENDING"
    assert retried.json()["done"] is False
    assert retried.json().get("error") is None

    failed_again = await wait_done(client, name)
    assert failed_again["metadata"]["state"] == "FAILED"
    assert failed_again["metadata"]["attempt"] == 2 * tries
    assert "gave up" in failed_again["error"]["message"]

    assert (await client.post(f"{op_path(name)}:retry")).status_code == 200
    succeeded = await wait_done(client, name)
    assert succeeded["metadata"]["state"] == "SUCCEEDED", succeeded
    assert succeeded["metadata"]["attempt"] == 11
    assert succeeded["response"]["attempt"] == 11
    assert succeeded["response"]["reply"] == "pong: stubborn"
    assert succeeded.get("error") is None

    ping_id = created["metadata"]["target"].removeprefix("pings/")
    ping = (await client.get(f"/v1/pings/{ping_id}")).json()
    assert ping["state"] == "SUCCEEDED"
    assert ping["reply"] == "pong: stubborn"


async def test_ping_that_exhausts_retries_records_retries_exhausted_error_info(
    client, celery_worker
):
    created = await create_ping(client, message="dead letter", fail_attempts=20)
    failed = await wait_done(client, created["name"])
    assert failed["metadata"]["state"] == "FAILED"
    reasons = [d.get("reason") for d in failed["error"]["details"]]
    assert "RETRIES_EXHAUSTED" in reasons


async def test_order_by_create_time_desc_lists_newest_first_across_pages(clean_db, stack):
    names = [(await create_ping(stack.client, message=f"n{i}"))["name"] for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        params: dict[str, Any] = {"page_size": 2, "order_by": "create_time desc"}
        if token:
            params["page_token"] = token
        response = await stack.client.get("/v1/operations", params=params)
        assert response.status_code == 200, response.text
        seen += [op["name"] for op in response.json()["operations"]]
        token = response.json()["next_page_token"]
        if not token:
            break
    assert seen == names[::-1]
    # A token of one order is refused for the other (it would skip or repeat operations).
    first = await stack.client.get(
        "/v1/operations", params={"page_size": 2, "order_by": "create_time desc"}
    )
    mixed = await stack.client.get(
        "/v1/operations", params={"page_token": first.json()["next_page_token"]}
    )
    assert mixed.status_code == 400
    bad = await stack.client.get("/v1/operations", params={"order_by": "state"})
    assert bad.status_code == 400 and "create_time desc" in bad.json()["error"]["message"]


async def test_operation_shows_its_dispatch_count_and_correlation_id(stack):
    response = await stack.client.post(
        "/v1/pings", json={"message": "traced"}, headers={"x-request-id": "trace-me-123"}
    )
    op = (await stack.client.get(op_path(response.json()["name"]))).json()
    assert op["metadata"]["correlation_id"] == "trace-me-123"
    assert op["metadata"]["dispatch_count"] == 1, op  # handed to the outbox once
