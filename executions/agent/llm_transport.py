"""The model server's answer read in the run's own thread, and cut short by a cancel.

The openai client reads its HTTP answer through httpcore. This network
backend wraps each of its connections so that, while the calling thread is
`watching` (executions/agent/llm.py, around one try), a read waits at most
POLL_SECONDS at a time and runs the thread's check between waits: a
cancelled run stops waiting within a second, even on a hung server, and
its connection is closed (httpcore closes a connection whose answer was
left half read). The read also ends at the try's end, however slowly a
server trickles its answer. Elsewhere (a streamed call's reader thread)
reads are httpcore's own, and so are they through a proxy the environment
names (httpx gives it a transport of its own): a cancel then waits for the
read's timeout. A connect is not cut short: it ends at its own timeout.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpcore2
import httpx2
import openai

# Seconds one read waits before the thread's check runs.
POLL_SECONDS = 1.0
# The openai SDK's own connection limits, which a client given its own
# transport would not get.
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)

_local = threading.local()


@contextlib.contextmanager
def watching(check: Callable[[], None], end: float) -> Iterator[None]:
    """Run `check` between reads of this thread's answer, and end them at `end` (monotonic)."""
    _local.watch = (check, end)
    try:
        yield
    finally:
        _local.watch = None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the trusted certificates takes tens of milliseconds: once a
    # process, not once a client (executions/agent/llm.py keeps one a thread).
    return httpx2.create_ssl_context()


def http_client() -> httpx2.Client:
    """Return an HTTP client for openai.OpenAI with the SDK's own defaults and these reads."""
    transport = httpx2.HTTPTransport(verify=_ssl_context(), limits=LIMITS)
    # HTTPTransport takes no network backend; its connection pool does.
    transport._pool._network_backend = _Backend()
    return openai.DefaultHttpxClient(transport=transport)


class _Stream(httpcore2.NetworkStream):
    def __init__(self, stream: httpcore2.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        watch = getattr(_local, "watch", None)
        if watch is None:
            return self._stream.read(max_bytes, timeout)
        check, end = watch
        if timeout is not None:
            end = min(end, time.monotonic() + timeout)
        while (left := end - time.monotonic()) > 0:
            try:
                return self._stream.read(max_bytes, min(left, POLL_SECONDS))
            except httpcore2.ReadTimeout:
                check()  # raises Cancelled or Superseded: the answer is dropped
        raise httpcore2.ReadTimeout("the model server did not answer in time")

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _Stream:
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore2.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> _Stream:
        return _Stream(
            self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> _Stream:
        return _Stream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
