"""LLMStandin: a scriptable OpenAI-compatible Chat Completions server for tests and local runs.

Plain Python (no Django). `POST /v1/chat/completions`, plain or streamed
(`stream: true`: `chat.completion.chunk` events, then `data: [DONE]`, as the
real API sends them), and `GET /v1/models` are served. `max_tokens` is honoured: a longer answer is
cut, with `finish_reason: "length"`.

In strict mode (`LLMStandin(strict=True)`, the test suite's default) it
refuses what the strictest OpenAI-compatible servers refuse, as they do:

- an assistant message with `"content": null` → HTTP 500 with a long error
  text, as llama-cpp-python answers (its chat templates cannot render null);
- `tools` without `tool_choice` → the tools are dropped and the model
  answers in plain text, as llama-cpp-python's `chatml-function-calling`
  format does;
- `tool_choice` without `tools` → HTTP 400 (OpenAI);
- an assistant message with an empty `tool_calls` list → HTTP 400 (OpenAI);
- a `tool` message that answers no tool call of the assistant message
  before it → HTTP 400 (OpenAI);
- an optional parameter sent as null, or `max_tokens` below 1 → HTTP 400,
  as a strictly typed server validates them.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "stand-in"
# The status `answer` gives for a request whose connection is to be dropped unanswered.
DROP = -1


def _content_text(content: Any) -> str:
    """Text of a message's content, which may be a string, None or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _arguments(call: dict[str, Any]) -> str:
    """OpenAI sends tool arguments as a JSON string; scripts may give a dict or a string."""
    arguments = call.get("arguments")
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {})


def _call_first_tool(tools: list[Any], text: str) -> dict[str, Any]:
    """A call of the first offered tool, each of its string parameters set to `text`."""
    function = next(t.get("function") or {} for t in tools if isinstance(t, dict))
    properties = (function.get("parameters") or {}).get("properties") or {}
    arguments = {
        name: text
        for name, spec in properties.items()
        if isinstance(spec, dict) and spec.get("type") == "string"
    }
    return {"name": function.get("name"), "arguments": arguments}


def _error_body(message: str, status: int) -> dict:
    kind = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }
    return {
        "error": {
            "message": message,
            "type": kind.get(status, "server_error"),
            "param": None,
            "code": None,
        }
    }


class LLMStandin:
    """Serves Chat Completions from a script (`self.script`) or a deterministic default.

    Every request body is appended to `self.requests`. Script items (popped one per request):
    `{"content": str}`, `{"tool_calls": [{"name", "arguments"}]}`,
    `{"status": int, "body": dict, "headers": dict}`, each optionally with `"sleep": seconds`;
    an answer may name its `"finish_reason"`. A streamed answer may also say
    `"chunk_sleep": seconds` between its chunks (default `self.chunk_seconds`) and
    `"stall_after": n`: silent after its first n chunks.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_seconds: float = 0.0,
        strict: bool = False,
        api_key: str | None = None,
    ):
        self.host, self.port = host, port
        self.latency_seconds = latency_seconds
        self.strict = strict
        self.chunk_seconds = 0.0
        # Streamed answers whose client closed the connection before their end.
        self.streams_cut = 0
        # Connections accepted: a client that keeps its connections alive opens few.
        self.connections = 0
        # When set, a request without `Authorization: Bearer {api_key}` gets
        # 401, as a real provider answers a wrong key.
        self.api_key = api_key
        self.script: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._call_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for `openai.OpenAI(base_url=...)`, e.g. http://127.0.0.1:PORT/v1."""
        if self._server is None:
            raise RuntimeError("LLMStandin is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> str:
        """Bind and serve in a daemon thread; return the base URL."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        server = _Server((self.host, self.port), _make_handler(self))
        server.daemon_threads = True  # a hung scripted answer must not block interpreter exit
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving; scripted sleeps in flight end at once."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LLMStandin:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def push_answer(self, text: str) -> None:
        """Next request gets a final answer `text`."""
        self.script.append({"content": text})

    def push_tool_call(self, name: str, arguments: dict) -> None:
        """Next request gets one tool call."""
        self.script.append({"tool_calls": [{"name": name, "arguments": arguments}]})

    def push_error(self, status: int, message: str, headers: dict | None = None) -> None:
        """Next request gets an HTTP error with an OpenAI-style error body."""
        item = {"status": status, "body": _error_body(message, status), "headers": headers or {}}
        self.script.append(item)

    def push_disconnect(self) -> None:
        """Next request's connection is closed without an answer, as a crashed server's is."""
        self.script.append({"drop": True})

    def push_hang(self, seconds: float) -> None:
        """Next request sleeps `seconds` and then gets the default answer."""
        self.script.append({"sleep": seconds})

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def _next_item(self) -> dict[str, Any] | None:
        try:
            return self.script.popleft()
        except IndexError:
            return None

    def _sleep(self, seconds: float) -> None:
        # Interruptible, so stop() does not wait for a simulated hang.
        if seconds > 0:
            self._stopping.wait(seconds)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Build (status, JSON body, extra headers) for one chat completion request."""
        if self.strict:
            refused = strict_refusal(body)
            if refused is not None:
                return refused[0], refused[1], {}
            body = strict_view(body)
        return self._answer_item(body, self._next_item())

    def _answer_item(
        self, body: dict[str, Any], item: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        self._sleep(self.latency_seconds)
        if item is not None and item.get("sleep"):
            self._sleep(float(item["sleep"]))
        if item is not None and item.get("drop"):
            return DROP, {}, {}
        if item is not None and "status" in item:
            status = int(item["status"])
            error = item.get("body") or _error_body(f"scripted error {status}", status)
            return status, error, {k: str(v) for k, v in (item.get("headers") or {}).items()}
        finish = item.get("finish_reason") if item is not None else None
        if item is not None and "tool_calls" in item and body.get("tools"):
            return 200, self._completion(body, item.get("content"), item["tool_calls"], finish), {}
        if item is not None and "tool_calls" in item:
            # Offered no tools (or they were dropped), a model can only write text.
            text = item.get("content") or "(stand-in) I have no tools to call."
            return 200, self._completion(body, text, None, finish), {}
        if item is not None and "content" in item:
            return 200, self._completion(body, item["content"], None, finish), {}
        content, tool_calls = self._default(body)
        return 200, self._completion(body, content, tool_calls), {}

    def _default(self, body: dict[str, Any]) -> tuple[str | None, list[dict] | None]:
        """Deterministic answer: search when offered knowledge_search, else call the first
        tool offered, else echo; after a tool's result, answer with it."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        last = messages[-1] if messages else {}
        users = [m for m in messages if m.get("role") == "user"]
        last_user = _content_text(users[-1].get("content")) if users else ""
        tool_names = {
            (t.get("function") or {}).get("name")
            for t in body.get("tools") or []
            if isinstance(t, dict)
        }
        if last.get("role") == "user" and "knowledge_search" in tool_names:
            return None, [{"name": "knowledge_search", "arguments": {"query": last_user}}]
        if last.get("role") == "user" and tool_names:
            return None, [_call_first_tool(body.get("tools") or [], last_user)]
        if last.get("role") == "tool":
            return f"Based on the knowledge base: {_content_text(last.get('content'))[:200]}", None
        return f"(stand-in) You said: {last_user}", None

    def _completion(
        self,
        body: dict[str, Any],
        content: str | None,
        tool_calls: list[dict] | None,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{next(self._call_ids)}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": _arguments(call)},
                }
                for call in tool_calls
            ]
        finish_reason = finish_reason or ("tool_calls" if tool_calls else "stop")
        if _cut_to(message, body.get("max_tokens")):
            finish_reason = "length"
        prompt_chars = sum(
            len(_content_text(m.get("content")))
            for m in body.get("messages") or []
            if isinstance(m, dict)
        )
        prompt_tokens = max(prompt_chars // 4, 1)
        completion_tokens = max(_answer_chars(message) // 4, 1)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": None,
        }

    # --- Streamed answers ---------------------------------------------------------

    def push_stream(self, text: str, *, chunk_sleep: float = 0.0, stall_after: int | None = None):
        """Next request (streamed) gets a final answer `text`, paced or stalled as told."""
        self.script.append(
            {"content": text, "chunk_sleep": chunk_sleep, "stall_after": stall_after}
        )

    def stream_answer(self, body: dict[str, Any]) -> tuple[int, dict, dict, _StreamPlan | None]:
        """Build (status, error body, headers, the chunks to send) for a streamed request."""
        if self.strict:
            refused = strict_refusal(body)
            if refused is not None:
                return refused[0], refused[1], {}, None
            body = strict_view(body)
        item = self._next_item()
        status, answer, headers = self._answer_item(body, item)
        if status != 200:
            return status, answer, headers, None
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pacing = item or {}
        return (
            200,
            {},
            headers,
            _StreamPlan(
                chunks=completion_chunks(answer, include_usage),
                pause_seconds=float(pacing.get("chunk_sleep") or self.chunk_seconds),
                stall_after=pacing.get("stall_after"),
            ),
        )


def _answer_chars(message: dict[str, Any]) -> int:
    # For a tool call the "answer" is its serialized arguments.
    return len(message.get("content") or "") + sum(
        len(c["function"]["arguments"]) for c in message.get("tool_calls", [])
    )


def _cut_to(message: dict[str, Any], max_tokens: Any) -> bool:
    """Cut the answer to `max_tokens` (4 characters a token); True if it was cut."""
    if not isinstance(max_tokens, int) or _answer_chars(message) // 4 <= max_tokens:
        return False
    chars = max_tokens * 4
    if message.get("content"):
        message["content"] = message["content"][:chars]
        chars -= len(message["content"])
    for call in message.get("tool_calls", []):
        function = call["function"]
        function["arguments"] = function["arguments"][: max(chars, 0)]
        chars -= len(function["arguments"])
    return True


# Parameters a request may leave out; a strictly typed server refuses them as null.
OPTIONAL_PARAMETERS = (
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "stream",
    "parallel_tool_calls",
)

# What llama-cpp-python answers when a chat template meets `content: null`:
# the exception's text and the server's own paths, far longer than a line.
NULL_CONTENT_ERROR = (
    'can only concatenate str (not "NoneType") to str\n'
    "Traceback (most recent call last):\n"
    '  File "/usr/local/lib/python3.11/site-packages/llama_cpp/server/errors.py", '
    "line 173, in custom_route_handler\n"
    '  File "/usr/local/lib/python3.11/site-packages/llama_cpp/llama_chat_format.py", '
    "line 2279, in chatml_function_calling\n" * 12
)


def strict_refusal(body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """Return (status, error body) for a request the strictest servers refuse, else None."""
    for name in OPTIONAL_PARAMETERS:
        if name in body and body[name] is None:
            return 400, _error_body(f"{name}: expected a value, got null", 400)
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return 400, _error_body("max_tokens must be an integer of at least 1", 400)
    if "tool_choice" in body and not body.get("tools"):
        return 400, _error_body("tool_choice is only allowed when tools are specified", 400)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, _error_body("messages: expected a non-empty array", 400)
    answerable: set[str] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return 400, _error_body(f"messages.{index}: expected an object", 400)
        role = message.get("role")
        if role == "assistant":
            if "content" in message and message["content"] is None:
                return 500, _error_body(NULL_CONTENT_ERROR, 500)
            if "tool_calls" in message and not message["tool_calls"]:
                return 400, _error_body(f"messages.{index}.tool_calls: [] is too short", 400)
            answerable = {c.get("id") for c in message.get("tool_calls") or []}
        elif role == "tool":
            if message.get("tool_call_id") not in answerable:
                return 400, _error_body(
                    f"messages.{index}: a 'tool' message must answer a preceding tool call", 400
                )
        else:
            answerable = set()
    return None


def strict_view(body: dict[str, Any]) -> dict[str, Any]:
    """Return the request as llama-cpp-python's function calling sees it.

    Without `tool_choice` (or with "none") it renders the prompt without the tools.
    """
    if body.get("tools") and body.get("tool_choice") in (None, "none"):
        return {key: value for key, value in body.items() if key != "tools"}
    return body


class _StreamPlan:
    def __init__(self, chunks: list[dict], pause_seconds: float, stall_after: int | None):
        self.chunks, self.pause_seconds, self.stall_after = chunks, pause_seconds, stall_after


def _pieces(text: str, size: int) -> list[str]:
    """Cut `text` as a model's tokens come: a few characters at a time."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def completion_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """Return the `chat.completion.chunk` objects the real API streams for `completion`.

    The first chunk names the role; text comes a few characters per chunk;
    each tool call starts with its index, id and name, and its arguments
    follow in fragments under the same index; the last choice chunk has the
    finish reason; with `include_usage` every chunk has `usage: null` and a
    final chunk with no choices carries the usage.
    """
    choice = completion["choices"][0]
    message = choice["message"]
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        out = {
            **base,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            out["usage"] = None
        return out

    chunks = []
    if message.get("tool_calls"):
        chunks.append(chunk({"role": "assistant", "content": None}))
        for index, call in enumerate(message["tool_calls"]):
            first = {"index": index, "id": call["id"], "type": "function"}
            function = {"name": call["function"]["name"], "arguments": ""}
            chunks.append(chunk({"tool_calls": [{**first, "function": function}]}))
            for part in _pieces(call["function"]["arguments"], 7):
                fragment = {"index": index, "function": {"arguments": part}}
                chunks.append(chunk({"tool_calls": [fragment]}))
    else:
        chunks.append(chunk({"role": "assistant", "content": ""}))
        for part in _pieces(message.get("content") or "", 4):
            chunks.append(chunk({"content": part}))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


class _Server(ThreadingHTTPServer):
    # Many runs connect at once; the default backlog of 5 drops connections
    # under load, which clients see as one-second stalls.
    request_queue_size = 256


def _make_handler(standin: LLMStandin) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one LLMStandin instance."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "LLMStandin/1.0"
        # Keep-alive, as real Chat Completions endpoints: a client reuses
        # its connections instead of opening one per call.
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY the
        # body waits for the client's delayed ACK of the headers (~40 ms).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests and demos do not want a line per request on stderr

        def setup(self) -> None:
            super().setup()
            with standin._lock:
                standin.connections += 1

        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its timeout fired during a scripted hang)

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0].rstrip("/") == "/v1/models":
                model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "standins"}
                self._send(200, {"object": "list", "data": [model]})
            else:
                self._send(404, _error_body(f"no route for GET {self.path}", 404))

        def do_POST(self) -> None:
            # Read the body first: on a kept-alive connection, unread bytes
            # would be taken for the next request.
            try:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            except ValueError:
                self.close_connection = True  # the body's end is unknown
                self._send(400, _error_body("invalid Content-Length", 400))
                return
            if self.path.split("?", 1)[0].rstrip("/") != "/v1/chat/completions":
                self._send(404, _error_body(f"no route for POST {self.path}", 404))
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
            except ValueError as exc:
                self._send(400, _error_body(f"invalid JSON body: {exc}", 400))
                return
            if standin.api_key and self.headers.get("Authorization") != f"Bearer {standin.api_key}":
                self._send(401, _error_body("Incorrect API key provided.", 401))
                return
            standin._record(body)
            if body.get("stream"):
                self._stream(*standin.stream_answer(body))
                return
            status, answer, headers = standin.answer(body)
            if status == DROP:
                self._drop()
                return
            self._send(status, answer, headers)

        def _drop(self) -> None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _stream(
            self, status: int, error: dict, headers: dict[str, str], plan: _StreamPlan | None
        ) -> None:
            if status == DROP:
                self._drop()
                return
            if plan is None:
                self._send(status, error, headers)  # errors come as plain JSON, as upstream
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                for n, chunk in enumerate(plan.chunks):
                    if plan.stall_after is not None and n >= plan.stall_after:
                        standin._sleep(3600)  # silent until the client gives up
                    elif n:
                        standin._sleep(plan.pause_seconds)
                    self._write_chunk(f"data: {json.dumps(chunk)}\n\n")
                self._write_chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                with standin._lock:
                    standin.streams_cut += 1

        def _write_chunk(self, text: str) -> None:
            data = text.encode("utf-8")
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler
