"""The OpenAI-compatible Chat Completions client: retries, deadlines, cancellation.

A call that fails with 429, 5xx or a connection error is retried with
exponential backoff and jitter (honouring Retry-After) while the run's
deadline leaves room; then it is an LLM_ERROR. The HTTP call runs in a
helper thread so a cancelled run stops waiting at once, even on a hung LLM.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import openai
from django.conf import settings
from openai.types.chat import ChatCompletion

from executions.agent import streaming
from executions.agent.loop import Complete, Completion, ToolCall
from executions.exceptions import ExecutionTimeout, LLMError

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 8.0
# Seconds between two checks for cancellation while a call is in flight.
CANCEL_POLL_SECONDS = 1.0

# One thread per call in flight. A threaded worker has one call in flight per
# slot, plus calls abandoned by cancelled runs until their HTTP timeout ends
# them; threads are started only as needed.
_calls = ThreadPoolExecutor(max_workers=512, thread_name_prefix="llm")


def client() -> openai.OpenAI:
    """Return the process-wide client; its HTTP connections are reused across jobs."""
    return _client(settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY)


@functools.cache
def _client(base_url: str | None, api_key: str | None) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key or "not-set",
        # Explicit: given None, the client reads OPENAI_BASE_URL itself, and
        # an empty variable would become an empty URL.
        base_url=base_url or OPENAI_DEFAULT_BASE_URL,
        # Retries are the run's business: each must fit in the run's deadline.
        max_retries=0,
    )


def completer(
    *,
    model: str,
    temperature: float | None,
    check_cancelled: Callable[[], None] = lambda: None,
    on_delta: Callable[[str], None] | None = None,
) -> Complete:
    """Return the agent loop's `complete` function for one agent's settings.

    With `on_delta`, each call streams and hands it the text as it arrives
    (executions/agent/streaming.py).
    """

    def complete(
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout: float,
        max_tokens: int | None,
    ) -> Completion:
        request: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            request["tools"] = tools
        if temperature is not None:
            request["temperature"] = temperature
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        deadline = time.monotonic() + timeout
        for attempt in range(1, MAX_ATTEMPTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExecutionTimeout("the run's deadline passed during LLM retries")
            try:
                if on_delta is not None:
                    answer = streaming.call(client(), request, remaining, check_cancelled, on_delta)
                else:
                    answer = _call(request, remaining, check_cancelled)
                return _reduce(answer)
            except openai.APITimeoutError:
                raise ExecutionTimeout(f"the LLM did not answer within {remaining:.1f}s") from None
            except openai.APIStatusError as exc:
                problem = f"LLM answered HTTP {exc.status_code}: {exc.message}"
                if exc.status_code not in RETRY_STATUSES:
                    raise LLMError(problem) from None
                delay = _retry_after(exc) or _backoff(attempt)
            except openai.APIConnectionError as exc:
                problem, delay = f"LLM unreachable: {exc}", _backoff(attempt)
            if attempt == MAX_ATTEMPTS or time.monotonic() + delay >= deadline:
                raise LLMError(f"{problem} (after {attempt} attempts)")
            _sleep(delay, check_cancelled)
        raise AssertionError("unreachable")

    return complete


def _call(
    request: dict[str, Any], timeout: float, check_cancelled: Callable[[], None]
) -> ChatCompletion:
    # The client's documented `post`, not `chat.completions.create`: create()
    # first walks the request through the SDK's type-driven transform, about
    # 0.2 ms of CPU per message (8 ms for 40 messages of history, on every
    # iteration); our request is plain JSON already. Same transport, errors
    # and typed answer.
    future = _calls.submit(
        client().post,
        "/chat/completions",
        body=request,
        cast_to=ChatCompletion,
        options={"timeout": timeout},
    )
    while True:
        try:
            return future.result(timeout=CANCEL_POLL_SECONDS)
        except FutureTimeout:
            # Raises Cancelled: the call is abandoned, its thread ends at its timeout.
            check_cancelled()


def _sleep(seconds: float, check_cancelled: Callable[[], None]) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        check_cancelled()
        time.sleep(min(left, CANCEL_POLL_SECONDS))


def _backoff(attempt: int) -> float:
    """Full jitter: a random wait up to an exponentially growing cap."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def _reduce(answer: ChatCompletion) -> Completion:
    if not answer.choices:
        raise LLMError("LLM answered with no choices")
    message = answer.choices[0].message
    usage = answer.usage
    return Completion(
        content=message.content,
        tool_calls=[
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in (message.tool_calls or [])
            if call.type == "function"
        ],
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )
