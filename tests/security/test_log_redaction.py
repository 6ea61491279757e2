"""Credentials never reach a log line: an API key sent as ``?api_key=`` in the access log of a
real uvicorn, bearer tokens, URL passwords and keys in any logger's message or traceback, in
both the JSON and the text format."""

from __future__ import annotations

import io
import logging

import pytest

from monitoring import logging as conveyor_logging
from tests.support.live_api import serve

SECRET = "S3cretValue_abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture(params=["json", "text"])
def captured(request):
    handler = conveyor_logging.make_handler(request.param)
    stream = io.StringIO()
    handler.setStream(stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_api_key_in_a_query_string_is_not_in_the_access_log(api_app, api_key, captured):
    leaked_key = f"cvk_0123456789ab_{SECRET}"
    async with serve(api_app) as http:
        response = await http.get(
            "/v1/operations",
            params={"api_key": leaked_key, "access_token": SECRET, "page_size": "2"},
            headers={"authorization": f"Bearer {api_key}"},
        )
        assert response.status_code == 200
    output = captured.getvalue()
    access = [line for line in output.splitlines() if "/v1/operations" in line]
    assert access, output  # the access line is there ...
    assert SECRET not in output and api_key.split("_", 2)[2] not in output  # ... without secrets
    assert "api_key=***" in access[0] and "page_size=2" in access[0]


def test_every_logger_line_is_redacted_tracebacks_included(captured):
    log = logging.getLogger("conveyor.anything")
    log.warning("connecting to postgresql://app:%s@db:5432/x", SECRET)
    log.info("header was Authorization: Bearer %s", SECRET)
    log.info("key %s presented", f"cvk_0123456789ab_{SECRET}")
    try:
        raise RuntimeError(f"failed https://hooks.example/x?token={SECRET}")
    except RuntimeError:
        log.exception("delivery failed")
    output = captured.getvalue()
    assert SECRET not in output, output
    assert "postgresql://app:***@db" in output and "cvk_0123456789ab_***" in output
    assert "RuntimeError" in output  # the traceback itself is kept
