"""The agent loop's own logic, as plain Python: no database, Redis or HTTP."""

from __future__ import annotations

import json

import pytest

from executions.agent.loop import AgentLoop, Completion, ToolCall, ToolResult
from executions.exceptions import ExecutionTimeout, MaxIterations, UpstreamError

pytestmark = pytest.mark.django_free


class ScriptedModel:
    def __init__(self, *answers: Completion) -> None:
        self.answers = list(answers)
        self.calls: list[list[dict]] = []
        self.max_tokens: list[int | None] = []

    def __call__(self, messages, tools, timeout, max_tokens) -> Completion:
        self.calls.append(list(messages))
        self.max_tokens.append(max_tokens)
        return self.answers.pop(0)


class EchoTool:
    name = "knowledge_search"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def schema(self):
        return {"type": "function", "function": {"name": self.name, "parameters": {}}}

    def call(self, arguments, deadline):
        if self.fail:
            raise UpstreamError("query service unavailable")
        return ToolResult(
            content=f"found: {arguments['query']}",
            sources=[{"document_id": "d1", "content": "x", "score": 0.9, "metadata": {}}],
        )


def answer(text: str, tokens: int = 10) -> Completion:
    return Completion(content=text, tool_calls=[], prompt_tokens=tokens, completion_tokens=tokens)


def tool_call(query: str) -> Completion:
    call = ToolCall(id="call_1", name="knowledge_search", arguments=json.dumps({"query": query}))
    return Completion(content=None, tool_calls=[call], prompt_tokens=5, completion_tokens=5)


def make_loop(model, tools=None, max_iterations=5, deadline=100.0, clock=lambda: 0.0, **limits):
    steps = []
    loop = AgentLoop(
        complete=model,
        tools=tools or {},
        max_iterations=max_iterations,
        deadline=deadline,
        save_step=steps.append,
        clock=clock,
        **limits,
    )
    return loop, steps


def test_answer_without_tools_ends_after_one_call():
    model = ScriptedModel(answer("Hi!"))
    loop, steps = make_loop(model)
    result = loop.run([{"role": "user", "content": "Hello"}])
    assert result.response == "Hi!"
    assert result.iterations == 1
    assert result.usage == {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
    assert [s.kind for s in steps] == ["llm"]


def test_tool_result_goes_back_to_the_model_and_sources_are_kept():
    model = ScriptedModel(tool_call("refunds"), answer("Refunds take 5 days."))
    loop, steps = make_loop(model, tools={"knowledge_search": EchoTool()})
    result = loop.run([{"role": "user", "content": "refunds?"}])
    assert result.response == "Refunds take 5 days."
    assert result.iterations == 2
    second_prompt = model.calls[1]
    assert second_prompt[-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "found: refunds",
    }
    assert second_prompt[-2]["tool_calls"][0]["function"]["name"] == "knowledge_search"
    assert result.tool_calls[0]["name"] == "knowledge_search"
    assert result.tool_calls[0]["arguments"] == {"query": "refunds"}
    assert result.sources[0]["document_id"] == "d1"
    assert [s.kind for s in steps] == ["llm", "tool", "llm"]


def test_tool_failure_is_shown_to_the_model_not_raised():
    model = ScriptedModel(tool_call("x"), answer("Sorry, search is down."))
    loop, steps = make_loop(model, tools={"knowledge_search": EchoTool(fail=True)})
    result = loop.run([{"role": "user", "content": "x"}])
    assert result.response == "Sorry, search is down."
    assert "UPSTREAM_ERROR" in model.calls[1][-1]["content"]
    assert steps[1].error.startswith("UPSTREAM_ERROR")


def test_unknown_tool_is_reported_to_the_model():
    call = ToolCall(id="c", name="delete_everything", arguments="{}")
    model = ScriptedModel(Completion(content=None, tool_calls=[call]), answer("ok"))
    loop, steps = make_loop(model)
    loop.run([{"role": "user", "content": "x"}])
    assert "unknown tool" in model.calls[1][-1]["content"]
    assert steps[1].error == "unknown tool 'delete_everything'"


def test_max_iterations_raises_with_the_partial_result():
    model = ScriptedModel(tool_call("a"), tool_call("b"), tool_call("c"))
    loop, steps = make_loop(model, tools={"knowledge_search": EchoTool()}, max_iterations=2)
    with pytest.raises(MaxIterations) as raised:
        loop.run([{"role": "user", "content": "x"}])
    assert raised.value.partial.iterations == 2
    assert len(raised.value.partial.tool_calls) == 2
    assert len(steps) == 4


def test_deadline_stops_the_loop_before_the_next_call():
    now = [0.0]
    model = ScriptedModel(tool_call("a"), answer("late"))

    def slow_tool_clock():
        return now[0]

    class SlowTool(EchoTool):
        def call(self, arguments, deadline):
            now[0] = 50.0  # the tool took the rest of the run's time
            return super().call(arguments, deadline)

    loop, _ = make_loop(
        model, tools={"knowledge_search": SlowTool()}, deadline=30.0, clock=slow_tool_clock
    )
    with pytest.raises(ExecutionTimeout) as raised:
        loop.run([{"role": "user", "content": "x"}])
    assert raised.value.partial.iterations == 1
    assert len(model.calls) == 1


def test_each_call_gets_what_is_left_of_the_run_token_budget():
    model = ScriptedModel(tool_call("a"), answer("done", tokens=10))
    loop, _ = make_loop(
        model, tools={"knowledge_search": EchoTool()}, max_call_tokens=512, max_run_tokens=30
    )
    loop.run([{"role": "user", "content": "x"}])
    assert model.max_tokens == [30, 20]  # the tool call spent 10 of 30


def test_a_spent_token_budget_stops_the_run_with_its_partial_result():
    model = ScriptedModel(tool_call("a"), tool_call("b"), answer("never"))
    loop, _ = make_loop(model, tools={"knowledge_search": EchoTool()}, max_run_tokens=20)
    with pytest.raises(MaxIterations, match="token budget of 20"):
        loop.run([{"role": "user", "content": "x"}])
    assert len(model.calls) == 2
