"""SSRF guard: outbound URLs (webhook endpoints, import sources) must not reach internal hosts.

A URL must be ``http``/``https`` with a host; every address the host resolves to must be a
*globally routable unicast* address (:func:`routable`): the guard allows what is known to be
public rather than refusing a list of known-bad ranges, so a range nobody thought of (CGNAT
``100.64.0.0/10``, deprecated site-local ``fec0::/10``...) is refused by default. An IPv6 address
that carries an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``,
6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``, Teredo ``2001::/32``) is judged by the IPv4 address
it reaches, so ``2002:7f00:1::`` (127.0.0.1) or ``2002:a9fe:a9fe::`` (the metadata address) do
not slip through. An allowlist entry (an address, a network such as ``127.0.0.0/8``, or a host
name) admits an internal destination on purpose. Check at create time *and* right before each
request: DNS can change in between (rebinding).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
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


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_JUDGED_BY_INNER = frozenset({"an IPv4-compatible address", "a NAT64 address", "a 6to4 address"})

# Special-purpose ranges (IANA registries) that are not globally reachable but which
# ``ipaddress.is_global`` of some Python versions still calls global.
_NOT_GLOBAL: tuple[tuple[IpNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("192.0.0.0/24", "an IETF protocol address"),
        ("fec0::/10", "a site-local address"),
        ("100::/64", "a discard-only address"),
        ("64:ff9b:1::/48", "a local NAT64 address"),
        ("2001::/23", "an IETF protocol address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("5f00::/16", "a segment-routing address"),
    )
)
_GLOBAL_EXCEPTIONS = (ipaddress.ip_network("192.0.0.9/32"), ipaddress.ip_network("192.0.0.10/32"))


def embedded_ipv4(address: IpAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """Returns the IPv4 address an IPv6 address carries, with the name of the form.

    Args:
        address: Any address.

    Returns:
        ``(form, ipv4)`` for IPv4-mapped, IPv4-compatible, 6to4, NAT64 (well-known prefix) and
        Teredo (the client address) forms, else ``None``.
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped address", address.ipv4_mapped
    if address.sixtofour is not None:
        return "a 6to4 address", address.sixtofour
    if address.teredo is not None:
        return "a Teredo address", address.teredo[1]
    if address in _NAT64:
        return "a NAT64 address", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return "an IPv4-compatible address", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _not_routable(address: IpAddress) -> str | None:
    # Ordered from the most telling name to the generic one.
    for check, reason in (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
    ):
        if check:
            return reason
    if any(address in network for network in _GLOBAL_EXCEPTIONS):
        return None
    for network, reason in _NOT_GLOBAL:
        if address in network:
            return reason
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a globally routable address"
    return None


class UnsafeUrl(InvalidArgument):
    """The URL is not http(s) or reaches an address the guard refuses."""

    default_reason = "UNSAFE_URL"


@dataclasses.dataclass(frozen=True)
class UrlGuard:
    """Which outbound destinations are allowed.

    Attributes:
        allow_networks: Networks allowed even if internal (e.g. ``127.0.0.0/8`` in tests).
        allow_hosts: Host names allowed even if they resolve to internal addresses.
        setting: The environment variable holding the allowlist, named in refusals so an
            operator knows what to change.
    """

    allow_networks: tuple[IpNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    setting: str = ""

    @classmethod
    def from_allowlist(cls, entries: Iterable[str], setting: str = "") -> UrlGuard:
        """Builds a guard from settings entries (addresses, networks or host names).

        Args:
            entries: Allowlist entries.
            setting: The variable they come from (e.g. ``CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST``).

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
        return cls(tuple(networks), frozenset(hosts), setting)

    def parse(self, url: str) -> urllib.parse.SplitResult:
        """Checks the form of ``url`` (no DNS).

        Args:
            url: The URL.

        Returns:
            The parsed URL.

        Raises:
            UnsafeUrl: If it is not an http(s) URL with a host.
        """
        return _split(url)

    def blocked_reason(self, address: IpAddress) -> str | None:
        """Returns why ``address`` is refused, or ``None`` if it may be reached.

        Args:
            address: A resolved address.

        Returns:
            A short reason, or ``None``.
        """
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # the same host: the allowlist applies to it
        if any(address in network for network in self.allow_networks):
            return None
        if address in _METADATA:
            return "a cloud metadata address"
        embedded = embedded_ipv4(address)
        if embedded is not None:
            form, inner = embedded
            if inner in _METADATA:
                return f"a cloud metadata address wrapped in {form}"
            inner_reason = _not_routable(inner)
            if inner_reason:
                return f"{inner_reason} ({inner}) wrapped in {form}"
            if form in _JUDGED_BY_INNER:
                return None
        return _not_routable(address)

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
                how = (
                    f"an operator can allow it by adding {host!r} (or {address}) to"
                    f" {self.setting}, a JSON list"
                    if self.setting
                    else "operators can allow it in settings"
                )
                raise UnsafeUrl(
                    f"the URL's host {host!r} resolves to {address}, {reason}; only public"
                    f" addresses may be called ({how})",
                    metadata={
                        "host": host,
                        "address": str(address),
                        **({"setting": self.setting} if self.setting else {}),
                    },
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


@functools.lru_cache(maxsize=4096)
def _split(url: str) -> urllib.parse.SplitResult:
    # A pure check of the URL's form: each endpoint's URL is checked once per process, not
    # once per delivery (what its host resolves to is still checked on every call).
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
    literal = _literal(host)
    if literal is not None:
        return [literal]
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


@functools.lru_cache(maxsize=4096)
def _literal(host: str) -> IpAddress | None:
    # The host as an IP address, or None for a name (parsed once per host, not per call).
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
