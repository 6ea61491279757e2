"""The SSRF guard: http(s) only, and no internal destination unless allowlisted."""

from __future__ import annotations

import ipaddress

import pytest

from domains.shared.ssrf import UnsafeUrl, UrlGuard

GUARD = UrlGuard.from_allowlist([])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://10.0.0.5/",
        "http://172.16.3.4/",
        "http://192.168.1.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[fe80::1]/",
        "http://localhost/",
    ],
)
async def test_internal_destinations_are_refused(url: str):
    for _ in range(2):  # the second check meets the per-URL caches: still refused
        with pytest.raises(UnsafeUrl) as info:
            await GUARD.check(url)
        assert info.value.code == "INVALID_ARGUMENT" and info.value.reason == "UNSAFE_URL"
        assert "address" in info.value.metadata


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http:///nohost",
        "http://user:pw@example.com/",
        "http://example.com:99999/",
        "http://" + "a" * 2100 + ".com/",
    ],
)
async def test_malformed_or_non_http_urls_are_refused(url: str):
    for _ in range(2):  # a refusal is not cached as a parse
        with pytest.raises(UnsafeUrl):
            await GUARD.check(url)


async def test_public_address_literal_is_allowed():
    assert await GUARD.check("https://93.184.216.34/hook") == [
        ipaddress.ip_address("93.184.216.34")
    ]


async def test_allowlist_admits_networks_and_hosts_but_not_the_rest():
    guard = UrlGuard.from_allowlist(["127.0.0.1", "10.1.0.0/16", "internal.test", " "])
    assert await guard.check("http://127.0.0.1:9000/x")
    assert await guard.check("http://10.1.2.3/x")
    guard.check_addresses("internal.test", [ipaddress.ip_address("10.9.9.9")])
    with pytest.raises(UnsafeUrl):
        await guard.check("http://127.0.0.2/x")
    with pytest.raises(UnsafeUrl):
        await guard.check("http://169.254.169.254/")


def test_a_name_resolving_to_one_internal_address_among_public_ones_is_refused():
    addresses = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(UnsafeUrl):
        GUARD.check_addresses("rebind.example", addresses)
    with pytest.raises(UnsafeUrl):
        GUARD.check_addresses("empty.example", [])


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/",
        "http://exa mple.com/",
        "http://example.com/\x00",
        "http://" + "a" * 70 + ".example.com/",
        "http://.../",
    ],
)
async def test_garbage_urls_are_refused_not_crashing(url: str):
    with pytest.raises(UnsafeUrl):
        await GUARD.check(url)


# Every form of issue #17 point 2 plus the ones refused before: the guard decides by "globally
# routable unicast", unwrapping IPv4 carried in IPv6 (mapped, compatible, 6to4, NAT64, Teredo).
ADDRESS_TABLE = [
    # (address, allowed, words the reason must contain)
    ("100.64.0.1", False, "carrier-grade NAT"),
    ("100.127.255.254", False, "carrier-grade NAT"),
    ("fec0::1", False, "site-local"),
    ("2002:7f00:1::", False, "loopback address (127.0.0.1) wrapped in a 6to4"),
    ("2002:a9fe:a9fe::", False, "metadata address wrapped in a 6to4"),
    ("2002:a00:1::", False, "private address (10.0.0.1) wrapped in a 6to4"),
    ("64:ff9b::7f00:1", False, "wrapped in a NAT64"),
    ("64:ff9b::a9fe:a9fe", False, "metadata address wrapped in a NAT64"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False, "Teredo"),  # client 127.0.0.1
    ("::ffff:127.0.0.1", False, "loopback"),
    ("::ffff:169.254.169.254", False, "metadata"),
    ("::7f00:1", False, "wrapped in an IPv4-compatible"),
    ("127.0.0.1", False, "loopback"),
    ("10.0.0.5", False, "private"),
    ("172.16.3.4", False, "private"),
    ("192.168.1.1", False, "private"),
    ("169.254.169.254", False, "metadata"),
    ("169.254.1.1", False, "link-local"),
    ("100.100.100.200", False, "metadata"),
    ("0.0.0.0", False, "unspecified"),
    ("224.0.0.1", False, "multicast"),
    ("198.18.0.1", False, "private"),
    ("240.0.0.1", False, ""),
    ("255.255.255.255", False, ""),
    ("192.0.0.8", False, "IETF protocol"),
    ("192.0.2.1", False, ""),
    ("::", False, "unspecified"),
    ("::1", False, "loopback"),
    ("fe80::1", False, "link-local"),
    ("fd00:ec2::254", False, "metadata"),
    ("fc00::1", False, "private"),
    ("ff0e::1", False, "multicast"),
    ("2001:db8::1", False, "documentation"),
    ("100::1", False, "discard-only"),
    ("93.184.216.34", True, ""),
    ("8.8.8.8", True, ""),
    ("2606:4700:4700::1111", True, ""),
    ("2002:808:808::", True, ""),  # 6to4 of a public address
    ("64:ff9b::808:808", True, ""),  # NAT64 of a public address
    ("::ffff:8.8.8.8", True, ""),
]


@pytest.mark.parametrize(("address", "allowed", "reason"), ADDRESS_TABLE)
def test_only_globally_routable_unicast_addresses_pass(address: str, allowed: bool, reason: str):
    found = GUARD.blocked_reason(ipaddress.ip_address(address))
    if allowed:
        assert found is None, found
    else:
        assert found is not None and reason in found, found


@pytest.mark.parametrize("address", [a for a, allowed, _ in ADDRESS_TABLE if not allowed])
async def test_webhook_and_source_urls_share_the_guard(address: str):
    from app.adapters.imports_fetcher import source_guard

    host = f"[{address}]" if ":" in address else address
    for guard in (GUARD, source_guard([], allow_private=False)):
        with pytest.raises(UnsafeUrl):
            await guard.check(f"http://{host}/hook")


async def test_source_fetch_connects_to_the_address_the_guard_checked(monkeypatch):
    """DNS rebinding: the fetcher connects to the checked address, never to a second answer.
    ``rebind.test`` resolves (for the guard) to 127.0.0.1 only; a second lookup by httpx would
    fail, so the fetch succeeds only if the connection is pinned."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from app.adapters.imports_fetcher import HttpSourceFetcher
    from domains.shared import ssrf
    from tests.support.live_api import serve

    seen: list[str] = []

    async def source(request: Request) -> PlainTextResponse:
        seen.append(request.headers["host"])
        return PlainTextResponse("id\n1\n")

    async def fake_resolve(host: str, port: int) -> list[ssrf.IpAddress]:
        assert host == "rebind.test"
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(ssrf, "resolve", fake_resolve)

    class Sink:
        data = b""

        def write(self, block: bytes) -> None:
            self.data += block

    app = Starlette(routes=[Route("/orders.csv", source)])
    async with serve(app) as http:
        port = http.base_url.port
        fetcher = HttpSourceFetcher(UrlGuard.from_allowlist(["127.0.0.1"]), timeout=5)
        sink = Sink()
        await fetcher.fetch(f"http://rebind.test:{port}/orders.csv", sink)  # type: ignore[arg-type]
    assert sink.data == b"id\n1\n"
    assert seen == [f"rebind.test:{port}"]
