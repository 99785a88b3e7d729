"""An agent's model, resolved through the model table: its client, its limits, its prices.

The table and its windows are llm_models'; here they become the agent loop's
`complete` function and the run's errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from executions.agent import llm
from executions.agent.loop import Complete, Completion, Step
from executions.exceptions import LLMError, ModelRateLimited
from llm_models import limits, lookup
from llm_models.lookup import Route
from protocol.messages import AgentConfig


def route(agent: AgentConfig) -> Route:
    """Return where the agent's model calls go; raise LLMError when its key is missing."""
    try:
        return lookup.resolve(agent.model)
    except lookup.Unconfigured as exc:
        raise LLMError(str(exc)) from None


def fallback_note(agent: AgentConfig, model: Route) -> Step | None:
    """Return a note saying the agent's model is not in the table, when it is not."""
    if not agent.model or agent.model == model.name:
        return None
    return Step(
        kind="note",
        name="model_fallback",
        output={"asked": agent.model, "used": model.name, "reason": "not in the model table"},
    )


def completer(
    agent: AgentConfig,
    model: Route,
    check_cancelled: Callable[[], None] = lambda: None,
    on_delta: Callable[[str], None] | None = None,
) -> Complete:
    """Return the loop's `complete` for the agent on `model`, within the model's limits.

    With `on_delta`, calls stream their answer to it as it comes (llm.completer).
    """
    complete = llm.completer(
        model=model.model,
        temperature=agent.temperature,
        check_cancelled=check_cancelled,
        base_url=model.base_url,
        api_key=model.api_key,
        on_delta=on_delta,
    )
    if not limits.limited(model):
        return complete

    def within_limits(
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        timeout: float,
        max_tokens: int | None,
    ) -> Completion:
        began = time.monotonic()
        estimate = limits.estimate_tokens(messages, tools, max_tokens)
        try:
            call = limits.acquire(model, estimate, began + timeout, check_cancelled)
        except limits.OverLimit as exc:
            raise ModelRateLimited(str(exc)) from None
        # The wait came out of the call's time.
        completion = complete(messages, tools, timeout - (time.monotonic() - began), max_tokens)
        limits.settle(model, call, completion.prompt_tokens + completion.completion_tokens)
        return completion

    return within_limits
