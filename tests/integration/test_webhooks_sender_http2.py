"""The webhook sender against a real HTTPS receiver that speaks HTTP/2 (hypercorn, a test CA
from trustme): HTTP/2 is negotiated by ALPN, an endpoint's requests share one connection, the
per-endpoint cap still bounds requests in flight, and certificates are verified against the
host name while the connection goes to the checked address."""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib
from collections.abc import Iterator

import pytest

from app.adapters.webhooks_http import HttpxSender
from app.config.sections.webhooks import WebhooksSettings
from tests.support.tls_receiver import TlsReceiver

LOCAL = [ipaddress.ip_address("127.0.0.1")]


@pytest.fixture
def receiver(tmp_path: pathlib.Path) -> Iterator[TlsReceiver]:
    with TlsReceiver(tmp_path) as server:
        yield server


async def _send(sender: HttpxSender, url: str) -> tuple[int | None, str, str | None]:
    result = await sender.send(url, LOCAL, {"content-type": "application/json"}, b"{}")
    return result.status_code, result.body, result.error


async def test_https_endpoint_gets_http2_over_one_connection(receiver: TlsReceiver) -> None:
    sender = HttpxSender(WebhooksSettings(tls_ca_file=receiver.ca_file, http2=True))
    try:
        await _send(sender, receiver.url("/hook"))  # opens the connection
        results = await asyncio.gather(*(_send(sender, receiver.url("/hook")) for _ in range(20)))
    finally:
        await sender.aclose()
    assert {(status, error) for status, _, error in results} == {(200, None)}
    assert {body.split()[0] for _, body, _ in results} == {"2"}
    # Multiplexed: 21 requests, 20 of them concurrent, over one connection.
    assert len({r.client_port for r in receiver.received("/hook")}) == 1


async def test_http2_off_keeps_http11(receiver: TlsReceiver) -> None:
    # The control: the same receiver and client, HTTP/2 not offered.
    sender = HttpxSender(WebhooksSettings(tls_ca_file=receiver.ca_file, http2=False))
    try:
        results = await asyncio.gather(*(_send(sender, receiver.url("/hook")) for _ in range(5)))
    finally:
        await sender.aclose()
    assert {body.split()[0] for _, body, _ in results} == {"1.1"}


async def test_the_endpoint_cap_bounds_requests_in_flight_over_http2(
    receiver: TlsReceiver,
) -> None:
    # One HTTP/2 connection would carry all 12 at once; the cap of 3 must still hold.
    sender = HttpxSender(
        WebhooksSettings(tls_ca_file=receiver.ca_file, http2=True, max_connections_per_endpoint=3)
    )
    try:
        results = await asyncio.gather(*(_send(sender, receiver.url("/slow")) for _ in range(12)))
    finally:
        await sender.aclose()
    assert [status for status, _, _ in results] == [200] * 12
    assert {body.split()[0] for _, body, _ in results} == {"2"}
    assert receiver.peak == 3


async def test_a_certificate_from_an_untrusted_ca_is_refused(receiver: TlsReceiver) -> None:
    # Without tls_ca_file the test CA is unknown: the request must fail, not go through.
    sender = HttpxSender(WebhooksSettings())
    try:
        status, _, error = await _send(sender, receiver.url("/hook"))
    finally:
        await sender.aclose()
    assert status is None
    assert error is not None and "CERTIFICATE_VERIFY_FAILED" in error
    assert receiver.requests == []


async def test_by_default_a_receiver_ending_connections_fails_no_request(
    tmp_path: pathlib.Path,
) -> None:
    # The default (HTTP/1.1) against a receiver that ends each connection after 40 requests,
    # as nginx and hypercorn do after 1,000: connections end between requests, none fails.
    with TlsReceiver(tmp_path, max_requests=40) as receiver:
        sender = HttpxSender(WebhooksSettings(tls_ca_file=receiver.ca_file))
        try:
            results = await asyncio.gather(
                *(_send(sender, receiver.url("/hook")) for _ in range(400))
            )
        finally:
            await sender.aclose()
        assert [error for _, _, error in results if error] == []
        assert {body.split()[0] for _, body, _ in results} == {"1.1"}
        # The fault hit: the receiver ended connections (more ports than the 10 the cap opens).
        assert len({r.client_port for r in receiver.requests}) > 10


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_an_unreadable_ca_file_names_the_setting(
    tmp_path: pathlib.Path, content: bytes | None
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"CONVEYOR_WEBHOOKS__TLS_CA_FILE .*ca\.pem.* cannot be"):
        HttpxSender.tls_context(WebhooksSettings(tls_ca_file=str(path)))
