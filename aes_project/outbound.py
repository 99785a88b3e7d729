"""Outbound HTTP to URLs that tenants name (tools, webhooks), within the deployment's host patterns.

An agent's configuration or a POST names URLs that the AES then calls from
inside the deployment's network: unchecked, such a URL reaches the cloud
metadata service, the database or Redis. So every request is checked after
name resolution (a public name may resolve to a private address) and made to
the very address that was checked (a second lookup could answer differently);
a redirect is a request of its own, so every hop is checked too.

Patterns (a comma-separated setting): `*` allows any host that resolves only
to public addresses; `host`, `host:port`, `host:*`, `*.example.com`,
`*.example.com:8443`, `10.0.0.5`, `[::1]:8080` allow what they name, private
addresses included: that is how an operator allows its own internal services.
A cloud metadata address is never reached, whatever the patterns say.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx2

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}
# The instance metadata services of the clouds (AWS, GCP, Azure, OCI share
# 169.254.169.254; AWS over IPv6 and for ECS tasks; Alibaba): credentials live there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
MASK = "***"


class RefusedURL(ValueError):
    """A URL the deployment does not allow; its text is a short reason fit for a tenant."""


@dataclass(frozen=True)
class _Pattern:
    host: str  # lower case; "*" any host; "*.example.com" its subdomains
    port: int | None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return self.host == "*" or self.host == host


@dataclass(frozen=True)
class HostPolicy:
    patterns: tuple[_Pattern, ...]

    @classmethod
    def from_setting(cls, value: str) -> HostPolicy:
        """Return the policy of a comma-separated list of patterns (ValueError if one is bad)."""
        return _parsed(value)

    def check(self, url: str) -> Address:
        """Return the address `url` may be reached at; raise RefusedURL when it may not."""
        host, port = _host_and_port(url)
        explicit = any(p.host != "*" and p.matches(host, port) for p in self.patterns)
        if not explicit and not any(p.host == "*" and p.matches(host, port) for p in self.patterns):
            raise RefusedURL(f"the host {host}:{port} is not allowed")
        addresses = _resolve(host, port)
        for address in addresses:
            if address in METADATA_ADDRESSES:
                raise RefusedURL(f"the host {host} resolves to a metadata address")
            if not explicit and not _public(address):
                raise RefusedURL(f"the host {host} resolves to a non-public address")
        return addresses[0]

    def client(self, **kwargs: Any) -> httpx2.Client:
        """Return an httpx client whose every request, redirects included, is checked first."""
        return httpx2.Client(transport=_CheckedTransport(self), trust_env=False, **kwargs)

    def async_client(self, **kwargs: Any) -> httpx2.AsyncClient:
        """Return the async client of `client`, for the MCP SDK and other asyncio code."""
        return httpx2.AsyncClient(transport=_AsyncCheckedTransport(self), trust_env=False, **kwargs)


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return `headers` with every value masked: they carry the tenant's credentials."""
    return {name: MASK for name in headers}


class _CheckedTransport(httpx2.HTTPTransport):
    def __init__(self, policy: HostPolicy) -> None:
        # Proxies from the environment are not used: the proxy, not this
        # check, would choose the address.
        super().__init__(trust_env=False)
        self._policy = policy

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        _pin(request, self._policy.check(str(url)))
        try:
            return super().handle_request(request)
        finally:
            # The client resolves a relative redirect against this URL.
            request.url = url


class _AsyncCheckedTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, policy: HostPolicy) -> None:
        super().__init__(trust_env=False)
        self._policy = policy

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # Name resolution blocks: off the event loop.
        url = request.url
        address = await anyio.to_thread.run_sync(self._policy.check, str(url))
        _pin(request, address)
        try:
            return await super().handle_async_request(request)
        finally:
            request.url = url


def _pin(request: httpx2.Request, address: Address) -> None:
    """Send `request` to `address`; its Host header and TLS name stay the URL's host."""
    host = request.url.host
    if request.url.scheme == "https":
        request.extensions = {**request.extensions, "sni_hostname": host}
    request.url = request.url.copy_with(host=str(address))


@functools.lru_cache(maxsize=32)
def _parsed(value: str) -> HostPolicy:
    return HostPolicy(tuple(_pattern(item.strip()) for item in value.split(",") if item.strip()))


def _pattern(text: str) -> _Pattern:
    host, port = text.lower(), None
    if host.startswith("["):  # [v6] or [v6]:port
        literal, _, rest = host[1:].partition("]")
        host, port = literal, rest.removeprefix(":") or None
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or (port is not None and port != "*" and not port.isdigit()):
        raise ValueError(f"not a host pattern: {text!r}")
    if ":" in host:  # only an IPv6 literal holds a colon
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not a host pattern: {text!r}") from None
    return _Pattern(host=host, port=None if port in (None, "*") else int(port))


def _host_and_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedURL("the URL is not valid") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise RefusedURL("only http and https URLs are allowed")
    if not parts.hostname:
        raise RefusedURL("the URL has no host")
    return parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RefusedURL(f"the host {host} does not resolve") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)
        addresses.append(mapped or address)
    return addresses


def _public(address: Address) -> bool:
    return address.is_global and not address.is_multicast
