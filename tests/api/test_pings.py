"""API level: pings through the real API, database, broker and an in-process worker."""

from __future__ import annotations

import uuid

import pytest

from tests.support.ops import wait_done


async def test_ping_runs_through_worker_and_shows_done(client, celery_worker):
    response = await client.post("/v1/pings", json={"message": "hello"})
    assert response.status_code == 200, response.text
    op = response.json()
    assert op["name"].startswith("operations/platform.")
    assert op["metadata"]["state"] == "PENDING"
    assert response.headers["x-request-id"]

    done = await wait_done(client, op["name"])
    assert done["metadata"]["state"] == "SUCCEEDED"
    assert done["response"]["reply"] == "pong: hello"

    ping_id = op["metadata"]["target"].removeprefix("pings/")
    ping = (await client.get(f"/v1/pings/{ping_id}")).json()
    assert ping["done"] is True
    assert ping["state"] == "SUCCEEDED"
    assert ping["reply"] == "pong: hello"


async def test_ping_progress_is_reported(client, celery_worker):
    op = (
        await client.post("/v1/pings", json={"message": "p", "sleep_seconds": 0.6, "steps": 3})
    ).json()
    done = await wait_done(client, op["name"])
    assert done["metadata"]["progress"]["done"] == 3
    assert done["metadata"]["progress"]["total"] == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sleep_seconds": -1}, "sleep_seconds"),
        ({"steps": 0}, "steps"),
        ({"message": 5}, "message"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_create_ping_rejects_bad_input_with_aip193_error(client, body, field):
    response = await client.post("/v1/pings", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert field in error["message"]
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"


async def test_create_ping_rejects_malformed_json(client):
    response = await client.post(
        "/v1/pings", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_get_unknown_ping_is_not_found(client):
    response = await client.get(f"/v1/pings/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


async def test_get_ping_with_bad_id_is_invalid_argument(client):
    response = await client.get("/v1/pings/not-a-uuid")
    assert response.status_code == 400
    assert "not a valid UUID" in response.json()["error"]["message"]


async def test_request_id_header_is_echoed(client):
    response = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"


async def test_malformed_json_names_the_body_and_where_it_breaks(client):
    response = await client.post(
        "/v1/pings",
        content=b'{\n  "message": "hi",\n  "steps": 4,,\n}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith("body: request body is not valid JSON"), error
    assert "line 3, column 14" in error["message"], error
    bad_request = [d for d in error["details"] if "field_violations" in d]
    violation = bad_request[0]["field_violations"][0]
    assert violation["field"] == "body", violation  # not the character offset


async def test_a_json_body_sent_without_its_content_type_gets_a_hint(client):
    # What `curl -d '{...}'` sends when -H 'content-type: application/json' is forgotten.
    response = await client.post(
        "/v1/pings",
        content=b'{"message": "hi"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "Content-Type: application/json" in message, message
    assert "application/x-www-form-urlencoded" in message, message
