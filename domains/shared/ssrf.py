"""SSRF guard: outbound URLs (webhook endpoints, import sources) must not reach internal hosts.

A URL must be ``http``/``https`` with a host; every address the host resolves to must be
public. Loopback, private, link-local (which holds the cloud metadata address
``169.254.169.254``), multicast, reserved and unspecified ranges are refused unless an allowlist
entry (an address, a network such as ``127.0.0.0/8``, or a host name) covers them. Check at
create time *and* right before each request: DNS can change in between (rebinding).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable, Sequence

from domains.shared.errors import InvalidArgument

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = (
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
)


class UnsafeUrl(InvalidArgument):
    """The URL is not http(s) or reaches an address the guard refuses."""

    default_reason = "UNSAFE_URL"


@dataclasses.dataclass(frozen=True)
class UrlGuard:
    """Which outbound destinations are allowed.

    Attributes:
        allow_networks: Networks allowed even if internal (e.g. ``127.0.0.0/8`` in tests).
        allow_hosts: Host names allowed even if they resolve to internal addresses.
    """

    allow_networks: tuple[IpNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_allowlist(cls, entries: Iterable[str]) -> UrlGuard:
        """Builds a guard from settings entries (addresses, networks or host names).

        Args:
            entries: Allowlist entries.

        Returns:
            The guard.
        """
        networks: list[IpNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower())
        return cls(tuple(networks), frozenset(hosts))

    def parse(self, url: str) -> urllib.parse.SplitResult:
        """Checks the form of ``url`` (no DNS).

        Args:
            url: The URL.

        Returns:
            The parsed URL.

        Raises:
            UnsafeUrl: If it is not an http(s) URL with a host.
        """
        if len(url) > 2048:
            raise UnsafeUrl("the URL is longer than 2048 characters")
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
            raise UnsafeUrl("the URL must not contain spaces or control characters")
        try:
            parts = urllib.parse.urlsplit(url)
            hostname = parts.hostname
        except ValueError as exc:  # e.g. an unbalanced "[" in an IPv6 host
            raise UnsafeUrl(f"the URL is malformed ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise UnsafeUrl(
                f"the URL must start with http:// or https:// (got {parts.scheme or 'no'} scheme)"
            )
        if not hostname:
            raise UnsafeUrl("the URL has no host; give a full URL such as https://example.com/hook")
        if parts.username or parts.password:
            raise UnsafeUrl("the URL must not carry credentials (user:password@)")
        try:
            _ = parts.port
        except ValueError:
            raise UnsafeUrl("the URL's port is not a number from 1 to 65535") from None
        return parts

    def blocked_reason(self, address: IpAddress) -> str | None:
        """Returns why ``address`` is refused, or ``None`` if it may be reached.

        Args:
            address: A resolved address.

        Returns:
            A short reason, or ``None``.
        """
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in network for network in self.allow_networks):
            return None
        if address in _METADATA:
            return "a cloud metadata address"
        for check, reason in (
            (address.is_loopback, "a loopback address"),
            (address.is_link_local, "a link-local address"),
            (address.is_multicast, "a multicast address"),
            (address.is_unspecified, "an unspecified address"),
            (address.is_private, "a private address"),
            (address.is_reserved, "a reserved address"),
        ):
            if check:
                return reason
        return None

    def check_addresses(self, host: str, addresses: Sequence[IpAddress]) -> None:
        """Refuses ``host`` if any of its addresses is blocked.

        Args:
            host: The URL's host.
            addresses: What it resolved to.

        Raises:
            UnsafeUrl: If an address is blocked.
        """
        if host.lower() in self.allow_hosts:
            return
        if not addresses:
            raise UnsafeUrl(f"the host {host!r} does not resolve to any address")
        for address in addresses:
            reason = self.blocked_reason(address)
            if reason:
                raise UnsafeUrl(
                    f"the URL's host {host!r} resolves to {address}, {reason}; only public"
                    " addresses may be called (operators can allow it in settings)",
                    metadata={"host": host, "address": str(address)},
                )

    async def check(self, url: str) -> list[IpAddress]:
        """Checks ``url`` and everything its host resolves to now.

        Args:
            url: The URL.

        Returns:
            The resolved addresses.

        Raises:
            UnsafeUrl: If the URL or one of its addresses is refused, or the host is unknown.
        """
        parts = self.parse(url)
        host = str(parts.hostname)
        addresses = await resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        self.check_addresses(host, addresses)
        return addresses


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Resolves ``host`` to its addresses (an IP literal resolves to itself).

    Args:
        host: Host name or address.
        port: Port (for getaddrinfo).

    Returns:
        The addresses.

    Raises:
        UnsafeUrl: If the name does not resolve.
    """
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeUrl(f"the host {host!r} does not resolve ({exc.strerror or exc})") from None
    except ValueError as exc:  # UnicodeError: a label the IDNA codec refuses
        raise UnsafeUrl(f"the host {host[:100]!r} is not a valid host name ({exc})") from None
    addresses: list[IpAddress] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(raw)
        if address not in addresses:
            addresses.append(address)
    return addresses
