"""Expected errors are ordinary responses on a real uvicorn: a NUL byte (400) or a database
outage (503) answers without "Exception in ASGI application", keeps the keep-alive connection
(the next request on the same client succeeds on the same socket), is counted by /metrics under
its real status, and an outage is one WARNING line without a traceback. A genuine bug is still a
500, logged once."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY

from app.main import create_app
from tests.security.support import api
from tests.support.live_api import local_port, serve


def _count(route: str, method: str, code: str) -> float:
    labels = {"route": route, "method": method, "code": code}
    return REGISTRY.get_sample_value("conveyor_http_requests_total", labels) or 0.0


def _asgi_noise(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "Exception in ASGI application" in r.getMessage() or r.exc_info
    ]


async def test_nul_bytes_answer_400_and_keep_the_connection(api_app, auth_headers, caplog):
    caplog.set_level(logging.INFO)
    before = _count("/v1/pings", "POST", "400")
    async with serve(api_app, headers=auth_headers) as http:
        dataset = await http.post(
            "/v1/datasets",
            json={
                "display_name": "d",
                "fields": [{"name": "id", "type": "string", "required": True}],
                "key_field": "id",
            },
        )
        assert dataset.status_code == 200, dataset.text
        records = f"/v1/{dataset.json()['name']}/records"
        bad_requests = [
            http.build_request("POST", "/v1/pings", json={"message": "a\x00b"}),
            http.build_request("GET", "/v1/operations", params={"filter": 'metadata.type="a\x00"'}),
            http.build_request("GET", f"{records}/a%00b"),
            http.build_request(
                "POST",
                "/v1/schedules",
                json={"workflow": "platform.ping", "args": {"message": "\x00"}, "cron": "@daily"},
            ),
        ]
        port = local_port(dataset)
        for request in bad_requests:
            bad = await http.send(request)
            assert bad.status_code == 400, (request.url, bad.text)
            assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"
            good = await http.get("/healthz")
            assert good.status_code == 200
            assert local_port(bad) == local_port(good) == port, "the connection was dropped"
    assert _asgi_noise(caplog) == []
    assert _count("/v1/pings", "POST", "400") == before + 1


async def test_database_outage_is_a_503_logged_once_and_the_connection_survives(settings, caplog):
    dead = settings.model_copy(update={"database_url": "postgresql+asyncpg://u@127.0.0.1:1/x"})
    caplog.set_level(logging.INFO)
    before = _count("/v1/operations", "GET", "503")
    async with api(dead, auth_required=False) as (app, _):
        async with serve(app) as http:
            down = await http.get("/v1/operations")
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "1"
            info = down.json()["error"]["details"][0]
            assert info["reason"] == "DEPENDENCY_UNAVAILABLE"
            assert info["metadata"]["dependency"] == "database"
            good = await http.get("/healthz")
            assert good.status_code == 200 and local_port(down) == local_port(good)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in warnings] == ["WARNING"], [r.getMessage() for r in warnings]
    assert warnings[0].exc_info is None
    assert warnings[0].getMessage().startswith("database unavailable"), warnings[0].getMessage()
    assert _asgi_noise(caplog) == []
    assert _count("/v1/operations", "GET", "503") == before + 1


async def test_an_outage_during_authentication_is_a_503_too(settings, caplog):
    dead = settings.model_copy(update={"database_url": "postgresql+asyncpg://u@127.0.0.1:1/x"})
    async with serve(
        create_app(dead), headers={"authorization": "Bearer cvk_" + "0" * 12 + "_" + "a" * 43}
    ) as http:
        down = await http.get("/v1/operations")
        assert down.status_code == 503, down.text
        assert (await http.get("/healthz")).status_code == 200
    assert _asgi_noise(caplog) == []


async def test_a_genuine_bug_is_a_500_logged_once(api_app, auth_headers, caplog):
    async def boom() -> None:
        raise RuntimeError("secret internals")

    api_app.add_api_route("/v1/boom", boom)
    caplog.set_level(logging.INFO)
    async with serve(api_app, headers=auth_headers) as http:
        response = await http.get("/v1/boom", headers={"x-request-id": "req-bug"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "req-bug"
        assert "secret" not in response.text
        assert (await http.get("/healthz")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, [r.getMessage() for r in errors]
    assert "req-bug" in errors[0].getMessage()
    assert _count("/v1/boom", "GET", "500") >= 1


async def test_a_client_that_disconnects_mid_body_is_not_logged_as_a_bug(caplog):
    import asyncio

    from api.errors import ErrorMiddleware

    async def reads_the_body(scope, receive, send) -> None:
        from starlette.requests import Request

        await Request(scope, receive).body()

    messages = iter([{"type": "http.request", "body": b"x", "more_body": True}])

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    sent: list[dict] = []

    async def send(message) -> None:
        sent.append(message)

    caplog.set_level(logging.INFO)
    scope = {"type": "http", "method": "POST", "path": "/v1/pings", "headers": []}
    await asyncio.wait_for(ErrorMiddleware(reads_the_body)(scope, receive, send), 5)
    assert sent == []  # nothing to answer
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
