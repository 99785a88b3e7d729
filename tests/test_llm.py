"""Runs against the strict LLM stand-in: requests real servers accept, honest outcomes.

The stand-in refuses what llama-cpp-python and OpenAI refuse (standins/llm.py);
every run here goes through the real openai client, Redis and the database.
"""

from __future__ import annotations

import json

import pytest

from executions.agent.run import journal_result
from protocol import keys
from protocol.messages import QS_REQUEST
from standins.peers import conversation_key
from tests.helpers import agent_run, callbacks, run_one
from tiers.models import Tier

pytestmark = pytest.mark.django_db


def llm_steps(execution):
    return list(execution.steps.filter(kind="llm"))


def test_a_tool_using_run_completes_against_the_strict_standin(peers, llm):
    execution = run_one(agent_run(agent_id="support-bot", message="How do refunds work?"))

    assert execution.status == "completed", execution.error_message
    assert execution.stop_reason == "stop"
    assert execution.response.startswith("Based on the knowledge base")
    first, second = llm.requests
    assert first["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in first["tools"]] == ["knowledge_search"]
    sent = second["messages"][-2]
    assert sent["role"] == "assistant" and sent["content"] == "" and sent["tool_calls"]
    data = callbacks()[0]["data"]
    assert data["stop_reason"] == "stop"
    assert data["sources"]


def test_optional_parameters_are_sent_only_when_set(peers, llm):
    run_one(agent_run(agent_id="plain-bot"))
    body = llm.requests[0]
    # plain-bot has no tools: neither tools nor tool_choice go out, not even as null.
    assert "tools" not in body and "tool_choice" not in body
    assert body["temperature"] == 0.7
    assert None not in body.values()


def test_the_strict_standin_refuses_null_content_as_llama_cpp_python_does(llm):
    import httpx2 as httpx

    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
    }
    answer = httpx.post(f"{llm.url}/chat/completions", json=body, timeout=5)
    assert answer.status_code == 500
    dropped = httpx.post(
        f"{llm.url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": []},
        timeout=5,
    )
    assert dropped.status_code == 200  # an empty tools list is simply unused


def test_a_deterministic_500_is_tried_twice_not_four_times(peers, llm):
    for _ in range(4):
        llm.push_error(500, "boom " * 400, headers={"retry-after-ms": "10"})
    execution = run_one(agent_run())

    assert execution.status == "failed"
    assert execution.error_code == "LLM_ERROR"
    assert execution.stop_reason == "error"
    assert len(llm.requests) == 2
    message = callbacks()[0]["data"]["error"]["message"]
    assert message == "the model server refused the request (HTTP 500, 2 attempts)"


def test_a_refused_request_is_never_retried_and_its_body_stays_in_the_step(peers, llm):
    llm.push_error(400, "Error code: 400 - /srv/llama/server.py line 12: " + "x" * 3000)
    execution = run_one(agent_run())

    assert len(llm.requests) == 1
    assert execution.error_message == "the model server refused the request (HTTP 400)"
    (step,) = llm_steps(execution)
    assert step.error == execution.error_message
    assert step.output["http_status"] == 400
    assert "/srv/llama/server.py" in step.output["detail"]
    assert len(step.output["detail"]) <= 501


def test_steps_show_failed_attempts_and_a_resume_does_not_count_them(peers, llm):
    llm.push_error(503, "busy", headers={"retry-after-ms": "10"})
    llm.push_error(429, "slow down", headers={"retry-after-ms": "10"})
    execution = run_one(agent_run(message="still there?"))

    assert execution.status == "completed" and execution.iterations == 1
    steps = llm_steps(execution)
    assert [(s.input["attempt"], s.output.get("http_status"), bool(s.error)) for s in steps] == [
        (1, 503, True),
        (2, 429, True),
        (3, None, False),
    ]
    assert all(s.duration_ms >= 0 for s in steps)
    assert journal_result(execution).iterations == 1  # what a resumed attempt would count


def test_a_lost_connection_is_retried(peers, llm):
    llm.push_disconnect()
    execution = run_one(agent_run(message="still there?"))

    assert execution.status == "completed"
    assert execution.response == "(stand-in) You said: still there?"
    first, second = llm_steps(execution)
    assert first.error == "the model server could not be reached"
    assert second.error is None and second.input["attempt"] == 2


def test_an_answer_cut_at_max_tokens_completes_with_stop_reason_length(peers, llm):
    llm.push_answer("Refunds are possible within thirty days. " * 200)
    execution = run_one(agent_run(agent_id="plain-bot"))

    assert execution.status == "completed"
    assert execution.stop_reason == "length"
    assert execution.response.startswith("Refunds are possible")
    assert len(execution.response) <= 256 * 4  # plain-bot's max_tokens, cut by the server
    assert callbacks()[0]["data"]["stop_reason"] == "length"


def test_an_empty_answer_is_asked_for_again_then_fails_and_the_session_stays_whole(
    peers, llm, redis
):
    llm.push_answer("")
    llm.push_answer("   ")
    execution = run_one(agent_run(session_id="demo-session", message="anyone?"))

    assert execution.status == "failed"
    assert execution.error_code == "EMPTY_RESPONSE"
    assert len(llm.requests) == 2
    assert llm.requests[0]["messages"] == llm.requests[1]["messages"]
    # Nothing of the turn was saved, in CS or the cached history: no question without its answer.
    saved = [json.loads(m) for m in redis.lrange(conversation_key("demo-session"), 0, -1)]
    cached = json.loads(redis.get(keys.history("tenant-a", "demo-session")))
    assert saved and cached  # the session's earlier turns, as they were
    assert "anyone?" not in [m["content"] for m in saved + cached]
    assert saved[-1]["role"] == cached[-1]["role"] == "assistant"
    data = callbacks()[0]["data"]
    assert data["error"]["code"] == "EMPTY_RESPONSE" and data["response"] is None


def test_an_empty_answer_then_a_real_one_completes_and_saves_the_turn(peers, llm, redis):
    llm.push_answer("")
    llm.push_answer("Here I am.")
    execution = run_one(agent_run(session_id="s-9", message="anyone?"))

    assert execution.status == "completed" and execution.response == "Here I am."
    saved = [json.loads(m) for m in redis.lrange(conversation_key("s-9"), 0, -1)]
    assert [(m["role"], m["content"]) for m in saved] == [
        ("user", "anyone?"),
        ("assistant", "Here I am."),
    ]


@pytest.mark.parametrize("budget", [120, 251, 600])
def test_the_token_budget_is_never_passed_by_more_than_5_percent(peers, llm, budget):
    tier = Tier.objects.get(name="professional")
    tier.max_tokens = budget
    tier.save()  # the save signal clears this process's tier cache
    for _ in range(6):
        llm.push_tool_call("knowledge_search", {"query": "refunds and shipping " * 10})
    execution = run_one(agent_run(agent_id="support-bot", tier="professional"), "professional")

    assert execution.total_tokens <= budget * 1.05
    assert execution.stop_reason == "token_budget"
    assert callbacks()[0]["data"]["usage"]["total_tokens"] == execution.total_tokens


def test_a_hung_llm_times_out_per_call_not_at_the_run_deadline(peers, llm, settings):
    settings.AES_LLM_CALL_TIMEOUT_SECONDS = 0.5
    llm.push_hang(30)
    llm.push_hang(30)
    execution = run_one(agent_run(tier="enterprise"), "enterprise")

    assert execution.status == "failed", [(s.output, s.error) for s in execution.steps.all()]
    assert execution.error_code == "LLM_ERROR"
    assert execution.error_message == "the model server did not answer within 0.5 s (2 attempts)"
    steps = llm_steps(execution)
    assert [s.output["timed_out"] for s in steps] == [True, True]


def test_a_hung_llm_past_the_run_deadline_is_a_timeout(peers, llm):
    llm.push_hang(5)
    execution = run_one(agent_run(timeout=1))

    assert execution.status == "timeout"
    assert execution.stop_reason == "timeout"


def test_tools_asked_for_on_the_last_allowed_call_are_not_run(peers, llm):
    llm.push_tool_call("knowledge_search", {"query": "refunds"})
    execution = run_one(agent_run(agent_id="support-bot", max_iterations=1))

    assert (execution.error_code, execution.stop_reason) == ("MAX_ITERATIONS", "max_iterations")
    assert execution.steps.filter(kind="tool").count() == 0
    assert peers.peers.handled.get(QS_REQUEST) is None


def test_sources_name_each_document_once(peers, llm):
    llm.push_tool_call("knowledge_search", {"query": "refunds"})
    llm.push_tool_call("knowledge_search", {"query": "refunds"})
    execution = run_one(agent_run(agent_id="support-bot", tier="professional"), "professional")

    assert execution.status == "completed"
    ids = [s["document_id"] for s in callbacks()[0]["data"]["sources"]]
    assert ids and len(ids) == len(set(ids))


def test_malformed_tool_arguments_are_kept_as_written(peers, llm):
    llm.script.append({"tool_calls": [{"name": "knowledge_search", "arguments": '{"query": "ref'}]})
    execution = run_one(agent_run(agent_id="support-bot"))

    assert execution.status == "completed"
    tool = execution.steps.get(kind="tool")
    assert tool.input == '{"query": "ref'
    assert tool.error.startswith("invalid arguments")
    assert callbacks()[0]["data"]["tool_calls"][0]["arguments"] == '{"query": "ref'
    assert peers.peers.handled.get(QS_REQUEST) is None


def test_raw_control_characters_in_tool_arguments_are_accepted(peers, llm):
    raw = '{"query": "refunds\n\tpolicy"}'  # a raw newline and tab inside the string
    llm.script.append({"tool_calls": [{"name": "knowledge_search", "arguments": raw}]})
    execution = run_one(agent_run(agent_id="support-bot"))

    assert execution.status == "completed"
    assert execution.steps.get(kind="tool").input == {"query": "refunds\n\tpolicy"}
    assert peers.peers.handled.get(QS_REQUEST) == 1


def test_the_api_shows_the_stop_reason_and_each_try_of_a_call(peers, llm, admin_client):
    llm.push_error(502, "bad gateway", headers={"retry-after-ms": "10"})
    llm.push_answer("Refunds take five days. " * 100)
    execution = run_one(agent_run(agent_id="plain-bot"))

    body = admin_client.get(f"/api/executions/{execution.id}/").json()
    assert body["status"] == "completed" and body["stop_reason"] == "length"
    tries = [(s["input"]["attempt"], s["error"]) for s in body["steps"] if s["kind"] == "llm"]
    assert tries == [(1, "the model server refused the request (HTTP 502)"), (2, None)]
    listed = admin_client.get("/api/executions/", {"stop_reason": "length"}).json()["results"]
    assert [row["id"] for row in listed] == [str(execution.id)]
