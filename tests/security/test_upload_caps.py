"""One upload cap per route, the smaller of CONVEYOR_SECURITY__MAX_UPLOAD_BYTES and
CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES: lowering either takes effect, a declared Content-Length over
it answers 413 before the body is sent, the OpenAPI document states it, and a gzip file stops
decompressing at it (no 1 GiB on disk from a small upload)."""

from __future__ import annotations

import asyncio
import gzip
import os

import pytest

from app.config import Settings
from app.container import Container
from app.db import EngineRegistry
from app.main import create_app
from domains.imports import parsing
from tests.security.support import bearer
from tests.support.live_api import serve

KIB = 1024
CAP = 64 * KIB


def capped(settings: Settings, *, security_cap: int, imports_cap: int) -> Settings:
    return settings.model_copy(
        update={
            "security": settings.security.model_copy(update={"max_upload_bytes": security_cap}),
            "imports": settings.imports.model_copy(update={"max_upload_bytes": imports_cap}),
        }
    )


async def _raw_exchange(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 5)  # no body was sent
    finally:
        writer.close()


@pytest.mark.parametrize(("security_cap", "imports_cap"), [(CAP, 1024**3), (1024**3, CAP)])
async def test_the_smaller_upload_setting_wins_and_a_declared_length_is_refused_at_once(
    settings, api_key, security_cap, imports_cap
):
    small = capped(settings, security_cap=security_cap, imports_cap=imports_cap)
    assert small.upload_limit_bytes() == CAP
    app = create_app(small)
    try:
        async with serve(app, headers=bearer(api_key)) as http:
            dataset = await http.post(
                "/v1/datasets",
                json={
                    "display_name": "d",
                    "fields": [{"name": "id", "type": "string", "required": True}],
                    "key_field": "id",
                },
            )
            path = f"/v1/{dataset.json()['name']}/imports"
            body = b"id\n" + b"x\n" * (40 * KIB)  # 80 KiB: over the smaller cap only
            too_big = await http.post(path, content=body, headers={"content-type": "text/csv"})
            assert too_big.status_code == 413, too_big.text
            assert str(CAP) in too_big.json()["error"]["message"]
            fits = await http.post(path, content=b"id\na\n", headers={"content-type": "text/csv"})
            assert fits.status_code == 200, fits.text

            port = http.base_url.port
            head = (
                f"POST {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {api_key}\r\n"
                f"content-type: text/csv\r\ncontent-length: {10 * 1024 * 1024}\r\n\r\n"
            ).encode()
            answer = await _raw_exchange(port, head)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

            spec = (await http.get("/openapi.json")).json()
            upload = spec["paths"]["/v1/datasets/{dataset_id}/imports"]["post"]["responses"]
            assert f"{CAP} bytes" in upload["413"]["description"]
            assert "smaller of" in upload["413"]["description"]
            json_route = spec["paths"]["/v1/pings"]["post"]["responses"]["413"]
            assert f"{small.security.max_body_bytes} bytes" in json_route["description"]
    finally:
        await app.state.container.registry.dispose()


async def test_gzip_decompression_stops_at_the_upload_cap(settings, tmp_path):
    small = capped(settings, security_cap=CAP, imports_cap=1024**3)
    registry = EngineRegistry(small)
    try:
        service = Container(small, registry).imports
        assert service.policy.max_file_bytes == CAP and service.store.max_bytes == CAP
    finally:
        await registry.dispose()
    bomb = tmp_path / "bomb.csv.gz"
    plain = b"id\n" + b"0" * (4 * 1024 * 1024)  # 4 MiB of text, a few KiB compressed
    bomb.write_bytes(gzip.compress(plain))
    assert bomb.stat().st_size < CAP
    with pytest.raises(parsing.ImportFileError, match="decompresses to more than"):
        parsing.prepare_plain(str(bomb), max_bytes=service.policy.max_file_bytes)
    assert sorted(os.listdir(tmp_path)) == ["bomb.csv.gz"]  # nothing left behind
