"""Stand-in tool servers for tests and local runs: an HTTP tool server and an MCP server.

Plain Python (no Django). `HttpToolServer` is a threaded HTTP server whose
routes are functions of the JSON body; `McpStandin` is the `mcp` SDK's own
server (MCPServer over Streamable HTTP) under uvicorn. Both bind a free port
on 127.0.0.1, serve from a daemon thread and record every call with its
start and end times (time.monotonic), so a test sees what overlapped.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# Orders the demo agents look up.
ORDERS = {
    "A-1001": {"status": "shipped", "carrier": "UPS", "eta": "2 days"},
    "A-1002": {"status": "processing", "eta": "ships tomorrow"},
    "A-1003": {"status": "delivered", "delivered_on": "2025-01-12"},
}
START_SECONDS = 10.0

# A route: (JSON body, request headers) -> (status, JSON-able body or bytes).
Route = Callable[[Any, dict[str, str]], tuple[int, Any]]


@dataclass
class Call:
    """One request a stand-in served."""

    path: str
    body: Any
    headers: dict[str, str]
    started: float
    ended: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def order_status(body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    """Look an order up by `query` (or `order_id`) in ORDERS."""
    wanted = str((body or {}).get("order_id") or (body or {}).get("query") or "")
    for order_id, order in ORDERS.items():
        if order_id.lower() in wanted.lower():
            return 200, {"order_id": order_id, **order}
    return 404, {"error": f"no order matches {wanted!r}; known: {', '.join(ORDERS)}"}


class HttpToolServer:
    """Serves POST routes of JSON; `routes` maps a path to a Route, `calls` records each call."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {"/orders/lookup": order_status}
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("HttpToolServer is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Bind a free port and serve in a daemon thread; return the base URL."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


def _handler(owner: HttpToolServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY the body
        # waits for the client's delayed ACK of the headers (~40 ms).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            call = Call(self.path, None, dict(self.headers.items()), time.monotonic())
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            route = owner.routes.get(self.path.split("?", 1)[0])
            try:
                call.body = json.loads(raw or b"null")
            except ValueError:
                status, answer = 400, {"error": "the body is not JSON"}
            else:
                if route is None:
                    status, answer = 404, {"error": f"no tool at {self.path}"}
                else:
                    status, answer = route(call.body, call.headers)
            payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            call.ended = time.monotonic()
            owner.record(call)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the caller gave up

    return Handler


class McpStandin:
    """The SDK's MCP server over Streamable HTTP, with `lookup_order` and `wait` tools."""

    def __init__(self, name: str = "crm") -> None:
        self.calls: list[Call] = []
        self.server = MCPServer(name)
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._add_tools()

    def _add_tools(self) -> None:
        @self.server.tool()
        def lookup_order(order_id: str) -> str:
            """Look up an order by its id (e.g. A-1001): status and delivery."""
            call = Call("lookup_order", {"order_id": order_id}, {}, time.monotonic())
            status, answer = order_status({"order_id": order_id}, {})
            call.ended = time.monotonic()
            self.calls.append(call)
            if status != 200:
                raise ToolError(answer["error"])  # its text reaches the caller
            return json.dumps(answer)

        @self.server.tool()
        async def wait(seconds: float) -> str:
            """Wait `seconds`, then say so."""
            call = Call("wait", {"seconds": seconds}, {}, time.monotonic())
            await anyio.sleep(seconds)
            call.ended = time.monotonic()
            self.calls.append(call)
            return f"waited {seconds}s"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/mcp"

    def start(self) -> str:
        """Serve on a free port from a daemon thread; return the MCP endpoint's URL."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by the accepted connections: without it each answer waits
        # for the client's delayed ACK (~40 ms), as in the HTTP server above.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.server.streamable_http_app(), log_level="warning", lifespan="on"
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        ends = time.monotonic() + START_SECONDS
        while not self._uvicorn.started:
            if time.monotonic() > ends or not self._thread.is_alive():
                raise RuntimeError("the MCP stand-in did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
