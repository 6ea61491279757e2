"""Limits: per-key token bucket in Redis (429 + Retry-After), body caps per route (413), page
size clamp, long-poll cap, filter and token caps, uvicorn's slow-client settings."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import redis

from api import pagination
from api.limits import BodyLimitMiddleware, TokenBucketLimiter, flat_routes
from app.adapters.http_protocol import CappedHttpToolsProtocol
from app.main import rate_limit_redis, uvicorn_options
from app.runtime.embedded import find_free_port
from tests.security.support import api, bearer, new_key
from tests.support.procs import API_LISTENING


async def test_rate_limit_is_a_token_bucket_per_key_in_redis(settings, broker_url):
    first = await new_key(settings)
    second = await new_key(settings)
    async with api(settings, rate_limit_per_second=1.0, rate_limit_burst=3) as (_, http):
        codes = [
            (await http.get("/v1/operations", headers=bearer(first))).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        limited = await http.get("/v1/operations", headers=bearer(first))
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        error = limited.json()["error"]
        assert error["status"] == "RESOURCE_EXHAUSTED"
        assert error["details"][0]["reason"] == "RATE_LIMITED"
        # Another key has its own bucket.
        assert (await http.get("/v1/operations", headers=bearer(second))).status_code == 200
        # The bucket refills at the configured rate.
        await asyncio.sleep(1.1)
        assert (await http.get("/v1/operations", headers=bearer(first))).status_code == 200
    # The bucket lives in Redis, so every API process shares it.
    prefix = first.split("_")[1]
    assert redis.Redis.from_url(broker_url).exists(f"conveyor:rl:{prefix}")


async def test_buckets_are_shared_between_api_processes(settings):
    key = await new_key(settings)
    prefix = key.split("_")[1]
    url = rate_limit_redis(settings)
    one, two = TokenBucketLimiter(0.001, 4, url), TokenBucketLimiter(0.001, 4, url)
    try:
        waits = [await (one if i % 2 else two)(prefix) for i in range(6)]
    finally:
        await one.close()
        await two.close()
    assert waits[:4] == [0.0] * 4
    assert all(w > 0 for w in waits[4:])


async def test_limiter_without_redis_keeps_buckets_in_process_and_fails_open_when_redis_is_down():
    local = TokenBucketLimiter(1.0, 2, None)
    assert [await local("k") > 0 for _ in range(3)] == [False, False, True]
    down = TokenBucketLimiter(1.0, 1, "redis://127.0.0.1:1/0")
    assert [await down("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    await down.close()


async def test_oversized_bodies_are_413_declared_or_streamed(settings, api_key):
    async with api(settings, max_body_bytes=2048) as (_, http):
        big = b'{"message": "' + b"x" * 4000 + b'"}'
        response = await http.post(
            "/v1/pings",
            content=big,
            headers={**bearer(api_key), "content-type": "application/json"},
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"]["details"][0]["reason"] == "REQUEST_TOO_LARGE"

        async def chunks():
            for _ in range(8):
                yield b" " * 1024

        streamed = await http.post(
            "/v1/pings",
            content=chunks(),
            headers={**bearer(api_key), "content-type": "application/json"},
        )
        assert streamed.status_code == 413, streamed.text
        assert streamed.json()["error"]["code"] == 413
        small = await http.post("/v1/pings", json={"message": "fits"}, headers=bearer(api_key))
        assert small.status_code == 200, small.text


async def test_page_size_is_clamped_and_other_inputs_are_capped(client):
    assert pagination.clamp_page_size(10**12) == pagination.MAX_PAGE_SIZE
    response = await client.get("/v1/operations", params={"page_size": 10**12})
    assert response.status_code == 200, response.text
    assert len(response.json()["operations"]) <= pagination.MAX_PAGE_SIZE

    too_long = await client.get("/v1/operations", params={"filter": "done = true " * 300})
    assert too_long.status_code == 400 and "too long" in too_long.text
    token = await client.get("/v1/operations", params={"page_token": "a" * 5000})
    assert token.status_code == 400

    name = f"platform.{uuid.uuid4()}"
    wait = await client.post(f"/v1/operations/{name}:wait", json={"timeout": 61})
    assert wait.status_code == 400 and "timeout" in wait.json()["error"]["message"]
    long_duration = await client.post(
        f"/v1/operations/{name}:wait", json={"timeout": "1" * 100 + "s"}
    )
    assert long_duration.status_code == 400
    long_name = await client.get(f"/v1/operations/platform.{'x' * 500}")
    assert long_name.status_code == 400


def test_uvicorn_is_started_with_slow_client_limits(settings):
    options = uvicorn_options(settings)
    assert options["timeout_keep_alive"] == 5
    assert options["limit_concurrency"] == 1000
    assert options["h11_max_incomplete_event_size"] == 16 * 1024
    assert options["server_header"] is False
    # The fast parser, with the header buffer cap h11 has (tested on a live process below).
    assert options["http"] is CappedHttpToolsProtocol
    h11 = settings.model_copy(
        update={"security": settings.security.model_copy(update={"uvicorn_http": "h11"})}
    )
    assert uvicorn_options(h11)["http"] == "h11"
    import inspect

    import uvicorn

    accepted = inspect.signature(uvicorn.run).parameters
    assert set(options) <= set(accepted), set(options) - set(accepted)


async def test_upload_routes_get_the_upload_cap_and_json_routes_the_body_cap(settings, api_key):
    async with api(settings, max_body_bytes=2048, max_upload_bytes=1024 * 1024) as (app, http):
        routes = {r.path for r in flat_routes(app.routes)}
        upload = "/v1/datasets/{dataset_id}/imports"
        assert upload in routes, "the upload route is missing"
        body = b"id\n" + b"x\n" * 2000
        headers = {**bearer(api_key), "content-type": "text/csv"}
        response = await http.post(
            f"/v1/datasets/{uuid.uuid4()}/imports", content=body, headers=headers
        )
        assert response.status_code != 413, response.text  # past the JSON cap, under the upload cap
        json_route = await http.post(
            "/v1/pings", content=body, headers={**headers, "content-type": "application/json"}
        )
        assert json_route.status_code == 413
    middleware = BodyLimitMiddleware(
        None, routes=lambda: app.routes, max_body_bytes=1, max_upload_bytes=2
    )
    scope = {"type": "http", "method": "POST", "path": "/v1/datasets/d/imports"}
    assert middleware.limit_for(scope) == 2
    assert middleware.limit_for({**scope, "path": "/v1/pings"}) == 1


def test_conveyor_api_refuses_endless_headers_and_hides_its_server_name(spawn):
    port = find_free_port()
    api_proc = spawn("api", "--port", str(port), name="api-limits")
    api_proc.wait_for_log(API_LISTENING, timeout=30)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Headers that never end: buffered up to the cap, then refused (not held in memory).
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20000)
        answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The same, trickled in small writes (each under the cap): refused once the sum is over.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = b""
        for _ in range(100):
            try:
                sock.sendall(b"a" * 500)
            except OSError:  # closed by the server: the answer is waiting
                break
            time.sleep(0.01)
            sock.setblocking(False)
            try:
                answer = sock.recv(1000)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
        if not answer:
            answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Controls: a large head under the cap is served, and so is a body past the head cap
        # sent in the same write as the head.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
        answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # (A connection of its own: the answer above may still be arriving in pieces.)
        body = b'{"message": "' + b"b" * 30000 + b'"}'
        sock.sendall(
            b"POST /v1/pings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = sock.recv(1000)
    # Past the head cap, the body reached the app: its answer (no key: 401), not the parser's.
    assert answer.startswith(b"HTTP/1.1 401"), answer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"uvicorn" not in answer.lower()
