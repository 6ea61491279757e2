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
