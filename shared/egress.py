"""Outbound HTTP to URLs that callers give (callbacks, later asset imports), kept off the
host's own network.

A caller-given URL could name the metadata service, the host's loopback or the
private network in many spellings (``127.1``, ``2130706433``, ``0x7f000001``,
``0``, ``[::ffff:127.0.0.1]``, a name that resolves there, or one that resolves
elsewhere at check time and there at connect time). So the check is made on
what a connection would really reach: the host is resolved, every address it
resolves to must be public, and the connection goes to an address that was
checked, never to a second lookup of the name. TLS still verifies the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

from shared.errors import InvalidRequest

__all__ = [
    "BlockedAddress",
    "GuardedBackend",
    "blocked_reason",
    "guarded_client",
    "http_url",
    "literal_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes that carry an IPv4 address a router would reach: NAT64 (RFC 6052).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def http_url(url: str, field: str, max_length: int = 2048) -> SplitResult:
    """A caller's URL, split: absolute http(s) with a host, at most ``max_length``
    characters, a valid port; InvalidRequest (422) naming ``field`` otherwise."""
    if len(url) > max_length:
        raise InvalidRequest(f"{field} is longer than {max_length} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise InvalidRequest(f"{field} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"{field} must be an http or https URL")
    if not parts.hostname:
        raise InvalidRequest(f"{field} has no host")
    return parts


class BlockedAddress(httpx.ConnectError):
    """The URL's host is, or resolves to, an address callers may not reach."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a caller may not reach ``ip`` (loopback, private, link-local ...), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return blocked_reason(inner)
        if ip.scope_id:
            return "a scoped (link-local) address"
    for what, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"a {what} address ({ip})"
    if not ip.is_global:
        return f"a non-global address ({ip})"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as a number stands for, in any spelling the C library
    accepts (``127.1``, ``2130706433``, ``0x7f.1``, ``0``, ``[::1]``), else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


async def resolve_public(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, when all of them are public; else BlockedAddress."""
    literal = literal_address(host)
    if literal is not None:
        addresses: Iterable[str] = [str(literal)]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpx.ConnectError(f"cannot resolve {host!r}: {exc.strerror}") from exc
        addresses = [str(info[4][0]) for info in infos]
    checked: list[str] = []
    for address in addresses:
        reason = blocked_reason(ipaddress.ip_address(address.split("%", 1)[0]))
        if reason is not None:
            raise BlockedAddress(f"{host!r} is {reason}: callers may not reach it")
        if address not in checked:
            checked.append(address)
    if not checked:
        raise httpx.ConnectError(f"{host!r} resolves to no address")
    return checked


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to checked public addresses."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve_public(host, port)
        last: Exception | None = None
        for address in addresses:  # the checked addresses, in the resolver's order
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not reachable from caller-given URLs")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(*, allow_private: bool, **kw: Any) -> httpx.AsyncClient:
    """An httpx client for caller-given URLs: no redirects, no proxy from the environment,
    and, unless ``allow_private``, only public addresses (see the module)."""
    kw.setdefault("follow_redirects", False)
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    if not allow_private:
        # httpx offers no network backend argument; its transport's pool is rebuilt with
        # the same settings and the guarded backend (tests/test_egress.py holds it to that).
        pool = transport._pool
        assert isinstance(pool, httpcore.AsyncConnectionPool)
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=pool._ssl_context,
            max_connections=pool._max_connections,
            max_keepalive_connections=pool._max_keepalive_connections,
            keepalive_expiry=pool._keepalive_expiry,
            http1=pool._http1,
            http2=pool._http2,
            retries=pool._retries,
            network_backend=GuardedBackend(),
        )
    return httpx.AsyncClient(transport=transport, trust_env=False, **kw)
