"""Tools in a run: knowledge_search over QS (and ES), errors, and the tier's max_tools."""

from __future__ import annotations

import threading

import pytest

from executions.agent import tools
from executions.agent.loop import ToolResult
from executions.agent.peers import Caller, route_peer_callback
from protocol import keys
from protocol.messages import ES_REQUEST, QS_REQUEST, QUERY_CALLBACK, AgentConfig, DomainAction
from tests.helpers import agent_run, callbacks, consume, run_one, wait_for

pytestmark = pytest.mark.django_db


def tool_names(llm_request: dict) -> list[str]:
    return [tool["function"]["name"] for tool in llm_request.get("tools", [])]


def test_knowledge_search_round_trip_through_the_query_service(peers, llm):
    execution = run_one(agent_run(agent_id="support-bot", message="How do refunds work?"))

    assert execution.status == "completed"
    assert execution.iterations == 2
    assert tool_names(llm.requests[0]) == ["knowledge_search"]
    assert [(s.kind, s.name) for s in execution.steps.all()] == [
        ("llm", "llm_call_1"),
        ("tool", "knowledge_search"),
        ("llm", "llm_call_2"),
    ]
    assert peers.peers.handled.get(QS_REQUEST) == 1
    assert peers.peers.handled.get(ES_REQUEST) is None
    # The model got the passages back as the tool's result.
    tool_message = llm.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert "kb-1-refunds" in tool_message["content"]

    data = callbacks()[0]["data"]
    assert data["tool_calls"][0]["name"] == "knowledge_search"
    assert data["tool_calls"][0]["arguments"] == {"query": "How do refunds work?"}
    assert data["tool_calls"][0]["result_summary"]
    assert data["sources"][0]["document_id"] == "kb-1-refunds"
    assert data["sources"][0]["metadata"].get("used_embedding") is None
    assert data["iterations"] == 2
    assert data["response"].startswith("Based on the knowledge base")


def test_vector_retrieval_embeds_the_query_first(peers, llm):
    execution = run_one(agent_run(agent_id="vector-bot", message="How do refunds work?"))
    assert execution.status == "completed"
    assert peers.peers.handled.get(ES_REQUEST) == 1
    assert peers.peers.handled.get(QS_REQUEST) == 1
    assert callbacks()[0]["data"]["sources"][0]["metadata"]["used_embedding"] is True


def test_collections_of_the_execution_context_are_searched_when_the_agent_names_none(
    peers, llm, redis
):
    agent = dict(peers.fixture["agents"]["*"]["support-bot"], collection_ids=[])
    peers.fixture["agents"]["tenant-a"] = {"support-bot": agent}
    message = agent_run(agent_id="support-bot", message="refunds")
    message["execution_context"] = {"collections": ["kb-1"]}
    run_one(message)
    assert callbacks()[0]["data"]["sources"][0]["document_id"] == "kb-1-refunds"


def test_a_silent_query_service_is_a_tool_error_the_model_sees(start_peers, llm, settings):
    settings.AES_TOOL_TIMEOUT_SECONDS = 0.5
    start_peers(silent={"query"})
    execution = run_one(agent_run(agent_id="support-bot", message="refunds?"))

    assert execution.status == "completed"
    tool_step = execution.steps.get(kind="tool")
    assert tool_step.error.startswith("UPSTREAM_TIMEOUT")
    assert "UPSTREAM_TIMEOUT" in llm.requests[1]["messages"][-1]["content"]


def test_a_late_callback_is_dropped_and_leaves_no_key(
    start_peers, llm, settings, redis, monkeypatch
):
    settings.AES_TOOL_TIMEOUT_SECONDS = 0.3
    handle = start_peers(delay_seconds=1.0)
    answered = threading.Event()
    send_callback = handle.peers._callback

    def send_and_note(*args):
        send_callback(*args)
        answered.set()

    monkeypatch.setattr(handle.peers, "_callback", send_and_note)
    execution = run_one(agent_run(agent_id="support-bot"))
    assert execution.steps.get(kind="tool").error.startswith("UPSTREAM_TIMEOUT")

    # QS answers after the run gave up (a second after it asked); a consumer
    # takes the callback (the one beside the worker, or this one) and drops it.
    wait_for(lambda: handle.peers.handled.get(QS_REQUEST) == 1, what="the query request")
    wait_for(answered.is_set, what="the late callback")
    consume()
    assert redis.keys(keys.responses("*")) == []
    assert redis.keys(keys.waiting("*")) == []
    assert redis.llen(keys.callbacks("free")) == 0


def test_an_unmatched_callback_creates_no_key(redis):
    callback = DomainAction.model_validate(
        {
            "action_id": "a",
            "action_type": QUERY_CALLBACK,
            "task_id": "t",
            "tenant_id": "tenant-a",
            "tenant_tier": "free",
            "correlation_id": "nobody-waits",
            "data": {},
        }
    )
    assert route_peer_callback(callback, b"{}") == 0
    assert redis.keys("*") == []


def test_unknown_tools_are_left_out_and_noted(peers, llm):
    agent = dict(
        peers.fixture["agents"]["*"]["support-bot"], tools=["web_browse", "knowledge_search"]
    )
    peers.fixture["agents"]["tenant-a"] = {"support-bot": agent}
    execution = run_one(agent_run(agent_id="support-bot"))
    assert execution.status == "completed"
    assert tool_names(llm.requests[0]) == ["knowledge_search"]
    note = execution.steps.get(kind="note")
    assert note.error == "unknown tool 'web_browse' left out"


class Clock:
    name = "clock"

    def __init__(self, context):
        pass

    def schema(self):
        return {"type": "function", "function": {"name": self.name, "parameters": {}}}

    def call(self, arguments, deadline):
        return ToolResult(content="noon")


def test_tools_beyond_the_tiers_max_tools_are_left_out(monkeypatch):
    monkeypatch.setitem(tools.REGISTRY, "clock", Clock)
    agent = AgentConfig(agent_id="a", tools=["clock", "knowledge_search", "clock"])
    context = tools.ToolContext(Caller("t", "tenant", "free", None), agent, [])
    chosen, notes = tools.build(context, max_tools=1)
    assert list(chosen) == ["clock"]
    assert [n.error for n in notes] == ["tool 'knowledge_search' left out: the tier allows 1"]
    chosen, notes = tools.build(context, max_tools=None)
    assert list(chosen) == ["clock", "knowledge_search"]
    assert notes == []
