"""Values PostgreSQL cannot store (NUL characters) are the client's to fix: 400, never 500.
Found by the schemathesis stage (a request_id with %00)."""

from __future__ import annotations


async def test_request_id_with_a_nul_is_invalid_argument(client):
    response = await client.post("/v1/pings", params={"request_id": "a\x00b"}, json={})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["reason"] == "INVALID_REQUEST_ID"


async def test_any_text_with_a_nul_is_invalid_argument_not_a_server_error(client):
    response = await client.post(
        "/v1/datasets",
        json={
            "display_name": "orders\x00",
            "fields": [{"name": "id", "type": "string", "required": True}],
            "key_field": "id",
        },
    )
    assert response.status_code == 400, response.text
    body = response.json()["error"]
    assert body["status"] == "INVALID_ARGUMENT"
    assert "NUL" in body["message"]
