"""Streamed Chat Completions (`data.stream`): the text published as it arrives, the answer whole.

The request asks for `stream: true` with `stream_options.include_usage`; the
chunks' text is handed to `on_delta` as it comes (the run publishes it as
`delta` events), tool-call fragments are put together by their `index`, and
the usage comes from the final chunk. The result is the ChatCompletion a
plain call would have answered, so the rest of the run cannot tell the two
apart.

The HTTP call is read in a helper thread and its chunks handed over a
queue, so the run's thread stops waiting at once when the run is cancelled,
its deadline passes, or the LLM stays silent for AES_LLM_STREAM_IDLE_SECONDS
between two chunks; the connection is then closed, which ends the answer
upstream too. An error before the first chunk (an HTTP error status, no
connection) is the openai error a plain call raises, retried alike; once
text has been published, any failure is an LLMError, never retried, so no
text is published twice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
from django.conf import settings
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from executions.exceptions import ExecutionTimeout, LLMError

# Seconds between two cancellation checks while chunks keep coming or not.
CANCEL_POLL_SECONDS = 1.0
# Characters of an upstream failure kept for operators (the failed try's step).
DETAIL_CHARS = 500
_END = object()


def call(
    client: openai.OpenAI,
    request: dict[str, Any],
    timeout: float,
    check_cancelled: Callable[[], None],
    on_delta: Callable[[str], None],
) -> ChatCompletion:
    """Make the streamed call of `request` within `timeout` seconds; return the whole answer."""
    idle = settings.AES_LLM_STREAM_IDLE_SECONDS
    body = {**request, "stream": True, "stream_options": {"include_usage": True}}
    chunks: queue.Queue[Any] = queue.Queue()
    held: dict[str, openai.Stream] = {}
    stop = threading.Event()

    def read() -> None:
        try:
            stream = client.post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=openai.Stream[ChatCompletionChunk],
                # The read timeout only ends this thread if nobody closes it.
                options={"timeout": httpx2.Timeout(timeout, read=idle + 1)},
            )
            held["stream"] = stream
            if stop.is_set():
                stream.close()  # given up on while it connected
                return
            for chunk in stream:
                chunks.put(chunk)
                if stop.is_set():
                    return
            chunks.put(_END)
        except Exception as exc:  # handed to the run's thread, which raises it
            chunks.put(exc)

    reader = threading.Thread(target=read, name="llm-stream", daemon=True)
    reader.start()
    answer = _Answer()
    try:
        _follow(chunks, answer, timeout, idle, check_cancelled, on_delta)
    finally:
        stop.set()
        stream = held.get("stream")
        if stream is not None:
            stream.close()
    return answer.completion()


def _follow(
    chunks: queue.Queue[Any],
    answer: _Answer,
    timeout: float,
    idle: float,
    check_cancelled: Callable[[], None],
    on_delta: Callable[[str], None],
) -> None:
    began = time.monotonic()
    deadline, heard, checked = began + timeout, began, began
    while True:
        now = time.monotonic()
        if now - checked >= CANCEL_POLL_SECONDS:
            check_cancelled()  # raises Cancelled
            checked = now
        if now >= deadline:
            raise ExecutionTimeout(
                f"the model server's streamed answer outlasted the run's {timeout:.0f} s left"
            )
        if now - heard >= idle:
            raise LLMError(f"the model server's stream was silent for {idle:g} s")
        wait = min(CANCEL_POLL_SECONDS - (now - checked), deadline - now, heard + idle - now)
        try:
            item = chunks.get(timeout=max(wait, 0.001))
        except queue.Empty:
            continue
        text: list[str] = []
        # Whatever else has arrived goes out with it, as one delta.
        while True:
            if item is _END:
                break
            if isinstance(item, Exception):
                if answer.started or not isinstance(item, openai.APIError):
                    # The tenant's line is the AES's own; the server's words are for operators.
                    error = LLMError("the model server's streamed answer broke off")
                    error.detail = str(item)[:DETAIL_CHARS]
                    raise error from None
                raise item
            text.append(answer.add(item))
            try:
                item = chunks.get_nowait()
            except queue.Empty:
                break
        heard = time.monotonic()
        if "".join(text):
            on_delta("".join(text))
        if item is _END:
            return


class _Answer:
    """The chunks of one streamed answer, put together."""

    def __init__(self) -> None:
        self.started = False
        self.meta: dict[str, Any] = {}
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: ChatCompletionChunk) -> str:
        """Take in one chunk; return the text it adds to the answer."""
        self.started = True
        self.meta = self.meta or {"id": chunk.id, "created": chunk.created, "model": chunk.model}
        if chunk.usage is not None:
            self.usage = chunk.usage.model_dump()
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        self.finish_reason = choice.finish_reason or self.finish_reason
        delta = choice.delta
        for fragment in delta.tool_calls or []:
            call = self.calls.setdefault(
                fragment.index, {"id": None, "name": "", "arguments": [], "type": "function"}
            )
            call["id"] = fragment.id or call["id"]
            if fragment.function is not None:
                call["name"] += fragment.function.name or ""
                call["arguments"].append(fragment.function.arguments or "")
        if delta.content:
            self.content.append(delta.content)
            return delta.content
        return ""

    def completion(self) -> ChatCompletion:
        tool_calls = [
            {
                "id": call["id"] or f"call_{index}",
                "type": "function",
                "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
            }
            for index, call in sorted(self.calls.items())
        ]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return ChatCompletion.model_validate(
            {
                "id": self.meta.get("id", ""),
                "object": "chat.completion",
                "created": self.meta.get("created", 0),
                "model": self.meta.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": self.finish_reason
                        or ("tool_calls" if tool_calls else "stop"),
                    }
                ],
                "usage": self.usage,
            }
        )
