"""MCP servers (PROTOCOL.md §5.1, §7): their tools offered as `{server}__{tool}`, called over HTTP.

The official `mcp` SDK speaks Streamable HTTP; its HTTP client is the host
policy's (aes_project/outbound.py), so every request and redirect is checked.
The SDK is asyncio and the agent loop is not: a run that has MCP servers
gets one event loop in a thread of its own (an anyio blocking portal), one
MCP session per server, opened on first use and held open by a task of that
loop until the run ends (`Connections.close`).

A server's tool list is cached in Redis (`keys.mcp_tools`, per tenant and
server: its URL and headers) for AES_MCP_TOOLS_CACHE_SECONDS, so most runs
open no session just to list. A server that is refused, down or slow is
an UpstreamError or UpstreamTimeout: a note when listing, the tool's error
result when calling; never a failed run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from django.conf import settings
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from aes_project import redis_clients
from aes_project.outbound import HostPolicy, RefusedURL
from executions.agent import tool_results
from executions.agent.loop import ToolResult
from executions.exceptions import UpstreamError, UpstreamTimeout
from protocol import keys
from protocol.messages import McpServerSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

SEPARATOR = "__"
# Pages of tools/list read from one server at most.
MAX_LIST_PAGES = 10
# Seconds the end of a run waits for its sessions to close (a DELETE each).
CLOSE_SECONDS = 5.0


class Connections:
    """A run's MCP sessions, one per server, opened on first use and closed by `close`."""

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal | None = None
        self._sessions: dict[str, concurrent.futures.Future[Client]] = {}
        self._holders: list[concurrent.futures.Future[None]] = []
        self._closing: anyio.Event | None = None

    def run(
        self, server: McpServerSpec, work: Callable[[Client], Awaitable[T]], timeout: float
    ) -> T:
        """Return what `work` does with the server's session, within `timeout` seconds."""
        if timeout <= 0:
            raise UpstreamTimeout(f"MCP server {server.name!r}: no time left before the deadline")
        try:
            self.policy.check(server.url)
        except RefusedURL as exc:
            raise UpstreamError(f"MCP server {server.name!r} refused: {exc}") from None
        portal, session = self._session(server)
        try:
            client = session.result(timeout=timeout)
            future = portal.start_task_soon(work, client)
            try:
                return future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise
        except concurrent.futures.TimeoutError:
            raise UpstreamTimeout(
                f"MCP server {server.name!r} did not answer within {timeout:.1f}s"
            ) from None
        except Exception as exc:
            raise UpstreamError(f"MCP server {server.name!r}: {_reason(exc)}") from None

    def _session(
        self, server: McpServerSpec
    ) -> tuple[BlockingPortal, concurrent.futures.Future[Client]]:
        with self._lock:
            if self._portal is None:
                self._portal = self._stack.enter_context(start_blocking_portal(name="mcp-sessions"))
                self._closing = self._portal.call(anyio.Event)
            key = _digest(server)
            session = self._sessions.get(key)
            if session is None or (session.done() and session.exception() is not None):
                # A session that failed to open is tried again by the next call.
                session = concurrent.futures.Future()
                self._sessions[key] = session
                self._holders.append(self._portal.start_task_soon(self._hold, server, session))
            return self._portal, session

    async def _hold(self, server: McpServerSpec, session: concurrent.futures.Future) -> None:
        """Open the server's session, hand it over, and keep it open until the run ends."""
        try:
            async with (
                self.policy.async_client(
                    headers=server.headers, timeout=settings.AES_TOOL_TIMEOUT_SECONDS
                ) as http,
                Client(streamable_http_client(server.url, http_client=http), cache=None) as client,
            ):
                session.set_result(client)
                assert self._closing is not None
                await self._closing.wait()
        except BaseException as exc:
            if not session.done():
                closed = UpstreamError("the session was closed before it opened")
                session.set_exception(exc if isinstance(exc, Exception) else closed)
            if not isinstance(exc, Exception):
                raise  # cancelled: the run ended, or gave up waiting for it

    def close(self) -> None:
        """Close every session of the run, waiting a few seconds for them at most."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is None:
            return
        try:
            assert self._closing is not None
            portal.call(self._closing.set)
            _, late = concurrent.futures.wait(self._holders, timeout=CLOSE_SECONDS)
            for holder in late:
                holder.cancel()
        finally:
            self._stack.close()


class McpTool:
    """One tool of one MCP server, as the model sees it: `{server}__{tool}`."""

    def __init__(self, server: McpServerSpec, tool: dict[str, Any], connections: Connections):
        self.server = server
        self.tool = tool
        self.name = f"{server.name}{SEPARATOR}{tool['name']}"
        self.connections = connections

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.tool.get("description") or "",
                "parameters": self.tool.get("input_schema") or {"type": "object"},
            },
        }

    def call(self, arguments: dict[str, Any], deadline: float) -> ToolResult:
        name = self.tool["name"]

        async def call(client: Client) -> Any:
            return await client.call_tool(name, arguments)

        result = self.connections.run(self.server, call, tool_results.wait_seconds(None, deadline))
        text = result_text(result)
        if result.is_error:
            raise UpstreamError(f"{self.name} failed: {text[: tool_results.max_bytes()]}")
        return ToolResult(content=tool_results.text(text))


def result_text(result: Any) -> str:
    """Return the text of a `tools/call` result: its text parts, else its structured content."""
    parts = []
    for item in result.content or []:
        if getattr(item, "type", None) == "text":
            parts.append(item.text)
        elif getattr(getattr(item, "resource", None), "text", None) is not None:
            parts.append(item.resource.text)
        else:
            parts.append(f"[{getattr(item, 'type', 'unknown')} content left out]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content)
    return "\n".join(parts)


def list_tools(
    server: McpServerSpec, tenant_id: str, connections: Connections, deadline: float
) -> list[dict[str, Any]]:
    """Return the server's tools (`name`, `description`, `input_schema`), from the cache or live."""
    key = keys.mcp_tools(tenant_id, _digest(server))
    redis = redis_clients.shared()
    cached = redis.get(key)
    if cached is not None:
        return json.loads(cached)

    async def listing(client: Client) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in page.tools
            )
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    tools = connections.run(server, listing, tool_results.wait_seconds(None, deadline))
    redis.set(key, json.dumps(tools), ex=max(1, int(settings.AES_MCP_TOOLS_CACHE_SECONDS)))
    return tools


def _digest(server: McpServerSpec) -> str:
    """Name a server by its URL and headers: other credentials may see other tools."""
    identity = json.dumps([server.url, server.headers], sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _reason(exc: BaseException) -> str:
    """Return a short reason for a failed MCP exchange, fit for the model and the steps."""
    for seen in _causes(exc):
        if isinstance(seen, RefusedURL):
            return f"refused: {seen}"
    for seen in _causes(exc):
        if not isinstance(seen, BaseExceptionGroup) and str(seen):
            return f"{type(seen).__name__}: {seen}"[:300]
    return f"unreachable ({type(exc).__name__})"


def _causes(exc: BaseException) -> list[BaseException]:
    """Return `exc`, what it wraps (causes, contexts, exception groups), depth first."""
    found: list[BaseException] = []
    pending = [exc]
    while pending and len(found) < 50:
        seen = pending.pop(0)
        if seen in found:
            continue
        found.append(seen)
        if isinstance(seen, BaseExceptionGroup):
            pending.extend(seen.exceptions)
        pending.extend(e for e in (seen.__cause__, seen.__context__) if e is not None)
    return found
