"""Which addresses a guarded connection may go to: the allowlist's hosts, resolved once and checked.

Part of the egress guard; see ``mcp_gateway.egress``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import anyio

from mcp_gateway.config import EgressSettings

__all__ = ["AddressPinner", "AddressRefusedError", "Resolver", "SyncResolver", "system_resolver"]

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


def _forbidden(address: str) -> str | None:
    """Why a resolved address may not be connected to, or None."""
    ip = _literal(address.split("%", 1)[0])
    if ip is None:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason, flag in (
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("link-local", ip.is_link_local),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return reason
    return None


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
