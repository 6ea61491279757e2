"""The webhooks HTTP API: endpoints CRUD, secrets, validation, SSRF refusals, events,
deliveries listing and filters. Endpoints here are disabled or unreachable on purpose: no
worker sends anything (delivery is tested in tests/integration/test_webhooks_delivery.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

PUBLIC = "https://93.184.216.34/hook"


async def _create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"url": PUBLIC, "event_types": ["orders.*"], "enabled": False, **fields}
    response = await client.post("/v1/endpoints", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/",
        "http://localhost/hook",
        "http://10.0.0.1/",
        "ftp://example.com/",
        "not a url",
    ],
)
async def test_unsafe_urls_are_refused_without_the_allowlist(client: httpx.AsyncClient, url: str):
    response = await client.post("/v1/endpoints", json={"url": url, "event_types": ["a.*"]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "UNSAFE_URL"
    if url.startswith("http://10."):
        # An internal address names the setting that would allow it.
        assert "CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST" in error["message"], error
        assert error["details"][0]["metadata"]["setting"] == "CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST"


async def test_endpoint_crud_and_secret_shown_only_on_create_and_rotate(
    client: httpx.AsyncClient,
):
    created = await _create(client, description="billing", rate_limit=5)
    assert created["secret"].startswith("whsec_")
    assert created["name"] == f"endpoints/{created['id']}"
    assert created["breaker"]["state"] == "CLOSED" and created["rate_limit"] == 5

    got = (await client.get(f"/v1/endpoints/{created['id']}")).json()
    assert "secret" not in got and got["description"] == "billing"
    listed = (await client.get("/v1/endpoints", params={"page_size": 1000})).json()
    assert created["id"] in {e["id"] for e in listed["endpoints"]}

    patched = await client.patch(
        f"/v1/endpoints/{created['id']}",
        json={"description": "new", "rate_limit": None, "event_types": ["imports.*"]},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["description"] == "new" and body["rate_limit"] is None
    assert body["event_types"] == ["imports.*"] and body["enabled"] is False

    rotated = (await client.post(f"/v1/endpoints/{created['id']}:rotateSecret")).json()
    assert rotated["secret"] != created["secret"] and rotated["previous_secret_expire_time"]

    assert (await client.delete(f"/v1/endpoints/{created['id']}")).json() == {}
    missing = await client.get(f"/v1/endpoints/{created['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["details"][0]["reason"] == "ENDPOINT_NOT_FOUND"


async def test_endpoint_list_pages(client: httpx.AsyncClient):
    ids = {(await _create(client))["id"] for _ in range(3)}
    seen: set[str] = set()
    token = ""
    for _ in range(100):
        params: dict[str, Any] = {"page_size": 2}
        if token:
            params["page_token"] = token
        page = (await client.get("/v1/endpoints", params=params)).json()
        assert len(page["endpoints"]) <= 2
        seen |= {e["id"] for e in page["endpoints"]}
        token = page["next_page_token"]
        if not token:
            break
    assert ids <= seen


@pytest.mark.parametrize(
    "body",
    [
        {"url": PUBLIC, "event_types": []},
        {"url": PUBLIC, "event_types": ["has space"]},
        {"url": PUBLIC, "event_types": ["a.*"], "rate_limit": 0},
        {"url": PUBLIC, "event_types": ["a.*"], "secret": "mine"},
        {"event_types": ["a.*"]},
        {"url": PUBLIC, "event_types": ["a.*"], "description": "x" * 1001},
    ],
)
async def test_bad_endpoint_bodies_are_400(client: httpx.AsyncClient, body: dict[str, Any]):
    response = await client.post("/v1/endpoints", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_malformed_ids_are_400_and_unknown_ids_404(client: httpx.AsyncClient):
    assert (await client.get("/v1/endpoints/nope")).status_code == 400
    assert (await client.post("/v1/deliveries/nope:retry")).status_code == 400
    unknown = "019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d"
    assert (await client.get(f"/v1/endpoints/{unknown}")).status_code == 404
    assert (await client.get(f"/v1/endpoints/{unknown}/deliveries")).status_code == 404
    assert (await client.post(f"/v1/deliveries/{unknown}:retry")).status_code == 404
    assert (await client.get(f"/v1/deliveries/{unknown}")).status_code == 404


async def test_events_make_paused_deliveries_for_a_disabled_endpoint(client: httpx.AsyncClient):
    endpoint = await _create(client, event_types=["shop-test.*"])
    response = await client.post(
        "/v1/events", json={"type": "shop-test.OrderPlaced", "data": {"order": 7}}
    )
    assert response.status_code == 200, response.text
    event = response.json()
    assert event["deliveries"] >= 1 and event["name"] == f"events/{event['id']}"

    base = f"/v1/endpoints/{endpoint['id']}/deliveries"
    [delivery] = (await client.get(base, params={"filter": 'state = "PAUSED"'})).json()[
        "deliveries"
    ]
    assert delivery["event_id"] == event["id"] and delivery["attempts"] == 0
    assert (await client.get(base, params={"filter": 'state = "DEAD"'})).json()["deliveries"] == []
    bad = await client.get(base, params={"filter": 'state = "LOST"'})
    assert (
        bad.status_code == 400 and bad.json()["error"]["details"][0]["reason"] == "INVALID_FILTER"
    )
    one = await client.get(f"{base}/{delivery['id']}")
    assert one.status_code == 200 and one.json()["id"] == delivery["id"]
    attempts = await client.get(f"{base}/{delivery['id']}/attempts")
    assert attempts.json() == {"attempts": []}
    retry = await client.post(f"/v1/deliveries/{delivery['id']}:retry")
    assert retry.status_code == 400
    assert retry.json()["error"]["details"][0]["reason"] == "DELIVERY_NOT_RETRYABLE"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "webhooks.DeliveryDead", "data": {}},
        {"type": "nodot", "data": {}},
        {"type": "a.b", "data": {"x": "y" * 300_000}},
        {"type": "a.b", "data": [], "extra": 1},
    ],
)
async def test_bad_events_are_400(client: httpx.AsyncClient, body: dict[str, Any]):
    response = await client.post("/v1/events", json=body)
    assert response.status_code == 400, response.text


async def test_replay_validates_since_and_returns_an_operation(client: httpx.AsyncClient):
    endpoint = await _create(client)
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    response = await client.post(f"/v1/endpoints/{endpoint['id']}:replay", json={"since": future})
    assert response.status_code == 400
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    body = {"since": since, "request_id": f"replay-{endpoint['id']}"}
    first = await client.post(f"/v1/endpoints/{endpoint['id']}:replay", json=body)
    assert first.status_code == 200, first.text
    op = first.json()
    assert op["metadata"]["type"] == "replay"
    assert op["metadata"]["target"] == f"endpoints/{endpoint['id']}"
    again = await client.post(f"/v1/endpoints/{endpoint['id']}:replay", json=body)
    assert again.json()["name"] == op["name"]  # AIP-155
