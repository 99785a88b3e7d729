"""The OpenAI-compatible Chat Completions client, one per process."""

from __future__ import annotations

import functools
from typing import Any

import openai
from django.conf import settings

from executions.agent_loop import Complete, Completion, ToolCall
from executions.exceptions import ExecutionTimeout, LLMError


def client() -> openai.OpenAI:
    """Return the process-wide client; its HTTP connections are reused across jobs."""
    return _client(settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY)


@functools.cache
def _client(base_url: str | None, api_key: str | None) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key or "not-set",
        base_url=base_url,
        # Retries are the run's business: each must fit in the run's deadline.
        max_retries=0,
    )


def completer(*, model: str, temperature: float | None) -> Complete:
    """Return the agent loop's `complete` function for one agent's settings."""

    def complete(
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout: float,
        max_tokens: int | None,
    ) -> Completion:
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "timeout": timeout}
        if tools:
            kwargs["tools"] = tools
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        try:
            answer = client().chat.completions.create(**kwargs)
        except openai.APITimeoutError:
            raise ExecutionTimeout(f"the LLM did not answer within {timeout:.1f}s") from None
        except openai.APIStatusError as exc:
            raise LLMError(f"LLM answered HTTP {exc.status_code}: {exc.message}") from None
        except openai.APIError as exc:
            raise LLMError(f"LLM call failed: {exc}") from None
        return _reduce(answer)

    return complete


def _reduce(answer: Any) -> Completion:
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
