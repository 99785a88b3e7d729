"""Fitting a request in the context window, and parallel tool calls in the loop: plain Python."""

from __future__ import annotations

import json
import threading

import pytest

from executions.agent import context
from executions.agent.loop import (
    AgentLoop,
    Completion,
    Replayed,
    ToolCall,
    ToolResult,
    assistant_message,
)

pytestmark = pytest.mark.django_free

SYSTEM = {"role": "system", "content": "You are terse."}
QUESTION = {"role": "user", "content": "What now?"}


def history(count: int, chars: int = 300) -> list[dict]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"h{i} " + "z" * chars}
        for i in range(count)
    ]


def round_of(call_id: str, result: str) -> list[dict]:
    call = {"id": call_id, "type": "function", "function": {"name": "t", "arguments": "{}"}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


def test_a_request_that_fits_is_sent_as_it_is():
    messages = [SYSTEM, *history(4), QUESTION]
    fitted, trimmed = context.fit(messages, [], context_window=10_000, reserve=500, history=(1, 5))
    assert fitted == messages
    assert trimmed is None


def test_the_oldest_history_goes_first_and_the_prompt_stays():
    messages = [SYSTEM, *history(20), QUESTION]
    fitted, trimmed = context.fit(messages, [], context_window=1000, reserve=200, history=(1, 21))
    assert fitted[0] == SYSTEM and fitted[-1] == QUESTION
    kept = fitted[1:-1]
    assert kept == messages[21 - len(kept) : 21]  # the newest ones
    assert context.estimate(fitted) <= 800
    assert trimmed.history_dropped == 20 - len(kept)
    assert trimmed.estimated_tokens > 1000 >= trimmed.fitted_tokens


def test_old_rounds_go_whole_and_the_last_round_stays():
    rounds = round_of("c1", "a" * 3000) + round_of("c2", "b" * 3000) + round_of("c3", "ok")
    messages = [SYSTEM, QUESTION, *rounds]
    fitted, trimmed = context.fit(messages, [], context_window=1000, reserve=100, history=(1, 1))
    assert fitted == [SYSTEM, QUESTION, *round_of("c3", "ok")]
    assert trimmed.rounds_dropped == 2


def test_a_long_tool_result_of_the_last_round_is_cut_and_marked():
    messages = [SYSTEM, QUESTION, *round_of("c1", "r" * 30_000)]
    fitted, trimmed = context.fit(messages, [], context_window=3000, reserve=200, history=(1, 1))
    content = fitted[-1]["content"]
    assert content.startswith("r" * 1000)
    assert "[cut to fit the context window:" in content
    assert len(content) < 30_000
    assert trimmed.tool_results_cut == 1
    assert context.estimate(fitted) <= 2800
    # The loop's own messages are left as they were.
    assert len(messages[-1]["content"]) == 30_000


def test_the_tool_schemas_count_too():
    tools = [{"type": "function", "function": {"name": "t", "description": "d" * 6000}}]
    messages = [SYSTEM, *history(10), QUESTION]
    _, trimmed = context.fit(messages, tools, context_window=3000, reserve=0, history=(1, 11))
    assert trimmed is not None and trimmed.history_dropped > 0


# --- Parallel tool calls in the loop -------------------------------------------------


class Gate:
    """A tool whose calls wait until `expected` of them are in flight at once."""

    def __init__(self, expected: int) -> None:
        self.name = "gate"
        self.barrier = threading.Barrier(expected, timeout=10)
        self.calls: list[str] = []

    def schema(self):
        return {"type": "function", "function": {"name": self.name, "parameters": {}}}

    def call(self, arguments, deadline):
        self.calls.append(arguments["n"])
        self.barrier.wait()  # breaks (and fails the test) unless the calls overlap
        return ToolResult(content=f"result {arguments['n']}")


def calls(*ns: int) -> list[ToolCall]:
    return [ToolCall(id=f"call_{n}", name="gate", arguments=json.dumps({"n": n})) for n in ns]


class Model:
    def __init__(self, *answers: Completion) -> None:
        self.answers = list(answers)
        self.requests: list[list[dict]] = []

    def __call__(self, messages, tools, timeout, max_tokens):
        self.requests.append(list(messages))
        return self.answers.pop(0)


def loop_with(model, tool, steps) -> AgentLoop:
    return AgentLoop(
        complete=model,
        tools={tool.name: tool},
        max_iterations=5,
        deadline=1e12,
        save_step=steps.append,
    )


def test_the_calls_of_one_answer_run_together_and_come_back_in_its_order():
    model = Model(Completion(None, calls(1, 2, 3)), Completion("done", []))
    steps: list = []
    tool = Gate(expected=3)
    result = loop_with(model, tool, steps).run([QUESTION])
    assert result.response == "done"
    results = model.requests[1][-3:]
    assert [m["tool_call_id"] for m in results] == ["call_1", "call_2", "call_3"]
    assert [m["content"] for m in results] == ["result 1", "result 2", "result 3"]
    assert sorted(s.name for s in steps if s.kind == "tool") == ["gate"] * 3
    assert len(result.tool_calls) == 3


def test_a_resumed_run_makes_only_the_calls_of_its_answer_that_had_not_completed():
    first = Completion(None, calls(1, 2))
    steps: list = []
    journal = [
        Replayed("llm", {"message": assistant_message(first)}, 5, 5),
        # call 2 completed before the worker was lost; call 1 had not.
        Replayed(
            "tool",
            {
                "message": {"role": "tool", "tool_call_id": "call_2", "content": "result 2"},
                "tool_call": {"name": "gate", "arguments": {"n": 2}},
            },
        ),
    ]
    model = Model(Completion("done", []))
    tool = Gate(expected=1)
    result = loop_with(model, tool, steps).run([QUESTION], journal)
    assert tool.calls == [1]
    results = model.requests[0][-2:]
    assert [m["tool_call_id"] for m in results] == ["call_1", "call_2"]
    assert result.iterations == 2
