"""The OpenAI-compatible Chat Completions client: request shape, retries, timeouts, cancellation.

Requests are shaped so that every OpenAI-compatible server accepts them
(`tool_choice` with tools, optional parameters only when set). A call is
retried only when another try can succeed: 408, 409, 429, 502, 503, 504
and lost connections with exponential backoff and jitter (honouring
Retry-After), a 500 or a call that timed out once more, any other status
never; all within the run's deadline. Each try waits at most
AES_LLM_CALL_TIMEOUT_SECONDS. Failed tries come back as `Attempt`s, which
the loop records as steps; the error a tenant reads is one short line
written here, the server's own text stays in the steps. The run's own
thread waits for the answer, and its cancel check runs between the reads of
it (executions/agent/llm_transport.py), so a cancelled run stops waiting
within a second, even on a hung LLM.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import openai
from django.conf import settings
from openai.types.chat import ChatCompletion

from executions.agent import llm_transport, streaming
from executions.agent.loop import Attempt, Complete, Completion, ToolCall
from executions.exceptions import ExecutionTimeout, LLMError, RunError

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Statuses another try may cure: the server was busy, overloaded or between deploys.
RETRY_STATUSES = frozenset({408, 409, 429, 502, 503, 504})
# A 500 is as often a request the server can never serve (llama-cpp-python
# answers 500 to messages its template cannot render): one more try only.
# A call that timed out is tried once more too: a hung server rarely recovers.
RETRY_ONCE_STATUSES = frozenset({500})
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 8.0
# Characters of a server's error answer kept in the step, for operators.
DETAIL_CHARS = 500
# Seconds between two checks for cancellation while a backoff sleeps.
CANCEL_POLL_SECONDS = 1.0


def client() -> openai.OpenAI:
    """Return this thread's client of the default provider (see `_client`)."""
    return _client(settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY)


def _client(base_url: str | None, api_key: str | None) -> openai.OpenAI:
    """Return this thread's client for the provider; its connection is reused across jobs.

    One per thread, not per process: a threaded worker's runs each wait on
    their own call, and httpcore looks at every connection of a pool on each
    request and each answer, so one pool shared by hundreds of slots costs
    every call a pass over hundreds of connections. A thread runs one call
    at a time: its pool keeps the one connection alive for its next run.
    """
    clients = _local.__dict__.setdefault("clients", {})
    key = (base_url, api_key)
    if key not in clients:
        clients[key] = openai.OpenAI(
            api_key=api_key or "not-set",
            # Explicit: given None, the client reads OPENAI_BASE_URL itself,
            # and an empty variable would become an empty URL.
            base_url=base_url or OPENAI_DEFAULT_BASE_URL,
            # Retries are the run's business: each must fit in the run's deadline.
            max_retries=0,
            http_client=llm_transport.http_client(),
        )
    return clients[key]


_local = threading.local()


def completer(
    *,
    model: str,
    temperature: float | None,
    check_cancelled: Callable[[], None] = lambda: None,
    base_url: str | None = None,
    api_key: str | None = None,
    on_delta: Callable[[str], None] | None = None,
) -> Complete:
    """Return the agent loop's `complete` function for one agent's settings.

    `model` is the id the provider is sent, at `base_url` with `api_key`
    (llm_models.lookup.Route); without them, the default provider. With
    `on_delta`, each call streams and hands it the text as it arrives
    (executions/agent/streaming.py).
    """
    connection = _client(base_url, api_key) if base_url or api_key else client()

    def complete(
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout: float,
        max_tokens: int | None,
    ) -> Completion:
        request = build_request(model, messages, tools, temperature, max_tokens)
        failed: list[Attempt] = []
        try:
            return _complete(
                connection, request, time.monotonic() + timeout, failed, check_cancelled, on_delta
            )
        except RunError as error:
            error.attempts = failed
            raise

    return complete


def build_request(
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    temperature: float | None,
    max_tokens: int | None,
) -> dict[str, Any]:
    """Return a Chat Completions request body; what is not set is left out, not sent as null."""
    request: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        request["tools"] = tools
        # OpenAI's default, said out loud: servers that pick a chat format by
        # it (llama-cpp-python's function calling) drop the tools without it.
        request["tool_choice"] = "auto"
    if temperature is not None:
        request["temperature"] = temperature
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    return request


def _complete(
    connection: openai.OpenAI,
    request: dict[str, Any],
    deadline: float,
    failed: list[Attempt],
    check_cancelled: Callable[[], None],
    on_delta: Callable[[str], None] | None = None,
) -> Completion:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ExecutionTimeout("the run's deadline passed while the model server was retried")
        call_timeout = min(settings.AES_LLM_CALL_TIMEOUT_SECONDS, remaining)
        began = time.monotonic()
        delay = _backoff(attempt)
        try:
            if on_delta is None:
                answer = _call(connection, request, call_timeout, check_cancelled)
            else:
                # Bounded by the run's deadline and the silence between chunks: a
                # long answer that keeps coming is not a hung call.
                answer = streaming.call(connection, request, remaining, check_cancelled, on_delta)
        except LLMError as exc:
            # A streamed answer that broke off or fell silent: not tried again.
            detail = getattr(exc, "detail", None)
            failed.append(Attempt(attempt, _ms_since(began), exc.message, detail=detail))
            raise
        except openai.APITimeoutError:
            if call_timeout >= remaining:
                raise ExecutionTimeout(
                    f"the model server did not answer within the run's {remaining:.0f} s left"
                ) from None
            failure = Attempt(
                attempt,
                _ms_since(began),
                f"the model server did not answer within {call_timeout:g} s",
                timed_out=True,
            )
            retry = not any(f.timed_out for f in failed)
        except openai.APIStatusError as exc:
            status = exc.status_code
            failure = Attempt(
                attempt,
                _ms_since(began),
                f"the model server refused the request (HTTP {status})",
                http_status=status,
                detail=_cut(exc.response.text),
            )
            earlier = [f for f in failed if f.http_status == status]
            retry = status in RETRY_STATUSES or (status in RETRY_ONCE_STATUSES and not earlier)
            delay = _retry_after(exc) or delay
        except openai.APIConnectionError as exc:
            failure = Attempt(
                attempt,
                _ms_since(began),
                "the model server could not be reached",
                detail=_cut(str(exc.__cause__ or exc)),
            )
            retry = True
        else:
            if not answer.choices:
                failed.append(
                    Attempt(
                        attempt, _ms_since(began), "the model server answered with no choices", 200
                    )
                )
                raise LLMError("the model server answered with no choices")
            return _reduce(answer, attempt, failed)
        failed.append(failure)
        if not retry or attempt == MAX_ATTEMPTS or time.monotonic() + delay >= deadline:
            raise LLMError(_final_message(failure))
        _sleep(delay, check_cancelled)
    raise AssertionError("unreachable")


def _call(
    connection: openai.OpenAI,
    request: dict[str, Any],
    timeout: float,
    check_cancelled: Callable[[], None],
) -> ChatCompletion:
    # The client's documented `post`, not `chat.completions.create`: create()
    # first walks the request through the SDK's type-driven transform, about
    # 0.2 ms of CPU per message (8 ms for 40 messages of history, on every
    # iteration); our request is plain JSON already. Same transport, errors
    # and typed answer.
    # Each read of the answer waits at most the HTTP timeout; `watching`
    # bounds the whole try too, however slowly a server trickles its answer,
    # and raises Cancelled between reads.
    with llm_transport.watching(check_cancelled, time.monotonic() + timeout):
        return connection.post(
            "/chat/completions",
            body=request,
            cast_to=ChatCompletion,
            options={"timeout": timeout},
        )


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


def _reduce(answer: ChatCompletion, attempt: int, failed: list[Attempt]) -> Completion:
    choice = answer.choices[0]
    message, usage = choice.message, answer.usage
    return Completion(
        content=message.content,
        tool_calls=[
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in (message.tool_calls or [])
            if call.type == "function"
        ],
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        finish_reason=choice.finish_reason,
        attempt=attempt,
        failed_attempts=list(failed),
    )


def _final_message(failure: Attempt) -> str:
    """Return the tenant's one line: the last failure, and how many tries it took."""
    if failure.number == 1:
        return failure.error
    if failure.error.endswith(")"):
        return f"{failure.error[:-1]}, {failure.number} attempts)"
    return f"{failure.error} ({failure.number} attempts)"


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "…"


def _ms_since(began: float) -> int:
    return max(0, int((time.monotonic() - began) * 1000))
