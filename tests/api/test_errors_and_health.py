"""AIP-193 errors for every kind of failure, and the health endpoints."""

from __future__ import annotations

import httpx

from app.main import create_app


async def test_unexpected_error_is_internal_without_traceback(api_app, auth_headers):
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    api_app.add_api_route("/v1/boom", boom)
    transport = httpx.ASGITransport(app=api_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/v1/boom", headers={"X-Request-Id": "req-500", **auth_headers})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert "req-500" in response.json()["error"]["message"]
    error = response.json()["error"]
    assert error["status"] == "INTERNAL"
    assert "secret" not in response.text
    assert "Traceback" not in response.text


async def test_unknown_route_is_aip193_not_found(client):
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


async def test_wrong_method_is_aip193(client):
    response = await client.put("/v1/pings")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == 405


async def test_docs_redoc_and_openapi_are_served(client):
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/pings" in spec["paths"]
    assert "/v1/operations/{operation_id}:cancel" in spec["paths"]


async def test_healthz_is_ok(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_readyz_is_ok_with_database_and_broker(client):
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_readyz_is_503_when_broker_is_unreachable(settings):
    dead = settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "broker_connect_timeout_seconds": 0.5}
    )
    app = create_app(dead)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/readyz")
    await app.state.container.registry.dispose()
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["status"] == "UNAVAILABLE"
    assert "broker" in error["message"]


async def test_readyz_is_503_when_database_is_unreachable(settings):
    dead = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}
    )
    app = create_app(dead)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/readyz")
    await app.state.container.registry.dispose()
    assert response.status_code == 503
    assert "database" in response.json()["error"]["message"]


async def test_accepted_ping_survives_broker_outage(settings, database_url, auth_headers):
    """Broker down at submit time: still 2xx (the row is durable); the relay publishes it later."""
    from tests.support.ops import query

    dead = settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "broker_connect_timeout_seconds": 0.5}
    )
    app = create_app(dead)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post("/v1/pings", json={"message": "outage"}, headers=auth_headers)
        await app.state.publisher.drain()
    await app.state.container.registry.dispose()
    assert response.status_code == 200, response.text
    op_id = response.json()["name"].split(".", 1)[1]
    rows = await query(
        database_url,
        "SELECT sent_time, publish_attempts, last_error FROM platform.outbox WHERE operation_id = CAST(:id AS uuid)",
        id=op_id,
    )
    assert rows[0][0] is None
    assert rows[0][1] == 1
    assert rows[0][2]
