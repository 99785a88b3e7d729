"""HTTP tools (PROTOCOL.md §5.1, §7): a function tool whose call POSTs its arguments to a URL.

The request goes through the deployment's host policy (aes_project/outbound.py):
a host it refuses is never contacted. Whatever goes wrong (refused, no
answer in time, a non-2xx status) is an UpstreamError or UpstreamTimeout the
model sees as the tool's result; the run goes on.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx2

from aes_project.outbound import HostPolicy, RefusedURL, mask_headers
from executions.agent import tool_results
from executions.agent.loop import ToolResult
from executions.exceptions import UpstreamError, UpstreamTimeout
from protocol.messages import HttpToolSpec

log = logging.getLogger(__name__)

# Redirects followed (each one checked by the host policy) before giving up.
MAX_REDIRECTS = 5
# Characters of a failed answer's body the model sees with the status.
ERROR_BODY_CHARS = 300


class HttpTool:
    def __init__(self, spec: HttpToolSpec, policy: HostPolicy) -> None:
        self.spec = spec
        self.name = spec.name
        self.policy = policy

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.spec.description,
                "parameters": self.spec.parameters,
            },
        }

    def call(self, arguments: dict[str, Any], deadline: float) -> ToolResult:
        timeout = tool_results.wait_seconds(self.spec.timeout_seconds, deadline)
        if timeout <= 0:
            raise UpstreamTimeout(f"{self.name}: no time left before the run's deadline")
        ends = time.monotonic() + timeout
        # The declared headers win, Accept included.
        headers = {"Accept": "application/json, text/plain;q=0.9, */*;q=0.5", **self.spec.headers}
        try:
            with _client(self.policy, urlsplit(self.spec.url).hostname).stream(
                "POST", self.spec.url, json=arguments, headers=headers, timeout=timeout
            ) as response:
                body = _read(response, tool_results.max_bytes() + 1, ends)
        except RefusedURL as exc:
            raise UpstreamError(f"{self.name}: refused: {exc}") from None
        except httpx2.TimeoutException:
            raise UpstreamTimeout(f"{self.name}: no answer within {timeout:.1f}s") from None
        except httpx2.HTTPError as exc:
            refused = _refusal(exc)
            if refused is not None:
                raise UpstreamError(f"{self.name}: refused: {refused}") from None
            raise UpstreamError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        log.info(
            "tool %s: POST %s with headers %s answered HTTP %s",
            self.name,
            _where(self.spec.url),
            mask_headers(self.spec.headers),
            response.status_code,
        )
        if not response.is_success:
            detail = body[:ERROR_BODY_CHARS].decode("utf-8", errors="replace")
            raise UpstreamError(f"{self.name}: HTTP {response.status_code}: {detail}")
        return ToolResult(content=tool_results.text(body))


@functools.lru_cache(maxsize=256)
def _client(policy: HostPolicy, host: str | None) -> httpx2.Client:
    """Return the process's client for calls to `host`: connections and TLS setup are reused.

    One per host name: the policy pins each request to an address, and a
    pool shared by names would hand one name's TLS connection to another
    name at the same address.
    """
    return policy.client(follow_redirects=True, max_redirects=MAX_REDIRECTS)


def _read(response: httpx2.Response, limit: int, ends: float) -> bytes:
    """Return at most `limit` bytes of the body; raise a timeout once the call's time is up."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= limit:
            break
        if time.monotonic() > ends:
            raise httpx2.ReadTimeout("the body did not arrive in time")
    return bytes(body[:limit])


def _where(url: str) -> str:
    """Return `url` without its query and credentials, which may hold secrets, for the logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _refusal(exc: BaseException) -> RefusedURL | None:
    """Return the RefusedURL that an httpx error wraps, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RefusedURL):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
