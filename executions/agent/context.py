"""Keep each model request within the agent's context window.

Plain Python, no Django: `fit` takes the run's messages and returns the ones
to send, the loop's own list left as it is. Tokens are estimated, not
counted (no tokenizer: each model family has its own, and the well-kept
ones fetch their vocabularies from the network at run time): a character of
a message's JSON counts a third of a token, which overestimates English and
JSON (about four characters a token with OpenAI's and Llama's tokenizers)
and so errs on the side of a request that fits; each message (and tool
schema) adds a few tokens for the chat template's markers. The loop's token
budget counts with the same `estimate`.

What goes, in this order, until the estimate fits:

1. the oldest messages of the session's history, one by one;
2. the oldest completed rounds of this run (an assistant message with its
   tool calls and their results, together: a result without its call is an
   invalid request);
3. the end of the longest tool results, each cut to no less than
   `MIN_TOOL_RESULT_CHARS` and marked as cut.

The system prompt, the request's own user messages and the last round are
never dropped. A request that still does not fit is sent as it is, and the
model's error ends the run as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
# A cut tool result keeps at least this many characters.
MIN_TOOL_RESULT_CHARS = 1000
CUT_MARK = "\n[cut to fit the context window: {kept} of {total} characters kept]"


def estimate(messages: list[dict[str, Any]], tools: list[dict[str, Any]] = ()) -> int:
    """Return the estimated prompt tokens of a request with `messages` and `tools`."""
    return sum(_tokens(item) for item in (*messages, *tools))


def _tokens(item: dict[str, Any]) -> int:
    return len(json.dumps(item)) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE


@dataclass
class Trimmed:
    """What `fit` left out of one request, for the run's note step."""

    context_window: int
    estimated_tokens: int  # before
    fitted_tokens: int  # after
    history_dropped: int = 0
    rounds_dropped: int = 0
    tool_results_cut: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "context_window": self.context_window,
            "estimated_tokens": self.estimated_tokens,
            "fitted_tokens": self.fitted_tokens,
            "history_dropped": self.history_dropped,
            "rounds_dropped": self.rounds_dropped,
            "tool_results_cut": self.tool_results_cut,
        }


def fit(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    *,
    context_window: int,
    reserve: int,
    history: tuple[int, int],
) -> tuple[list[dict[str, Any]], Trimmed | None]:
    """Return the messages to send within `context_window`, and what was left out (None: nothing).

    `reserve` is the tokens kept for the answer (the call's max_tokens);
    `history` is the (start, end) span of `messages` that holds the
    session's history; the request's own messages follow it, then this
    run's rounds.
    """
    budget = context_window - reserve
    costs = {id(m): _tokens(m) for m in messages}
    size = before = sum(costs.values()) + estimate([], tools)
    if before <= budget:
        return messages, None
    start, end = history
    head, past, turn = messages[:start], messages[start:end], messages[end:]
    prompt, rounds = _rounds(turn)
    trimmed = Trimmed(context_window, before, before)
    while past and size > budget:
        size -= costs[id(past.pop(0))]
        trimmed.history_dropped += 1
    while len(rounds) > 1 and size > budget:
        size -= sum(costs[id(m)] for m in rounds.pop(0))
        trimmed.rounds_dropped += 1
    fitted = [*head, *past, *prompt, *(m for r in rounds for m in r)]
    trimmed.tool_results_cut = _cut_tool_results(fitted, tools, budget)
    trimmed.fitted_tokens = estimate(fitted, tools)
    return fitted, trimmed


def _rounds(turn: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Split the request's messages from this run's rounds (assistant, then its tool results)."""
    prompt: list[dict[str, Any]] = []
    rounds: list[list[dict[str, Any]]] = []
    for message in turn:
        if message.get("role") == "assistant":
            rounds.append([message])
        elif rounds:
            rounds[-1].append(message)
        else:
            prompt.append(message)
    return prompt, rounds


def _cut_tool_results(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], budget: int
) -> int:
    """Cut the longest tool results in place until the request fits; return how many were cut."""
    cut = 0
    over = (estimate(messages, tools) - budget) * CHARS_PER_TOKEN
    by_length = sorted(
        (i for i, m in enumerate(messages) if m.get("role") == "tool"),
        key=lambda i: -len(messages[i].get("content") or ""),
    )
    for index in by_length:
        if over <= 0:
            break
        content = messages[index].get("content") or ""
        keep = max(MIN_TOOL_RESULT_CHARS, len(content) - over - len(CUT_MARK) - 20)
        if keep >= len(content):
            continue
        mark = CUT_MARK.format(kept=keep, total=len(content))
        messages[index] = {**messages[index], "content": content[:keep] + mark}
        over -= len(content) - keep - len(mark)
        cut += 1
    return cut
