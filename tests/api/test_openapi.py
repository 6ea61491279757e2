"""The HTTP API reference: every route documented with summary, description, examples and the
AIP-193 error codes it can return (and never FastAPI's 422, which this API does not use)."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import load_settings
from app.main import create_app


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    settings = load_settings(
        database_url="postgresql://docs@localhost/docs", broker_url="redis://localhost:1/0"
    )
    return create_app(settings).openapi()


def _operations(spec: dict[str, Any]):
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            yield path, method, op


def _has_example(spec: dict[str, Any], content: dict[str, Any]) -> bool:
    media = content.get("application/json", {})
    if "example" in media or "examples" in media:
        return True
    schema = media.get("schema", {})
    refs = [schema.get("$ref", "")] + [s.get("$ref", "") for s in schema.get("anyOf", [])]
    for ref in filter(None, refs):
        target = spec["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
        if "example" in target or "examples" in target:
            return True
    return False


def test_every_route_has_summary_and_description(spec):
    for path, method, op in _operations(spec):
        assert op.get("summary"), f"{method} {path} has no summary"
        assert op.get("description"), f"{method} {path} has no description"


def test_every_route_has_a_success_example(spec):
    for path, method, op in _operations(spec):
        ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert ok, f"{method} {path} documents no success response"
        assert any(_has_example(spec, r.get("content", {})) for r in ok.values()), (
            f"{method} {path}: no example"
        )


def test_every_request_body_has_an_example(spec):
    for path, method, op in _operations(spec):
        if "requestBody" in op:
            assert _has_example(spec, op["requestBody"]["content"]), (
                f"{method} {path}: body has no example"
            )


def test_v1_routes_list_their_aip193_error_codes(spec):
    for path, method, op in _operations(spec):
        if not path.startswith("/v1/"):
            continue
        for code in ("400", "404", "500", "503"):
            response = op["responses"].get(code)
            assert response, f"{method} {path} does not list {code}"
            assert response["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorResponse"
            )
            assert _has_example(spec, response["content"])


def test_no_route_documents_fastapi_422(spec):
    for path, method, op in _operations(spec):
        assert "422" not in op["responses"], (
            f"{method} {path} documents 422 but errors are AIP-193 400s"
        )
    assert "HTTPValidationError" not in spec["components"]["schemas"]
