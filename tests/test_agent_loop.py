"""The agent loop's own logic, as plain Python: no database, Redis or HTTP."""

from __future__ import annotations

import json

import pytest

from executions.agent.loop import (
    AgentLoop,
    Attempt,
    Completion,
    Replayed,
    ToolCall,
    ToolResult,
)
from executions.exceptions import (
    EmptyResponse,
    ExecutionTimeout,
    MaxIterations,
    TokenBudget,
    UpstreamError,
)

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


def test_max_iterations_raises_with_the_partial_result_and_skips_the_last_tools():
    model = ScriptedModel(tool_call("a"), tool_call("b"), tool_call("c"))
    loop, steps = make_loop(model, tools={"knowledge_search": EchoTool()}, max_iterations=2)
    with pytest.raises(MaxIterations) as raised:
        loop.run([{"role": "user", "content": "x"}])
    assert raised.value.partial.iterations == 2
    # The tools asked for on the last allowed call are not run: nothing would read them.
    assert len(raised.value.partial.tool_calls) == 1
    assert [s.kind for s in steps] == ["llm", "tool", "llm"]
    assert raised.value.stop_reason == "max_iterations"


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


class GreedyModel:
    """Counts its prompt as a server does (a token per 4 characters, a few per message) and
    writes all the completion tokens it may: the worst case for a token budget."""

    def __init__(self, tool_calls: int) -> None:
        self.tool_calls = tool_calls
        self.max_tokens: list[int | None] = []

    def __call__(self, messages, tools, timeout, max_tokens) -> Completion:
        self.max_tokens.append(max_tokens)
        prompt = sum(len(m.get("content") or "") // 4 + 4 for m in messages) + 30 * len(tools)
        if self.tool_calls:
            self.tool_calls -= 1
            done = tool_call("more")
            done.prompt_tokens, done.completion_tokens = prompt, min(10, max_tokens)
            return done
        return Completion(
            content="word " * max_tokens,
            tool_calls=[],
            prompt_tokens=prompt,
            completion_tokens=max_tokens,
            finish_reason="length",
        )


class BigTool(EchoTool):
    def call(self, arguments, deadline):
        return ToolResult(content="passage " * 100)


@pytest.mark.parametrize("budget", [120, 251, 400, 700, 1500])
def test_the_token_budget_counts_prompt_and_completion_and_is_never_passed(budget):
    model = GreedyModel(tool_calls=3)
    loop, _ = make_loop(
        model,
        tools={"knowledge_search": BigTool()},
        max_iterations=10,
        max_call_tokens=512,
        max_run_tokens=budget,
    )
    try:
        result = loop.run([{"role": "user", "content": "tell me everything " * 5}])
        reason = result.stop_reason
    except TokenBudget as stopped:
        result, reason = stopped.partial, stopped.stop_reason
    assert result.usage["total_tokens"] <= budget * 1.05
    assert reason == "token_budget"


def test_a_call_whose_prompt_leaves_no_room_is_not_made():
    model = ScriptedModel(answer("never"))
    loop, steps = make_loop(model, max_run_tokens=20)
    with pytest.raises(TokenBudget, match="token budget of 20") as raised:
        loop.run([{"role": "user", "content": "a question much longer than the budget " * 5}])
    assert model.calls == [] and steps == []
    assert (raised.value.code, raised.value.stop_reason) == ("MAX_ITERATIONS", "token_budget")


def test_an_answer_cut_at_max_tokens_completes_with_stop_reason_length():
    model = ScriptedModel(
        Completion(
            content="Refunds are", tool_calls=[], finish_reason="length", completion_tokens=5
        )
    )
    loop, _ = make_loop(model, max_call_tokens=5)
    result = loop.run([{"role": "user", "content": "refunds?"}])
    assert (result.response, result.stop_reason) == ("Refunds are", "length")


def test_an_empty_answer_is_asked_for_once_more():
    model = ScriptedModel(answer(""), answer("Here it is."))
    loop, steps = make_loop(model)
    result = loop.run([{"role": "user", "content": "x"}])
    assert result.response == "Here it is." and result.iterations == 2
    assert model.calls[1] == model.calls[0]  # the same request again, no empty turn in it


def test_two_empty_answers_fail_with_empty_response():
    model = ScriptedModel(answer("  "), answer(""))
    loop, _ = make_loop(model)
    with pytest.raises(EmptyResponse) as raised:
        loop.run([{"role": "user", "content": "x"}])
    assert raised.value.code == "EMPTY_RESPONSE"
    assert raised.value.partial.iterations == 2


def test_a_resumed_run_counts_an_empty_answer_it_had_already_received():
    model = ScriptedModel(answer(""))
    loop, _ = make_loop(model)
    journal = [Replayed("llm", {"message": {"role": "assistant", "content": None}}, 5, 0)]
    with pytest.raises(EmptyResponse):
        loop.run([{"role": "user", "content": "x"}], journal)
    assert model.calls == [[{"role": "user", "content": "x"}]]


def test_assistant_tool_call_messages_carry_empty_content_not_null():
    model = ScriptedModel(tool_call("a"), answer("done"))
    loop, steps = make_loop(model, tools={"knowledge_search": EchoTool()})
    loop.run([{"role": "user", "content": "x"}])
    sent = model.calls[1][-2]
    assert sent["role"] == "assistant" and sent["content"] == ""
    assert steps[0].replay["message"]["content"] == ""
    assert "tool_calls" not in steps[-1].replay["message"]  # no empty list either


def test_a_journal_with_null_content_is_replayed_as_empty_content():
    call = {"id": "c1", "type": "function", "function": {"name": "knowledge_search"}}
    call["function"]["arguments"] = '{"query": "a"}'
    journal = [
        Replayed("llm", {"message": {"role": "assistant", "content": None, "tool_calls": [call]}}),
    ]
    model = ScriptedModel(answer("done"))
    loop, _ = make_loop(model, tools={"knowledge_search": EchoTool()})
    loop.run([{"role": "user", "content": "x"}], journal)
    assert model.calls[0][1]["content"] == ""


def test_failed_attempts_are_steps_outside_the_journal():
    attempt = Attempt(1, 12, "the model server refused the request (HTTP 503)", 503, "busy")
    done = answer("ok")
    done.attempt, done.failed_attempts = 2, [attempt]
    loop, steps = make_loop(ScriptedModel(done))
    result = loop.run([{"role": "user", "content": "x"}])
    assert result.iterations == 1
    assert [(s.name, s.input["attempt"], s.error is None) for s in steps] == [
        ("llm_call_1", 1, False),
        ("llm_call_1", 2, True),
    ]
    assert steps[0].output["http_status"] == 503 and steps[0].replay is None


def test_sources_are_kept_once_per_document():
    model = ScriptedModel(tool_call("a"), tool_call("b"), answer("done"))
    loop, _ = make_loop(model, tools={"knowledge_search": EchoTool()})
    result = loop.run([{"role": "user", "content": "x"}])
    assert [s["document_id"] for s in result.sources] == ["d1"]
    assert len(result.tool_calls) == 2


def test_arguments_that_are_not_json_are_kept_as_the_model_wrote_them():
    call = ToolCall(id="c", name="knowledge_search", arguments='{"query": "refu')
    model = ScriptedModel(Completion(content=None, tool_calls=[call]), answer("ok"))
    loop, steps = make_loop(model, tools={"knowledge_search": EchoTool()})
    result = loop.run([{"role": "user", "content": "x"}])
    assert result.tool_calls[0]["arguments"] == '{"query": "refu'
    assert steps[1].input == '{"query": "refu'
    assert steps[1].error.startswith("invalid arguments")


def test_raw_control_characters_inside_argument_strings_are_accepted():
    call = ToolCall(id="c", name="knowledge_search", arguments='{"query": "two\nlines\tand a tab"}')
    model = ScriptedModel(Completion(content=None, tool_calls=[call]), answer("ok"))
    loop, steps = make_loop(model, tools={"knowledge_search": EchoTool()})
    result = loop.run([{"role": "user", "content": "x"}])
    assert result.tool_calls[0]["arguments"] == {"query": "two\nlines\tand a tab"}
    assert steps[1].error is None


def test_a_withheld_answer_says_content_filter():
    kept = Completion(content="Partly", tool_calls=[], finish_reason="content_filter")
    loop, _ = make_loop(ScriptedModel(kept))
    assert loop.run([{"role": "user", "content": "x"}]).stop_reason == "content_filter"

    withheld = Completion(content=None, tool_calls=[], finish_reason="content_filter")
    loop, _ = make_loop(ScriptedModel(withheld))
    with pytest.raises(EmptyResponse) as raised:
        loop.run([{"role": "user", "content": "x"}])
    assert raised.value.stop_reason == "content_filter"
