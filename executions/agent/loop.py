"""The agent loop: call the model, run the tools it asks for, until it answers.

Plain Python with its I/O behind small interfaces (a `complete` function, the
tools, a step recorder, a clock), so its logic is tested without Django,
Redis or HTTP. The caller turns the raised RunErrors into final statuses.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from executions.agent import context
from executions.exceptions import (
    Cancelled,
    EmptyResponse,
    ExecutionTimeout,
    MaxIterations,
    RunError,
    TokenBudget,
)
from executions.outcome import LoopResult

SUMMARY_CHARS = 200
# Seconds between two checks for cancellation while parallel tool calls run.
TOOLS_POLL_SECONDS = 1.0
# A call that could write fewer tokens than this within the run's budget is
# not made: its answer would only be cut.
MIN_COMPLETION_TOKENS = 16
# Prompt tokens are estimated before a call (no tokenizer knows every
# model): the server's count for the last prompt, plus the messages added
# since as context.estimate counts them.
# An empty final answer is asked for once more, then the run fails.
EMPTY_ANSWERS_ALLOWED = 1


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass
class Attempt:
    """One failed try of an LLM call: its step shows it, the journal does not hold it."""

    number: int
    duration_ms: int
    error: str  # one short line written by the AES
    http_status: int | None = None
    detail: str | None = None  # the server's own answer, cut short, for operators
    timed_out: bool = False


@dataclass
class Completion:
    """One model answer, reduced to what the loop needs."""

    content: str | None
    tool_calls: list[ToolCall]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop", "length", "tool_calls", "content_filter"
    attempt: int = 1  # which try of the call this answer came from
    failed_attempts: list[Attempt] = field(default_factory=list)


@dataclass
class ToolResult:
    content: str
    sources: list[dict[str, Any]] = field(default_factory=list)


class Tool(Protocol):
    name: str

    def schema(self) -> dict[str, Any]:
        """Return the OpenAI `tools` entry describing this tool."""

    def call(self, arguments: dict[str, Any], deadline: float) -> ToolResult:
        """Run the tool; raise RunError subclasses for failures the model should see."""


@dataclass
class Step:
    kind: str  # "llm", "tool" or "note"
    name: str
    input: Any = None
    output: Any = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: int = 0
    # What a resumed attempt needs to go on from this step (§9): for an LLM
    # call its assistant message, for a tool call its result as the model saw it.
    replay: dict[str, Any] | None = None


@dataclass
class Replayed:
    """A step an earlier attempt completed, as its journal holds it."""

    kind: str  # "llm" or "tool"
    replay: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class LoopState:
    """Where a run stood after the steps of its journal: the loop goes on from here."""

    messages: list[dict[str, Any]]
    result: LoopResult
    # Tool calls of the last LLM answer that have no result yet.
    pending: list[ToolCall] = field(default_factory=list)
    # The last LLM answer asked for no tool: it is the run's final answer.
    answered: bool = False
    # Final answers that came back empty since the last one that was not.
    empty_answers: int = 0


def replay(messages: list[dict[str, Any]], journal: list[Replayed]) -> LoopState:
    """Return the state a run reached after `messages` and the completed steps of `journal`."""
    state = LoopState(messages=list(messages), result=LoopResult())
    result = state.result
    for entry in journal:
        # Journals written before assistant messages carried "" hold null:
        # replayed as "", which every server accepts.
        message = _sendable(entry.replay["message"])
        if entry.kind == "llm":
            result.iterations += 1
            result.prompt_tokens += entry.prompt_tokens
            result.completion_tokens += entry.completion_tokens
            calls = message.get("tool_calls") or []
            if not calls and not _has_text(message.get("content")):
                state.empty_answers += 1  # asked again: the empty answer is not in the prompt
                continue
            state.messages.append(message)
            if message.get("content"):
                result.response = message["content"]
            state.pending = [
                ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls
            ]
            state.answered = not calls
            if state.answered:
                result.stop_reason = entry.replay.get("stop_reason", "stop")
        else:
            state.messages.append(message)
            result.tool_calls.append(entry.replay["tool_call"])
            result.add_sources(entry.replay.get("sources", []))
            done = message.get("tool_call_id")
            state.pending = [call for call in state.pending if call.id != done]
    state.messages = in_call_order(state.messages)
    return state


def in_call_order(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return `messages` with each round's tool results in the order the model asked for them.

    Parallel calls are journaled as they complete; the model gets their
    results in its own order.
    """
    ordered: list[dict[str, Any]] = []
    order: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    for message in [*messages, {"role": "end"}]:
        if message.get("role") == "tool":
            results.append(message)
            continue
        ordered.extend(sorted(results, key=lambda m: order.get(m.get("tool_call_id"), len(order))))
        results = []
        if message.get("role") == "end":
            break
        ordered.append(message)
        calls = message.get("tool_calls") or []
        order = {call["id"]: index for index, call in enumerate(calls)}
    return ordered


# (messages, tool schemas, timeout seconds, max completion tokens) -> Completion
Complete = Callable[[list[dict[str, Any]], list[dict[str, Any]], float, int | None], Completion]


@dataclass
class AgentLoop:
    complete: Complete
    tools: dict[str, Tool]
    max_iterations: int
    deadline: float  # on `clock`
    save_step: Callable[[Step], None]
    max_call_tokens: int | None = None  # completion tokens one call may spend
    max_run_tokens: int | None = None  # prompt plus completion tokens for the run
    # Raises Cancelled when the run was cancelled; checked before every step.
    check_cancelled: Callable[[], None] = lambda: None
    # The block in which the run waits for its tools (executions/turns.py).
    waiting: Callable[[], AbstractContextManager[None]] = nullcontext
    clock: Callable[[], float] = time.monotonic
    # Tokens one request may hold (None: no limit), and the (start, end) of
    # the session's history in the messages run() is given: what may be
    # dropped first to fit (executions/agent/context.py).
    context_window: int | None = None
    history: tuple[int, int] = (0, 0)
    # (messages, prompt tokens) of the last call, as the server counted them.
    _last_prompt: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def run(self, messages: list[dict[str, Any]], journal: list[Replayed] = ()) -> LoopResult:
        """Return the model's final answer; raise a RunError (a limit, a failure).

        A resumed run passes the `journal` of the steps its earlier attempts
        completed: they are not made again, the loop goes on after them.
        The error carries the partial result (steps already recorded, last
        assistant text, usage) in its `partial` attribute. The result's
        `stop_reason` says why a completed run stopped.
        """
        state = replay(messages, list(journal))
        result, messages = state.result, state.messages
        if state.answered:
            return result
        self._last_prompt = None
        schemas = [tool.schema() for tool in self.tools.values()]
        pending = state.pending
        empty_answers = state.empty_answers
        try:
            while True:
                if pending:
                    # Tools asked for on the last call the limits allow are
                    # not run: no call would read their results.
                    self._check_room_for_another_call(messages, schemas, result)
                    messages.extend(self._call_tools(pending, result))
                    # A resumed run's journal holds the calls as they completed.
                    messages = in_call_order(messages)
                if result.iterations >= self.max_iterations:
                    raise MaxIterations(f"no final answer after {self.max_iterations} LLM calls")
                completion, budget_bound = self._call_model(messages, schemas, result)
                if _has_text(completion.content):
                    result.response = completion.content
                pending = completion.tool_calls
                if pending:
                    messages.append(assistant_message(completion))
                elif _has_text(completion.content):
                    result.stop_reason = _stop_reason(completion, budget_bound)
                    return result
                else:
                    empty_answers += 1
                    _check_empty(completion, empty_answers)
        except RunError as error:
            error.partial = result
            raise

    def _check_room_for_another_call(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]], result: LoopResult
    ) -> None:
        if result.iterations >= self.max_iterations:
            raise MaxIterations(
                f"no final answer after {self.max_iterations} LLM calls; "
                "the tools asked for last were not run"
            )
        self._call_tokens(self._fitted(messages, schemas)[0], schemas, result)

    def _call_tokens(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]], result: LoopResult
    ) -> tuple[int | None, bool]:
        """Return the completion tokens the next call may spend, and whether the budget bounds it.

        Raises TokenBudget when the prompt alone would leave the call no room.
        """
        if self.max_run_tokens is None:
            return self.max_call_tokens, False
        left = self.max_run_tokens - result.usage["total_tokens"]
        room = left - self._prompt_tokens(messages, schemas)
        if room < MIN_COMPLETION_TOKENS:
            raise TokenBudget(
                f"the run's token budget of {self.max_run_tokens} leaves no room for another call"
            )
        if self.max_call_tokens is not None and self.max_call_tokens <= room:
            return self.max_call_tokens, False
        return room, True

    def _prompt_tokens(self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]) -> int:
        """Estimate a request's prompt tokens: the server's last count plus what was added since."""
        if self._last_prompt is not None and len(messages) >= self._last_prompt[0]:
            counted, tokens = self._last_prompt
            return tokens + context.estimate(messages[counted:])
        return context.estimate(messages, schemas)

    def _calibrate(self, messages: list[dict[str, Any]], prompt_tokens: int) -> None:
        if prompt_tokens > 0:
            self._last_prompt = (len(messages), prompt_tokens)

    def _remaining(self) -> float:
        self.check_cancelled()
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            raise ExecutionTimeout("the run's deadline passed")
        return remaining

    def _call_model(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]], result: LoopResult
    ) -> tuple[Completion, bool]:
        """Make one LLM call; return its answer and whether the token budget bounded it.

        Each failed try of the call is a step too, outside the journal: a
        resumed run neither replays nor counts it. The request holds
        `messages` as they fit the context window.
        """
        messages = self._fit(messages, schemas)
        max_tokens, budget_bound = self._call_tokens(messages, schemas, result)
        began = self.clock()
        name = f"llm_call_{result.iterations + 1}"
        shown = {"messages": len(messages), "tools": [s["function"]["name"] for s in schemas]}
        try:
            completion = self.complete(messages, schemas, self._remaining(), max_tokens)
        except RunError as error:
            self._save_attempts(name, shown, error.attempts)
            raise
        self._save_attempts(name, shown, completion.failed_attempts)
        self._calibrate(messages, completion.prompt_tokens)
        result.iterations += 1
        result.prompt_tokens += completion.prompt_tokens
        result.completion_tokens += completion.completion_tokens
        failed_ms = sum(attempt.duration_ms for attempt in completion.failed_attempts)
        replayed: dict[str, Any] = {"message": assistant_message(completion)}
        if not completion.tool_calls:
            replayed["stop_reason"] = _stop_reason(completion, budget_bound)
        self.save_step(
            Step(
                kind="llm",
                name=name,
                input={**shown, "attempt": completion.attempt},
                output={
                    "content": completion.content,
                    "tool_calls": [
                        {"name": c.name, "arguments": c.arguments} for c in completion.tool_calls
                    ],
                    "finish_reason": completion.finish_reason,
                },
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                duration_ms=max(0, _ms(self.clock() - began) - failed_ms),
                replay=replayed,
            )
        )
        return completion, budget_bound

    def _save_attempts(self, name: str, shown: dict[str, Any], attempts: list[Attempt]) -> None:
        for attempt in attempts:
            self.save_step(
                Step(
                    kind="llm",
                    name=name,
                    input={**shown, "attempt": attempt.number},
                    output={
                        "http_status": attempt.http_status,
                        "detail": attempt.detail,
                        "timed_out": attempt.timed_out,
                    },
                    error=attempt.error,
                    duration_ms=attempt.duration_ms,
                )
            )

    def _fit(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Return the messages of the next request, within the context window, noting any cut."""
        fitted, trimmed = self._fitted(messages, schemas)
        if trimmed is not None:
            self.save_step(Step(kind="note", name="context_trimmed", output=trimmed.summary()))
        return fitted

    def _fitted(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], context.Trimmed | None]:
        if self.context_window is None:
            return messages, None
        # The answer's room: the call's own cap (the run's budget is
        # reckoned on the fitted request after).
        return context.fit(
            messages,
            schemas,
            context_window=self.context_window,
            reserve=self.max_call_tokens or 0,
            history=self.history,
        )

    def _call_tools(self, calls: list[ToolCall], result: LoopResult) -> list[dict[str, Any]]:
        """Run the tool calls of one model answer at once; return their results in its order.

        Each call runs `_call_tool` in a thread of its own with a private
        result and step list; this thread records the steps as calls
        complete (the journal: a completed call is not made again on
        resume) and waits no longer than the run's deadline. The run gives
        its turn back meanwhile (`waiting`): tools wait on servers of their own.
        """
        with self.waiting():
            if len(calls) <= 1:
                return [self._call_tool(call, result) for call in calls]
            self._remaining()
            done: queue.Queue[tuple[int, dict[str, Any] | None, LoopResult, list[Step], Any]]
            done = queue.Queue()

            def run_one(index: int, call: ToolCall) -> None:
                own, steps = LoopResult(), []
                try:
                    message = replace(self, save_step=steps.append)._call_tool(call, own)
                    done.put((index, message, own, steps, None))
                except BaseException as exc:  # handed to the loop's thread, raised there
                    done.put((index, None, own, steps, exc))

            for index, call in enumerate(calls):
                name = f"tool-{call.name}"[:60]
                threading.Thread(target=run_one, args=(index, call), name=name, daemon=True).start()
            messages: list[dict[str, Any] | None] = [None] * len(calls)
            for _ in calls:
                index, message, own, steps, error = self._next_done(done)
                for step in steps:
                    self.save_step(step)
                result.tool_calls.extend(own.tool_calls)
                result.add_sources(own.sources)
                if error is not None:
                    raise error
                messages[index] = message
            return [m for m in messages if m is not None]

    def _next_done(self, done: queue.Queue) -> Any:
        while True:
            try:
                return done.get(timeout=min(TOOLS_POLL_SECONDS, self._remaining()))
            except queue.Empty:
                continue

    def _call_tool(self, call: ToolCall, result: LoopResult) -> dict[str, Any]:
        self._remaining()
        began = self.clock()
        error: str | None = None
        tool = self.tools.get(call.name)
        arguments: dict[str, Any] | str
        try:
            arguments = parse_arguments(call.arguments)
        except ValueError as exc:
            # Kept as the model wrote them: the steps show what it sent.
            arguments, error = call.arguments, f"invalid arguments: {exc}"
        if error is None and tool is None:
            error = f"unknown tool {call.name!r}"
        content, sources = "", []
        if error is None:
            try:
                outcome = tool.call(arguments, self.deadline)
                content, sources = outcome.content, outcome.sources
                result.add_sources(sources)
            except (ExecutionTimeout, Cancelled):
                raise
            except RunError as exc:
                # The model sees the failure as the tool's result and may recover.
                error = f"{exc.code}: {exc.message}"
        if error is not None:
            content = json.dumps({"error": error})
        duration = _ms(self.clock() - began)
        summary = content[:SUMMARY_CHARS]
        made = {
            "name": call.name,
            "arguments": arguments,
            "result_summary": summary,
            "duration_ms": duration,
        }
        result.tool_calls.append(made)
        message = {"role": "tool", "tool_call_id": call.id, "content": content}
        self.save_step(
            Step(
                kind="tool",
                name=call.name,
                input=arguments,
                output={"summary": summary},
                error=error,
                duration_ms=duration,
                replay={"message": message, "tool_call": made, "sources": sources},
            )
        )
        return message


def parse_arguments(text: str | None) -> dict[str, Any]:
    """Return a tool call's arguments as a dict; raise ValueError when they are not a JSON object.

    Tolerant as `strict=False` is: raw control characters (a newline, a
    tab) inside strings, which small models write, are accepted.
    """
    arguments = json.loads(text or "{}", strict=False)
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be a JSON object")
    return arguments


def assistant_message(completion: Completion) -> dict[str, Any]:
    """Return the model's answer as the assistant message the next request carries."""
    return _sendable(
        {
            "role": "assistant",
            "content": completion.content,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in completion.tool_calls
            ],
        }
    )


def _sendable(message: dict[str, Any]) -> dict[str, Any]:
    """Return an assistant message as every OpenAI-compatible server accepts it.

    `content` is "" rather than null (llama-cpp-python's templates fail on
    null with HTTP 500), and an empty `tool_calls` is left out (OpenAI
    refuses an empty array).
    """
    if message.get("role") != "assistant":
        return message
    sendable = {**message, "content": message.get("content") or ""}
    if not sendable.get("tool_calls"):
        sendable.pop("tool_calls", None)
    return sendable


def _has_text(content: str | None) -> bool:
    return bool(content and content.strip())


def _stop_reason(completion: Completion, budget_bound: bool) -> str:
    if completion.finish_reason == "length":
        # Cut at the call's max_tokens: the run's budget's doing, or the agent's limit.
        return "token_budget" if budget_bound else "length"
    if completion.finish_reason == "content_filter":
        return "content_filter"
    return "stop"


def _check_empty(completion: Completion, empty_answers: int) -> None:
    """Raise EmptyResponse for an answer with no text that is not to be asked for again."""
    reason = _stop_reason(completion, budget_bound=False)
    if reason == "stop" and empty_answers <= EMPTY_ANSWERS_ALLOWED:
        return  # asked for once more
    error = EmptyResponse(
        {
            "length": "the model's answer was cut at its token limit before any text",
            "content_filter": "the model server withheld the answer (content filter)",
        }.get(reason, "the model answered with no text")
    )
    error.stop_reason = "error" if reason == "stop" else reason
    raise error


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))
