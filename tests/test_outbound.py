"""Outbound calls reach only the hosts allowed, checked after resolution and on every hop."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx2
import pytest

from aes_project.outbound import HostPolicy, RefusedURL, mask_headers

pytestmark = pytest.mark.django_free


class _Server(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 that records the requests it was sent."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.seen: list[dict[str, str]] = []
        self.redirect_to = redirect_to
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append({"path": self.path, "host": self.headers["Host"]})
        if self.server.redirect_to and self.path != self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Server] = []

    def start(redirect_to: str | None = None) -> _Server:
        server = _Server(redirect_to)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_any_public_host_is_not_a_loopback_one(serve) -> None:
    target = serve()
    policy = HostPolicy.from_setting("*")
    with pytest.raises(RefusedURL, match="non-public"):
        policy.check(target.url)
    with policy.client() as client, pytest.raises(RefusedURL):
        client.get(target.url)
    assert target.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://169.254.1.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost/",
        "http://224.0.0.1/",
    ],
)
def test_non_public_addresses_are_refused_under_the_wildcard(url: str) -> None:
    with pytest.raises(RefusedURL):
        HostPolicy.from_setting("*").check(url)


def test_metadata_addresses_are_refused_even_when_named() -> None:
    policy = HostPolicy.from_setting("169.254.169.254,[fd00:ec2::254]")
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
        with pytest.raises(RefusedURL, match="metadata"):
            policy.check(url)


def test_a_named_host_may_be_private_and_is_reached_with_its_own_host_header(serve) -> None:
    target = serve()
    port = target.server_address[1]
    policy = HostPolicy.from_setting(f"localhost:{port}")
    with policy.client() as client:
        answer = client.get(f"http://localhost:{port}/ping")
    assert answer.text == "hello"
    assert target.seen == [{"path": "/ping", "host": f"localhost:{port}"}]


def test_ports_and_suffixes_must_match() -> None:
    policy = HostPolicy.from_setting("127.0.0.1:1,*.example.internal:8443")
    for url in (
        "http://127.0.0.1:2/",
        "https://example.internal:8443/",
        "https://a.example.internal/",
    ):
        with pytest.raises(RefusedURL, match="not allowed"):
            policy.check(url)


def test_a_relative_redirect_stays_on_the_named_host(serve) -> None:
    target = serve(redirect_to="/final")
    port = target.server_address[1]
    policy = HostPolicy.from_setting(f"localhost:{port}")
    with policy.client(follow_redirects=True) as client:
        answer = client.get(f"http://localhost:{port}/start")
    # Resolved against the address it was sent to, the hop would be refused.
    assert answer.text == "hello"
    assert [seen["path"] for seen in target.seen] == ["/start", "/final"]
    assert {seen["host"] for seen in target.seen} == {f"localhost:{port}"}
    assert str(answer.request.url) == f"http://localhost:{port}/final"


def test_every_redirect_is_checked(serve) -> None:
    forbidden = serve()
    hop = serve(redirect_to=forbidden.url + "/secret")
    policy = HostPolicy.from_setting(f"127.0.0.1:{hop.server_address[1]}")
    with policy.client(follow_redirects=True) as client, pytest.raises(RefusedURL):
        client.get(hop.url)
    assert len(hop.seen) == 1
    assert forbidden.seen == []


async def _fetch(policy: HostPolicy, url: str) -> str:
    async with policy.async_client() as client:
        return (await client.get(url)).text


def test_the_async_client_checks_too(serve) -> None:
    import anyio

    target = serve()
    assert anyio.run(_fetch, HostPolicy.from_setting("127.0.0.1:*"), target.url) == "hello"
    with pytest.raises(RefusedURL):
        anyio.run(_fetch, HostPolicy.from_setting("*"), target.url)
    assert len(target.seen) == 1


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "file:///etc/passwd", "http:///x", "http://[::1/"]
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(RefusedURL):
        HostPolicy.from_setting("*").check(url)


@pytest.mark.parametrize("value", ["host:port", "a:1:b"])
def test_a_bad_pattern_is_an_error(value: str) -> None:
    with pytest.raises(ValueError, match="not a host pattern"):
        HostPolicy.from_setting(value)


def test_header_values_are_masked() -> None:
    assert mask_headers({"Authorization": "Bearer s3cret", "X-Key": "k"}) == {
        "Authorization": "***",
        "X-Key": "***",
    }


def test_a_refused_request_is_not_an_httpx_error() -> None:
    # Callers catch RefusedURL beside httpx's errors; it must not be swallowed as one.
    assert not issubclass(RefusedURL, httpx2.HTTPError)
