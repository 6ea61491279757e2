"""Tenant isolation: a resource created with tenant A's key is invisible to tenant B's key: get,
list, cancel, wait, update, delete and custom methods answer 404 (existence is not revealed) and
change nothing. One spec per resource type; a type whose router is not in the app is skipped."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from api.limits import flat_routes
from tests.security.support import bearer, new_key


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to create one resource and what tenant B must not be able to do with it."""

    kind: str
    create: tuple[str, dict[str, Any]]  # path, JSON body
    collection: str | None = None  # list path, its response key
    list_key: str = ""
    # (method, path suffix after the resource path, JSON body): each must be 404 for B.
    foreign: tuple[tuple[str, str, Any], ...] = ()


SPECS = [
    Spec(
        "pings",
        ("/v1/pings", {"message": "mine", "sleep_seconds": 30, "steps": 30}),
    ),
    Spec(
        "operations",
        ("/v1/pings", {"message": "mine too", "sleep_seconds": 30, "steps": 30}),
        collection="/v1/operations",
        list_key="operations",
        foreign=(
            ("POST", ":wait", {"timeout": 0}),
            ("POST", ":cancel", None),
            ("POST", ":retry", None),
            ("DELETE", "", None),
        ),
    ),
    Spec(
        "datasets",
        (
            "/v1/datasets",
            {
                "display_name": "Isolated",
                "fields": [{"name": "id", "type": "string", "required": True}],
                "key_field": "id",
            },
        ),
        collection="/v1/datasets",
        list_key="datasets",
        foreign=(
            ("GET", "/imports", None),
            ("GET", "/records", None),
            ("PATCH", "", {"display_name": "stolen"}),
            ("DELETE", "", None),
        ),
    ),
    Spec(
        "schedules",
        (
            "/v1/schedules",
            {"workflow": "platform.ping", "args": {"message": "x"}, "interval_seconds": 3600},
        ),
        collection="/v1/schedules",
        list_key="schedules",
        foreign=(
            ("GET", "/runs", None),
            ("PATCH", "", {"enabled": False}),
            ("POST", ":run", None),
            ("DELETE", "", None),
        ),
    ),
    Spec(
        "reports",
        ("/v1/reports", {"type": "digest", "period": "yesterday", "format": "csv"}),
        collection="/v1/reports",
        list_key="reports",
        foreign=(("GET", ":download", None),),
    ),
    Spec(
        "endpoints",
        (
            "/v1/endpoints",
            {"url": "https://93.184.215.14/hook", "event_types": ["imports.*"]},
        ),
        collection="/v1/endpoints",
        list_key="endpoints",
        foreign=(
            ("GET", "/deliveries", None),
            ("POST", ":rotateSecret", None),
            ("PATCH", "", {"enabled": False}),
            ("DELETE", "", None),
        ),
    ),
]


def resource_path(created: dict[str, Any], kind: str) -> str:
    """``/v1/<resource name>``: from a created resource, or from the target/name of an operation."""
    if kind == "operations":
        return "/v1/" + created["name"]
    if "metadata" in created and "target" in created.get("metadata", {}):
        return "/v1/" + created["metadata"]["target"]
    return "/v1/" + created["name"]


@pytest.fixture
async def tenants(settings):
    a = await new_key(settings, tenant="tenant-a")
    b = await new_key(settings, tenant="tenant-b")
    return bearer(a), bearer(b)


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
async def test_other_tenant_cannot_see_or_touch_the_resource(api_app, client, tenants, spec):
    a, b = tenants
    paths = {(m, r.path) for r in flat_routes(api_app.routes) for m in r.methods}
    assert ("POST", spec.create[0]) in paths, f"no POST {spec.create[0]} route"
    # A literal public address: creation needs no DNS, so nothing here may skip.
    created = await client.post(spec.create[0], json=spec.create[1], headers=a)
    assert created.status_code in (200, 201), created.text
    path = resource_path(created.json(), spec.kind)
    operation = created.json()["name"] if "metadata" in created.json() else None

    mine = await client.get(path, headers=a)
    assert mine.status_code == 200, (path, mine.text)
    theirs = await client.get(path, headers=b)
    assert theirs.status_code == 404, (path, theirs.text)
    assert theirs.json()["error"]["status"] == "NOT_FOUND"

    if spec.collection:
        ident = path.rsplit("/", 1)[1]
        listed_b = (await client.get(spec.collection, headers=b)).json()
        assert ident not in str(listed_b[spec.list_key]), listed_b
        listed_a = (await client.get(spec.collection, headers=a)).json()
        assert ident in str(listed_a[spec.list_key])

    for method, suffix, body in spec.foreign:
        response = await client.request(method, path + suffix, json=body, headers=b)
        assert response.status_code == 404, (method, path + suffix, response.text)

    after = await client.get(path, headers=a)
    assert after.status_code == 200, "another tenant changed or deleted it"
    if spec.kind == "operations":
        assert after.json()["metadata"]["state"] not in ("CANCELLED", "CANCELLING")
    if operation:  # leave no long work behind for a worker of later tests
        await client.post(f"/v1/{operation}:cancel", headers=a)


async def test_same_request_id_in_two_tenants_makes_two_operations(client, tenants):
    a, b = tenants
    body = {"message": "same", "request_id": "shared-request-id-1"}
    first = (await client.post("/v1/pings", json=body, headers=a)).json()
    second = (await client.post("/v1/pings", json=body, headers=b)).json()
    assert first["name"] != second["name"]
    again = (await client.post("/v1/pings", json=body, headers=a)).json()
    assert again["name"] == first["name"]


async def test_page_tokens_do_not_cross_tenants(client, tenants):
    a, b = tenants
    for i in range(3):
        await client.post("/v1/pings", json={"message": f"p{i}"}, headers=a)
    page = (await client.get("/v1/operations", params={"page_size": 1}, headers=a)).json()
    token = page["next_page_token"]
    assert token
    stolen = await client.get(
        "/v1/operations", params={"page_size": 1, "page_token": token}, headers=b
    )
    assert stolen.status_code == 400
