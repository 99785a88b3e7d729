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
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from executions.agent import context
from executions.exceptions import Cancelled, ExecutionTimeout, MaxIterations, RunError
from executions.outcome import LoopResult

SUMMARY_CHARS = 200
# Seconds between two checks for cancellation while parallel tool calls run.
TOOLS_POLL_SECONDS = 1.0


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass
class Completion:
    """One model answer, reduced to what the loop needs."""

    content: str | None
    tool_calls: list[ToolCall]
    prompt_tokens: int = 0
    completion_tokens: int = 0


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


def replay(messages: list[dict[str, Any]], journal: list[Replayed]) -> LoopState:
    """Return the state a run reached after `messages` and the completed steps of `journal`."""
    state = LoopState(messages=list(messages), result=LoopResult())
    result = state.result
    for entry in journal:
        message = entry.replay["message"]
        state.messages.append(message)
        if entry.kind == "llm":
            result.iterations += 1
            result.prompt_tokens += entry.prompt_tokens
            result.completion_tokens += entry.completion_tokens
            if message.get("content"):
                result.response = message["content"]
            calls = message.get("tool_calls") or []
            state.pending = [
                ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls
            ]
            state.answered = not calls
        else:
            result.tool_calls.append(entry.replay["tool_call"])
            result.sources.extend(entry.replay.get("sources", []))
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
    clock: Callable[[], float] = time.monotonic
    # Tokens one request may hold (None: no limit), and the (start, end) of
    # the session's history in the messages run() is given: what may be
    # dropped first to fit (executions/agent/context.py).
    context_window: int | None = None
    history: tuple[int, int] = (0, 0)

    def run(self, messages: list[dict[str, Any]], journal: list[Replayed] = ()) -> LoopResult:
        """Return the model's final answer; raise MaxIterations or ExecutionTimeout.

        A resumed run passes the `journal` of the steps its earlier attempts
        completed: they are not made again, the loop goes on after them.
        Either error carries the partial result (steps already recorded, last
        assistant text, usage) in its `partial` attribute.
        """
        state = replay(messages, list(journal))
        result, messages = state.result, state.messages
        if state.answered:
            return result
        schemas = [tool.schema() for tool in self.tools.values()]
        try:
            if state.pending:
                messages.extend(self._call_tools(state.pending, result))
                messages = in_call_order(messages)
            while True:
                if result.iterations >= self.max_iterations:
                    raise MaxIterations(f"no final answer after {self.max_iterations} LLM calls")
                completion = self._call_model(messages, schemas, result)
                if completion.content:
                    result.response = completion.content
                if not completion.tool_calls:
                    return result
                messages.append(assistant_message(completion))
                messages.extend(self._call_tools(completion.tool_calls, result))
        except RunError as error:
            error.partial = result
            raise

    def _call_tokens(self, result: LoopResult) -> int | None:
        if self.max_run_tokens is None:
            return self.max_call_tokens
        left = self.max_run_tokens - result.usage["total_tokens"]
        if left <= 0:
            # No code names a spent token budget; it is a limit reached
            # without a final answer, like the iteration limit.
            raise MaxIterations(f"the run's token budget of {self.max_run_tokens} is spent")
        return left if self.max_call_tokens is None else min(left, self.max_call_tokens)

    def _remaining(self) -> float:
        self.check_cancelled()
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            raise ExecutionTimeout("the run's deadline passed")
        return remaining

    def _call_model(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]], result: LoopResult
    ) -> Completion:
        max_tokens = self._call_tokens(result)
        messages = self._fit(messages, schemas, max_tokens)
        began = self.clock()
        completion = self.complete(messages, schemas, self._remaining(), max_tokens)
        result.iterations += 1
        result.prompt_tokens += completion.prompt_tokens
        result.completion_tokens += completion.completion_tokens
        self.save_step(
            Step(
                kind="llm",
                name=f"llm_call_{result.iterations}",
                input={
                    "messages": len(messages),
                    "tools": [s["function"]["name"] for s in schemas],
                },
                output={
                    "content": completion.content,
                    "tool_calls": [
                        {"name": c.name, "arguments": c.arguments} for c in completion.tool_calls
                    ],
                },
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                duration_ms=_ms(self.clock() - began),
                replay={"message": assistant_message(completion)},
            )
        )
        return completion

    def _fit(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]], max_tokens: int | None
    ) -> list[dict[str, Any]]:
        """Return the messages of the next request, within the context window, noting any cut."""
        if self.context_window is None:
            return messages
        fitted, trimmed = context.fit(
            messages,
            schemas,
            context_window=self.context_window,
            reserve=max_tokens or 0,
            history=self.history,
        )
        if trimmed is not None:
            self.save_step(Step(kind="note", name="context_trimmed", output=trimmed.summary()))
        return fitted

    def _call_tools(self, calls: list[ToolCall], result: LoopResult) -> list[dict[str, Any]]:
        """Run the tool calls of one model answer at once; return their results in its order.

        Each call runs `_call_tool` in a thread of its own with a private
        result and step list; this thread records the steps as calls
        complete (the journal: a completed call is not made again on
        resume) and waits no longer than the run's deadline.
        """
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
            result.sources.extend(own.sources)
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
        try:
            arguments = json.loads(call.arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            arguments, error = {}, f"invalid arguments: {exc}"
        if error is None and tool is None:
            error = f"unknown tool {call.name!r}"
        content, sources = "", []
        if error is None:
            try:
                outcome = tool.call(arguments, self.deadline)
                content, sources = outcome.content, outcome.sources
                result.sources.extend(sources)
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


def assistant_message(completion: Completion) -> dict[str, Any]:
    """Return the model's answer as the assistant message the next request carries."""
    return {
        "role": "assistant",
        "content": completion.content,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ],
    }


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))
