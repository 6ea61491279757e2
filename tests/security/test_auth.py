"""Every /v1 route needs a key (401) and the scope its path maps to (403); health and docs do
not; /docs can be switched off. Generic over ``app.routes``: routers added later are covered."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import Depends

from api.auth import SCOPE_AREAS, Principal, require_scope, route_scope
from api.limits import flat_routes
from domains.platform.keys.model import AREAS
from tests.security.support import api, bearer, fill_path, new_key


def v1_routes(app) -> list[tuple[str, str]]:
    return [
        (method, route.path)
        for route in flat_routes(app.routes)
        if route.path.startswith("/v1")
        for method in sorted(route.methods)
    ]


async def test_every_v1_route_refuses_a_request_without_a_key(settings):
    async with api(settings) as (app, http):
        routes = v1_routes(app)
        assert len(routes) >= 8  # operations and pings at least
        for method, path in routes:
            response = await http.request(method, fill_path(path), json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["status"] == "UNAUTHENTICATED"
            assert response.headers["www-authenticate"].startswith("Bearer")
        # Paths that match no route are refused too: nothing under /v1 is reachable unauthenticated.
        assert (await http.get("/v1/nothing-here")).status_code == 401


async def test_every_v1_route_maps_to_a_known_scope_area(settings):
    async with api(settings) as (app, _):
        for method, path in v1_routes(app):
            scope = route_scope(method, path)
            assert scope != "*", f"{method} {path}: add its resource to api.auth.SCOPE_AREAS"
            assert scope.split(":")[0] in AREAS
    assert set(SCOPE_AREAS.values()) <= set(AREAS)


def test_route_scope_reads_and_writes():
    assert route_scope("GET", "/v1/operations/platform.x") == "operations:read"
    assert route_scope("POST", "/v1/operations/platform.x:cancel") == "operations:write"
    assert route_scope("POST", "/v1/pings") == "operations:write"
    assert route_scope("GET", "/v1/datasets/x/records") == "imports:read"
    assert route_scope("POST", "/v1/datasets:import") == "imports:write"
    assert route_scope("DELETE", "/v1/endpoints/e") == "webhooks:write"
    assert route_scope("PATCH", "/v1/schedules/s") == "schedules:write"
    assert route_scope("GET", "/v1/reports") == "reports:read"
    assert route_scope("GET", "/v1/unmapped") == "*"


async def test_scopes_are_enforced_per_route(settings):
    reader = await new_key(settings, scopes=("operations:read",))
    writer = await new_key(settings, scopes=("operations:write",))
    other = await new_key(settings, scopes=("reports:read",))
    async with api(settings) as (_, http):
        assert (await http.get("/v1/operations", headers=bearer(reader))).status_code == 200
        denied = await http.post("/v1/pings", json={}, headers=bearer(reader))
        assert denied.status_code == 403, denied.text
        error = denied.json()["error"]
        assert error["status"] == "PERMISSION_DENIED"
        assert "operations:write" in error["message"]
        # write implies read
        assert (await http.get("/v1/operations", headers=bearer(writer))).status_code == 200
        assert (await http.post("/v1/pings", json={}, headers=bearer(writer))).status_code == 200
        assert (await http.get("/v1/operations", headers=bearer(other))).status_code == 403


async def test_health_and_docs_need_no_key_and_docs_can_be_disabled(settings):
    async with api(settings) as (_, http):
        for path in ("/healthz", "/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 200, path
        spec = (await http.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        assert spec["paths"]["/v1/pings"]["post"]["security"] == [{"apiKey": []}]
        assert "401" in spec["paths"]["/v1/pings"]["post"]["responses"]
    async with api(settings, docs_enabled=False) as (_, http):
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/healthz")).status_code == 200


async def test_auth_can_be_turned_off_for_local_experiments(settings):
    async with api(settings, auth_required=False) as (_, http):
        response = await http.get("/v1/operations")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "variable", ["CONVEYOR_SECURITY__AUTH_REQUIRED", "CONVEYOR_SECURITY__DOCS_ENABLED"]
)
def test_security_settings_come_from_the_environment(monkeypatch, variable):
    from app.config import load_settings

    monkeypatch.setenv(variable, "false")
    loaded = load_settings(database_url="postgresql://x@h/d", broker_url="redis://h/0")
    field = variable.split("__")[1].lower()
    assert getattr(loaded.security, field) is False


async def test_a_scoped_route_outside_v1_fails_closed(settings):
    async with api(settings) as (app, http):

        async def internal(
            caller: Annotated[Principal, Depends(require_scope("operations:read"))],
        ) -> dict[str, str]:
            return {"tenant": caller.tenant}

        app.add_api_route("/internal/peek", internal)
        response = await http.get("/internal/peek")
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"


async def test_auth_holds_behind_a_proxy_prefix(settings, api_key):
    import httpx

    async with api(settings) as (app, _):
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            refused = await http.get("/api/v1/operations")
            allowed = await http.get("/api/v1/operations", headers=bearer(api_key))
    assert refused.status_code == 401
    assert allowed.status_code == 200, allowed.text


# The submit routes check their scope in their own body (api.auth.authorize), not through a
# dependency (docs/architecture.md, "Hot routes"); the middleware's check by path comes first.
HOT_ROUTES = [
    ("/v1/pings", {}, "operations:write"),
    ("/v1/reports", {"type": "digest"}, "reports:write"),
    ("/v1/events", {"type": "orders.created", "data": {}}, "webhooks:write"),
    ("/v1/datasets/0192f000-0000-7000-8000-000000000001/imports", {}, "imports:write"),
]


@pytest.mark.parametrize(("path", "body", "scope"), HOT_ROUTES)
async def test_hot_routes_check_their_scope_past_the_middleware(
    settings, monkeypatch, path, body, scope
):
    from api import auth

    reader = await new_key(settings, scopes=("operations:read",))
    # The middleware lets the request through (as if the path mapped to a scope the key has):
    # what refuses it is the route's own check.
    monkeypatch.setattr(auth, "route_scope", lambda method, path: "operations:read")
    async with api(settings) as (_, http):
        denied = await http.post(path, json=body, headers=bearer(reader))
    assert denied.status_code == 403, denied.text
    error = denied.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert error["details"][0]["metadata"] == {"scope": scope}


def test_hot_routes_declare_no_dependencies():
    from fastapi.routing import APIRoute

    from api.v1 import datasets, events, pings, reports

    routes = {
        route.path: route
        for module in (datasets, events, pings, reports)
        for route in module.router.routes
        if isinstance(route, APIRoute) and "POST" in route.methods
    }
    for path, _, _ in HOT_ROUTES:
        template = path.replace("0192f000-0000-7000-8000-000000000001", "{dataset_id}")
        assert routes[template].dependant.dependencies == [], template
