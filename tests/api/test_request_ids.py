"""AIP-155 request ids on the resource creates: datasets, endpoints, schedules and events.

Each create runs through the real API and PostgreSQL; what was written is counted in the
database by a marker unique to the test (not by the request id, so a create that ignored the
request id would show up as a second row).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.ops import query

PUBLIC = "https://93.184.216.34/hook"


@dataclasses.dataclass(frozen=True)
class Create:
    """One create of the matrix.

    Attributes:
        path: Collection path.
        body: ``marker -> body``.
        other: ``marker -> a different body`` with the same marker.
        count_sql: Counts rows of the marker (``:marker``), per tenant when ``:tenant`` is set.
    """

    path: str
    body: Callable[[str], dict[str, Any]]
    other: Callable[[str], dict[str, Any]]
    count_sql: str


def _event_type(marker: str) -> str:
    return f"rid{marker}.Created"


CREATES = {
    "datasets": Create(
        "/v1/datasets",
        lambda m: {
            "display_name": m,
            "fields": [{"name": "id", "type": "string", "required": True}],
            "key_field": "id",
        },
        lambda m: {
            "display_name": m,
            "fields": [
                {"name": "id", "type": "string", "required": True},
                {"name": "note", "type": "string"},
            ],
            "key_field": "id",
        },
        "SELECT count(*) FROM imports.datasets WHERE display_name = :marker",
    ),
    "endpoints": Create(
        "/v1/endpoints",
        lambda m: {"url": PUBLIC, "event_types": ["rid.*"], "enabled": False, "description": m},
        lambda m: {"url": PUBLIC, "event_types": ["other.*"], "enabled": False, "description": m},
        "SELECT count(*) FROM webhooks.endpoints WHERE description = :marker",
    ),
    "schedules": Create(
        "/v1/schedules",
        lambda m: {
            "workflow": "platform.ping",
            "args": {"message": "tick"},
            "interval_seconds": 60,
            "display_name": m,
        },
        lambda m: {
            "workflow": "platform.ping",
            "args": {"message": "tick"},
            "interval_seconds": 120,
            "display_name": m,
        },
        "SELECT count(*) FROM platform.schedules WHERE display_name = :marker",
    ),
    "events": Create(
        "/v1/events",
        lambda m: {"type": _event_type(m), "data": {"order": 1}},
        lambda m: {"type": _event_type(m), "data": {"order": 2}},
        "SELECT count(*) FROM webhooks.received_events WHERE type = 'rid' || :marker || '.Created'",
    ),
}

resources = pytest.mark.parametrize("resource", list(CREATES))


def _marker() -> str:
    return uuid.uuid4().hex[:12]


async def _count(database_url: str, create: Create, marker: str) -> int:
    return int((await query(database_url, create.count_sql, marker=marker))[0][0])


@resources
async def test_a_retried_create_returns_the_first_resource_and_writes_nothing_more(
    client: httpx.AsyncClient, database_url: str, resource: str
) -> None:
    create, marker = CREATES[resource], _marker()
    rid = f"rid-{marker}"
    first = await client.post(create.path, json={**create.body(marker), "request_id": rid})
    assert first.status_code == 200, first.text
    again = await client.post(create.path, json={**create.body(marker), "request_id": rid})
    # The query parameter names the same request id as the body field.
    by_query = await client.post(create.path, params={"request_id": rid}, json=create.body(marker))
    for replay in (again, by_query):
        assert replay.status_code == first.status_code, replay.text
        assert replay.json() == first.json()
    assert await _count(database_url, create, marker) == 1


@resources
async def test_creates_without_a_request_id_are_not_merged(
    client: httpx.AsyncClient, database_url: str, resource: str
) -> None:
    create, marker = CREATES[resource], _marker()
    ids = set()
    for _ in range(2):
        response = await client.post(create.path, json=create.body(marker))
        assert response.status_code == 200, response.text
        ids.add(response.json()["id"])
    assert len(ids) == 2
    assert await _count(database_url, create, marker) == 2


@resources
async def test_a_request_id_reused_with_another_body_is_409_naming_the_first_resource(
    client: httpx.AsyncClient, database_url: str, resource: str
) -> None:
    create, marker = CREATES[resource], _marker()
    rid = f"rid-{marker}"
    first = await client.post(create.path, json={**create.body(marker), "request_id": rid})
    assert first.status_code == 200, first.text
    reused = await client.post(create.path, json={**create.other(marker), "request_id": rid})
    assert reused.status_code == 409, reused.text
    error = reused.json()["error"]
    assert error["status"] == "ALREADY_EXISTS"
    assert error["details"][0]["reason"] == "REQUEST_ID_REUSED"
    assert f"request_id {rid!r} was already used with a different request body" in error["message"]
    assert first.json()["name"] in error["message"]
    assert error["details"][0]["metadata"]["resource"] == first.json()["name"]
    assert await _count(database_url, create, marker) == 1


@resources
async def test_another_tenant_with_the_same_request_id_gets_its_own_resource(
    client: httpx.AsyncClient, database_url: str, settings: Any, resource: str
) -> None:
    from tests.conftest import create_api_key

    create, marker = CREATES[resource], _marker()
    rid = f"rid-{marker}"
    other_key = await create_api_key(settings, tenant=f"rid-other-{marker}")
    as_other = {"authorization": f"Bearer {other_key}"}
    mine = await client.post(create.path, json={**create.body(marker), "request_id": rid})
    theirs = await client.post(
        create.path, json={**create.body(marker), "request_id": rid}, headers=as_other
    )
    # A different body is no conflict for the other tenant either.
    theirs_other = await client.post(
        create.path, json={**create.other(marker), "request_id": rid + "-b"}, headers=as_other
    )
    for response in (mine, theirs, theirs_other):
        assert response.status_code == 200, response.text
    assert mine.json()["id"] != theirs.json()["id"]
    assert await _count(database_url, create, marker) == 3


@resources
async def test_concurrent_creates_with_one_request_id_make_one_resource(
    client: httpx.AsyncClient, database_url: str, resource: str
) -> None:
    create, marker = CREATES[resource], _marker()
    body = {**create.body(marker), "request_id": f"rid-{marker}"}
    responses = await asyncio.gather(*(client.post(create.path, json=body) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await _count(database_url, create, marker) == 1


@resources
@pytest.mark.parametrize("where", ["body", "query"])
async def test_a_malformed_request_id_is_invalid_argument(
    client: httpx.AsyncClient, database_url: str, resource: str, where: str
) -> None:
    create, marker = CREATES[resource], _marker()
    too_long = "r" * 129
    if where == "body":
        response = await client.post(
            create.path, json={**create.body(marker), "request_id": too_long}
        )
    else:
        response = await client.post(
            create.path, params={"request_id": too_long}, json=create.body(marker)
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and "request_id" in error["message"]
    assert await _count(database_url, create, marker) == 0


async def test_a_control_character_in_the_request_id_is_refused_by_the_domain(
    client: httpx.AsyncClient,
) -> None:
    body = {**CREATES["datasets"].body(_marker()), "request_id": "a\tb"}
    response = await client.post("/v1/datasets", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["reason"] == "INVALID_REQUEST_ID"


async def test_a_replayed_event_makes_no_deliveries_for_endpoints_created_since(
    client: httpx.AsyncClient, database_url: str
) -> None:
    marker = _marker()
    event_type = _event_type(marker)
    hook = {"url": PUBLIC, "event_types": [event_type], "enabled": False}
    assert (await client.post("/v1/endpoints", json=hook)).status_code == 200
    body = {"type": event_type, "data": {"order": 1}, "request_id": f"rid-{marker}"}
    first = await client.post("/v1/events", json=body)
    assert first.status_code == 200 and first.json()["deliveries"] == 1, first.text
    # A second subscriber appears before the client's retry: the retry is the same event,
    # already fanned out, so it must not reach the newcomer as a second fan-out.
    assert (await client.post("/v1/endpoints", json=hook)).status_code == 200
    again = await client.post("/v1/events", json=body)
    assert again.status_code == 200 and again.json() == first.json()
    deliveries = await query(
        database_url,
        "SELECT event_id::text FROM webhooks.deliveries WHERE event_type = :t",
        t=event_type,
    )
    assert [row[0] for row in deliveries] == [first.json()["id"]]


async def test_a_replayed_endpoint_create_returns_the_secret_that_signs(
    client: httpx.AsyncClient,
) -> None:
    marker = _marker()
    body = {**CREATES["endpoints"].body(marker), "request_id": f"rid-{marker}"}
    first = (await client.post("/v1/endpoints", json=body)).json()
    rotated = await client.post(f"/v1/endpoints/{first['id']}:rotateSecret")
    assert rotated.status_code == 200, rotated.text
    again = (await client.post("/v1/endpoints", json=body)).json()
    # The first answer (and its secret) may have been lost: the replay shows the current one.
    assert again["id"] == first["id"] and again["secret"] == rotated.json()["secret"]
