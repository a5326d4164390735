"""Which addresses a guarded connection may go to: the allowlist's hosts, resolved once and checked.

Part of the egress guard; see ``mcp_gateway.egress``. ``address_refusal`` is the one judgement of an address;
``literal_refusal`` applies it to an allowlist entry as written (``config check`` warns about such entries,
which are connected to as written).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import anyio

from mcp_gateway.config import EgressSettings

__all__ = [
    "AddressPinner",
    "AddressRefusedError",
    "Resolver",
    "SyncResolver",
    "address_refusal",
    "literal_refusal",
    "system_resolver",
]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
SyncResolver = Callable[[str, int], Sequence[str]]


class AddressRefusedError(Exception):
    """Library-neutral refusal raised by the pinner; each stack re-raises it as its own error type."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, in its order, without duplicates."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _system_resolver_sync(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints (AWS, ECS, AWS over IPv6, Alibaba, Azure's platform endpoint): whoever makes
# the gateway reach one can ask for the host's credentials. Not all are link-local, so they are named.
_METADATA = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
_METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where packets to it end up."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip


def _refused(ip: IPAddress) -> tuple[IPAddress, str] | None:
    # A mapped address is its IPv4 address; one carried by 6to4 or NAT64 is refused if either form is.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates: tuple[IPAddress, ...] = (ip.ipv4_mapped,)
    else:
        candidates = tuple(dict.fromkeys((_embedded_ipv4(ip), ip)))
    for candidate in candidates:
        if candidate in _METADATA:
            return candidate, "a cloud metadata endpoint"
        for reason, flag in (
            ("unspecified", candidate.is_unspecified),
            ("multicast", candidate.is_multicast),
            ("link-local", candidate.is_link_local),
            ("reserved", candidate.is_reserved),
        ):
            if flag:
                return candidate, reason
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why no connection should go to ``ip`` (a cloud metadata endpoint, unspecified, multicast, link-local or
    reserved, also when carried inside an IPv6 address), or None."""
    refused = _refused(ip)
    return None if refused is None else refused[1]


def _forbidden(address: str) -> str | None:
    """Why a resolved address may not be connected to, or None."""
    ip = _literal(address.split("%", 1)[0])
    return "not an IP address" if ip is None else address_refusal(ip)


def literal_refusal(host: str) -> str | None:
    """Why an allowlist entry's host, as written, names an address no connection should reach, or None.

    Covers literal addresses in every spelling the system resolver accepts (``2852039166`` and ``0xa9.0xfe.0xa9.0xfe``
    are 169.254.169.254), addresses carried inside IPv6 ones, and the well-known metadata host names.
    """
    name = host.strip("[]").lower().rstrip(".")
    if name in _METADATA_NAMES:
        return f"{name} is a cloud metadata host name"
    ip, literal = _literal(name), True
    if ip is None and name and all(char in "0123456789abcdefx." for char in name):
        literal = False
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return None
    # Loopback is in-boundary by definition (Python counts ::1 as reserved, which the connection check keeps).
    refused = None if ip is None or ip.is_loopback else _refused(ip)
    if ip is None or refused is None:
        return None
    target, reason = refused
    what = f"{name} is {reason}" if target == ip and str(ip) == name else f"{name} is {target}, {reason}"
    # A literal IP skips resolution, so the guard's address check never sees it; other spellings are resolved.
    return f"{what}: connected to as written" if literal else f"{what}: every connection to it is refused"


class AddressPinner:
    """Resolves an allowlisted host once per connection and returns only addresses that passed the check."""

    def __init__(
        self, egress: EgressSettings, resolver: Resolver | None = None, sync_resolver: SyncResolver | None = None
    ) -> None:
        self._resolver = resolver or system_resolver
        self._sync_resolver = sync_resolver or _system_resolver_sync
        self._targets: frozenset[tuple[str, int]] = frozenset(_host_port(origin) for origin in egress.allow)

    def _target(self, host: str, port: int) -> str | None:
        """The host as the allowlist spells it; refuses a (host, port) that no entry names."""
        key = (host.strip("[]").lower(), port)
        if key not in self._targets:
            raise AddressRefusedError(f"egress to {host}:{port} is not allowed")
        return None if _literal(key[0]) is not None else key[0]

    def _checked(self, host: str, port: int, addresses: Sequence[str]) -> list[str]:
        if not addresses:
            raise AddressRefusedError(f"egress to {host}:{port}: the name resolves to no address")
        for address in addresses:
            reason = _forbidden(address)
            if reason is not None:
                raise AddressRefusedError(f"egress to {host}:{port}: resolves to {address} ({reason})")
        return list(addresses)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses to connect to, in resolver order.

        Raises:
            AddressRefusedError: the (host, port) is not on the allowlist, or resolves to no or a forbidden address.
        """
        name = self._target(host, port)
        if name is None:
            return [host.strip("[]")]
        try:
            resolved = await self._resolver(name, port)
        except OSError as exc:
            raise AddressRefusedError(f"egress to {host}:{port}: cannot resolve: {exc}") from exc
        return self._checked(host, port, resolved)

    def addresses_sync(self, host: str, port: int) -> list[str]:
        """As :meth:`addresses`, for the synchronous start-up fetch.

        Raises:
            AddressRefusedError: as :meth:`addresses`.
        """
        name = self._target(host, port)
        if name is None:
            return [host.strip("[]")]
        try:
            resolved = self._sync_resolver(name, port)
        except OSError as exc:
            raise AddressRefusedError(f"egress to {host}:{port}: cannot resolve: {exc}") from exc
        return self._checked(host, port, resolved)


def _host_port(origin: str) -> tuple[str, int]:
    parts = urlsplit(origin)
    # origin_of() always spells both host and port.
    return (parts.hostname or "").lower(), parts.port or 0
