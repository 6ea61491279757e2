"""/metrics on the API: requests by route template, method and code; latency histograms."""

from __future__ import annotations

import uuid

from tests.monitoring.scrape import samples, value

TEMPLATE = "/v1/operations/{operation_id}"


async def test_request_is_counted_under_its_route_template_not_its_raw_path(client):
    before = await client.get("/metrics")
    labels = {"route": TEMPLATE, "method": "GET", "code": "404"}
    count_before = value(before.text, "conveyor_http_requests_total", **labels) or 0
    hist_before = (
        value(
            before.text,
            "conveyor_http_request_duration_seconds_count",
            route=TEMPLATE,
            method="GET",
        )
        or 0
    )
    raw_id = f"platform.{uuid.uuid4()}"

    response = await client.get(f"/v1/operations/{raw_id}")
    assert response.status_code == 404

    after = await client.get("/metrics")
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    assert value(after.text, "conveyor_http_requests_total", **labels) == count_before + 1
    assert (
        value(
            after.text, "conveyor_http_request_duration_seconds_count", route=TEMPLATE, method="GET"
        )
        == hist_before + 1
    )
    assert raw_id not in after.text, "a raw path leaked into a label"


async def test_unknown_paths_share_one_unmatched_label(client):
    before = await client.get("/metrics")
    labels = {"route": "unmatched", "method": "GET", "code": "404"}
    start = value(before.text, "conveyor_http_requests_total", **labels) or 0
    for i in range(3):
        assert (await client.get(f"/no/such/path/{uuid.uuid4()}/{i}")).status_code == 404
    after = (await client.get("/metrics")).text
    assert value(after, "conveyor_http_requests_total", **labels) == start + 3
    routes = {s["route"] for s, _ in samples(after, "conveyor_http_requests_total")}
    assert not any(r.startswith("/no/") for r in routes)


async def test_wrong_method_and_post_routes_are_labelled_by_template(client):
    before = (await client.get("/metrics")).text
    put = {"route": "/v1/pings", "method": "PUT", "code": "405"}
    put_start = value(before, "conveyor_http_requests_total", **put) or 0
    assert (await client.put("/v1/pings")).status_code == 405
    op_id = f"platform.{uuid.uuid4()}"
    assert (await client.post(f"/v1/operations/{op_id}:cancel")).status_code == 404
    after = (await client.get("/metrics")).text
    assert value(after, "conveyor_http_requests_total", **put) == put_start + 1
    cancel = {"route": "/v1/operations/{operation_id}:cancel", "method": "POST", "code": "404"}
    assert (value(after, "conveyor_http_requests_total", **cancel) or 0) >= 1


async def test_metrics_route_is_not_in_the_openapi_document(client):
    spec = (await client.get("/openapi.json")).json()
    assert "/metrics" not in spec["paths"]
