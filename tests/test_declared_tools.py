"""Declared tools in a run: HTTP tools, MCP servers, several calls at once, the tier's max_tools.

The tool servers are real: a threaded HTTP server and the `mcp` SDK's own
server over Streamable HTTP under uvicorn (standins/tool_servers.py), on
free ports of 127.0.0.1, which the tests allow with AES_TOOL_ALLOWED_HOSTS.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from executions.models import Execution
from protocol import keys
from standins.peers import load_fixture
from standins.tool_servers import HttpToolServer, McpStandin
from tests.helpers import agent_run, callbacks, run_one

pytestmark = pytest.mark.django_db

SECRET = "Bearer s3cr3t-t0ken"


@pytest.fixture
def tool_server():
    server = HttpToolServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mcp_standin():
    server = McpStandin("crm")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mcp_server(mcp_standin):
    mcp_standin.calls.clear()
    return mcp_standin


@pytest.fixture(autouse=True)
def local_hosts_allowed(settings):
    settings.AES_TOOL_ALLOWED_HOSTS = "127.0.0.1:*"


def declare(peers, agent_id: str = "tool-bot", **fields) -> None:
    """Make `agent_id` an agent of tenant-a with `fields` (http_tools, mcp_servers, …)."""
    agent = dict(peers.fixture["agents"]["*"]["plain-bot"], agent_id=agent_id, **fields)
    peers.fixture["agents"]["tenant-a"] = {agent_id: agent}


def http_tool(url: str, name: str = "order_status", **fields) -> dict:
    return {
        "name": name,
        "description": "Look up an order.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
        "url": url,
        "headers": {"Authorization": SECRET},
        **fields,
    }


def tool_names(request: dict) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools", [])]


def tool_message(llm, request: int = 1) -> dict:
    return llm.requests[request]["messages"][-1]


def everything_recorded(execution: Execution) -> str:
    """The steps and the callback, as text: where a secret must never show."""
    steps = [[s.kind, s.name, s.input, s.output, s.error, s.replay] for s in execution.steps.all()]
    return json.dumps([steps, callbacks()])


# --- HTTP tools ------------------------------------------------------------------


def test_an_http_tool_posts_its_arguments_and_the_model_sees_the_answer(
    peers, llm, tool_server, caplog
):
    caplog.set_level(logging.INFO)
    declare(peers, http_tools=[http_tool(f"{tool_server.url}/orders/lookup")])
    llm.push_tool_call("order_status", {"query": "where is A-1001?"})
    llm.push_answer("It has shipped.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    offered = llm.requests[0]["tools"]
    assert [t["function"]["name"] for t in offered] == ["order_status"]
    assert offered[0]["function"]["parameters"]["required"] == ["query"]
    (call,) = tool_server.calls
    assert call.body == {"query": "where is A-1001?"}
    assert call.headers["Authorization"] == SECRET
    assert json.loads(tool_message(llm)["content"])["status"] == "shipped"
    step = execution.steps.get(kind="tool")
    assert step.name == "order_status" and step.error is None
    assert callbacks()[0]["data"]["tool_calls"][0]["name"] == "order_status"
    assert SECRET not in everything_recorded(execution)
    assert "s3cr3t" not in json.dumps(llm.requests)
    assert "s3cr3t" not in caplog.text
    assert "{'Authorization': '***'} answered HTTP 200" in caplog.text


def test_a_non_2xx_answer_is_a_tool_error_the_model_sees(peers, llm, tool_server):
    tool_server.routes["/down"] = lambda body, headers: (503, {"error": "maintenance"})
    declare(peers, http_tools=[http_tool(f"{tool_server.url}/down")])
    llm.push_tool_call("order_status", {"query": "A-1001"})
    llm.push_answer("The order service is down.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    error = execution.steps.get(kind="tool").error
    assert error.startswith("UPSTREAM_ERROR") and "HTTP 503" in error
    assert "HTTP 503" in tool_message(llm)["content"]


def test_a_tool_that_does_not_answer_in_time_is_a_timeout_error(peers, llm, tool_server):
    release = threading.Event()

    def hang(body, headers):
        release.wait(10)
        return 200, {"late": True}

    tool_server.routes["/hang"] = hang
    declare(peers, http_tools=[http_tool(f"{tool_server.url}/hang", timeout_seconds=0.5)])
    llm.push_tool_call("order_status", {"query": "A-1001"})
    llm.push_answer("No answer.")
    try:
        execution = run_one(agent_run(agent_id="tool-bot"))
    finally:
        release.set()
    assert execution.status == "completed"
    assert execution.steps.get(kind="tool").error.startswith("UPSTREAM_TIMEOUT")


def test_a_host_the_deployment_does_not_allow_is_never_contacted(peers, llm, tool_server, settings):
    settings.AES_TOOL_ALLOWED_HOSTS = "*"  # the default: public hosts only
    declare(peers, http_tools=[http_tool(f"{tool_server.url}/orders/lookup")])
    llm.push_tool_call("order_status", {"query": "A-1001"})
    llm.push_answer("I cannot reach it.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    assert tool_server.calls == []
    error = execution.steps.get(kind="tool").error
    assert "refused" in error and "non-public" in error
    assert "refused" in tool_message(llm)["content"]


def test_an_oversized_result_is_cut_and_marked(peers, llm, tool_server, settings):
    settings.AES_TOOL_RESULT_MAX_BYTES = 1024
    tool_server.routes["/big"] = lambda body, headers: (200, b"x" * 200_000)
    declare(peers, http_tools=[http_tool(f"{tool_server.url}/big")])
    llm.push_tool_call("order_status", {"query": "A-1001"})
    llm.push_answer("That is a lot.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    content = tool_message(llm)["content"]
    assert content.startswith("x" * 1024)
    assert "x" * 1025 not in content
    assert "[result cut: it was longer than 1024 bytes]" in content


# --- MCP servers -----------------------------------------------------------------


def mcp_declaration(url: str, **fields) -> list[dict]:
    return [{"name": "crm", "url": url, "headers": {"X-Api-Key": SECRET}, **fields}]


def test_mcp_tools_are_offered_by_server_and_name_and_called(peers, llm, mcp_server, redis):
    declare(peers, mcp_servers=mcp_declaration(mcp_server.url, allowed_tools=["lookup_order"]))
    llm.push_tool_call("crm__lookup_order", {"order_id": "A-1002"})
    llm.push_answer("It ships tomorrow.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed", execution.error_message
    (offered,) = llm.requests[0]["tools"]
    assert offered["function"]["name"] == "crm__lookup_order"
    assert offered["function"]["parameters"]["required"] == ["order_id"]
    assert [c.body for c in mcp_server.calls] == [{"order_id": "A-1002"}]
    assert json.loads(tool_message(llm)["content"])["status"] == "processing"
    assert execution.steps.get(kind="tool").error is None
    assert SECRET not in everything_recorded(execution)
    # The run's MCP session is closed with it: its event loop thread is gone.
    assert not [t for t in threading.enumerate() if t.name == "mcp-sessions"]
    # Listed once, cached for the tenant with a TTL.
    (key,) = redis.keys(keys.mcp_tools("tenant-a", "*"))
    assert 0 < redis.ttl(key) <= 300


def test_an_mcp_tool_error_is_a_tool_error_the_model_sees(peers, llm, mcp_server):
    declare(peers, mcp_servers=mcp_declaration(mcp_server.url))
    llm.push_tool_call("crm__lookup_order", {"order_id": "Z-9"})
    llm.push_answer("No such order.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    assert tool_names(llm.requests[0]) == ["crm__lookup_order", "crm__wait"]
    error = execution.steps.get(kind="tool").error
    assert error.startswith("UPSTREAM_ERROR") and "no order matches" in error


def test_a_slow_mcp_tool_is_a_timeout_error_and_the_run_goes_on(peers, llm, settings):
    settings.AES_TOOL_TIMEOUT_SECONDS = 0.5
    server = McpStandin("crm")  # its own: the abandoned call ends in no other test
    server.start()
    declare(peers, mcp_servers=mcp_declaration(server.url))
    llm.push_tool_call("crm__wait", {"seconds": 3})
    llm.push_answer("The CRM is slow today.")
    try:
        execution = run_one(agent_run(agent_id="tool-bot"))
    finally:
        server.stop()

    assert execution.status == "completed"
    assert execution.response == "The CRM is slow today."
    assert execution.steps.get(kind="tool").error.startswith("UPSTREAM_TIMEOUT")
    assert "UPSTREAM_TIMEOUT" in tool_message(llm)["content"]


def free_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"


def test_an_mcp_server_that_is_down_is_a_note_not_a_failed_run(peers, llm):
    declare(peers, mcp_servers=mcp_declaration(free_port_url()))
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    assert tool_names(llm.requests[0]) == []
    note = execution.steps.get(name="mcp_server_unavailable")
    assert note.input == {"server": "crm"}
    assert note.error.startswith("UPSTREAM_ERROR")


def test_a_server_down_after_its_tools_were_listed_is_a_tool_error(peers, llm, redis):
    server = McpStandin("crm")
    server.start()
    declare(peers, mcp_servers=mcp_declaration(server.url))
    try:
        run_one(agent_run(agent_id="tool-bot"))  # lists and caches its tools
    finally:
        server.stop()
    llm.requests.clear()
    llm.push_tool_call("crm__lookup_order", {"order_id": "A-1001"})
    llm.push_answer("The CRM is down.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    # Offered from the cache: the server was not asked again.
    assert tool_names(llm.requests[0]) == ["crm__lookup_order", "crm__wait"]
    assert execution.steps.get(kind="tool").error.startswith("UPSTREAM_ERROR")


# --- Several calls in one answer ---------------------------------------------------


def test_two_slow_tools_in_one_answer_run_at_the_same_time(peers, llm, tool_server, mcp_server):
    def slow(body, headers):
        time.sleep(float(body["seconds"]))
        return 200, {"slept": body["seconds"]}

    tool_server.routes["/slow"] = slow
    slow_tool = dict(http_tool(f"{tool_server.url}/slow", name="slow"), parameters={})
    declare(peers, http_tools=[slow_tool], mcp_servers=mcp_declaration(mcp_server.url))
    # The first call is the slower: it ends last, its result still goes first.
    llm.script.append(
        {
            "tool_calls": [
                {"name": "slow", "arguments": {"seconds": 1.0}},
                {"name": "crm__wait", "arguments": {"seconds": 0.5}},
            ]
        }
    )
    llm.push_answer("Both done.")
    execution = run_one(agent_run(tier="professional", agent_id="tool-bot"), "professional")

    assert execution.status == "completed", execution.error_message
    (http_call,) = tool_server.calls
    (mcp_call,) = mcp_server.calls
    # Each started before the other ended: they overlapped.
    assert http_call.started < mcp_call.ended and mcp_call.started < http_call.ended
    calls = llm.requests[1]["messages"][-3]["tool_calls"]
    results = llm.requests[1]["messages"][-2:]
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in calls]
    assert json.loads(results[0]["content"]) == {"slept": 1.0}
    assert results[1]["content"] == "waited 0.5s"
    steps = {s.name: s for s in execution.steps.filter(kind="tool")}
    assert steps["slow"].duration_ms >= 1000
    assert steps["crm__wait"].duration_ms >= 500
    assert len(callbacks()[0]["data"]["tool_calls"]) == 2


# --- Which tools -------------------------------------------------------------------


def test_tools_over_the_tiers_max_tools_are_left_out_in_order(peers, llm, tool_server, mcp_server):
    # free allows 2: knowledge_search, then the first HTTP tool; the rest is noted.
    declare(
        peers,
        tools=["knowledge_search"],
        collection_ids=["kb-1"],
        http_tools=[
            http_tool(f"{tool_server.url}/a", name="first"),
            http_tool(f"{tool_server.url}/b", name="second"),
        ],
        mcp_servers=mcp_declaration(mcp_server.url),
    )
    llm.push_answer("Hello.")
    execution = run_one(agent_run(agent_id="tool-bot"))

    assert execution.status == "completed"
    assert tool_names(llm.requests[0]) == ["knowledge_search", "first"]
    assert [n.error for n in execution.steps.filter(kind="note")] == [
        "tool 'second' left out: the tier allows 2",
        "MCP server 'crm' left out: the tier allows 2 tools",
    ]
    assert mcp_server.calls == []


def test_a_tool_with_a_name_taken_or_invalid_is_left_out(peers, llm, tool_server):
    declare(
        peers,
        tools=["knowledge_search"],
        http_tools=[
            http_tool(f"{tool_server.url}/a", name="knowledge_search"),
            http_tool(f"{tool_server.url}/a", name="has space"),
        ],
    )
    llm.push_answer("Hello.")
    execution = run_one(agent_run(tier="professional", agent_id="tool-bot"), "professional")

    assert tool_names(llm.requests[0]) == ["knowledge_search"]
    errors = [n.error for n in execution.steps.filter(kind="note")]
    assert errors == [
        "tool 'knowledge_search' left out: another tool has that name",
        "tool 'has space' left out: a name is 1-64 of A-Z a-z 0-9 _ -",
    ]


# --- The context window -------------------------------------------------------------


def test_a_long_history_is_trimmed_to_fit_the_context_window(peers, llm):
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "y" * 600}
        for i in range(40)
    ]
    peers.fixture["sessions"]["long-session"] = history
    declare(peers, context_window=2000, max_tokens=200)
    llm.push_answer("Short answer.")
    execution = run_one(
        agent_run(tier="enterprise", agent_id="tool-bot", session_id="long-session"), "enterprise"
    )

    assert execution.status == "completed"
    sent = llm.requests[0]["messages"]
    assert sent[0]["role"] == "system"
    assert sent[-1] == {"role": "user", "content": "Hello there"}
    # The newest history stayed, the oldest went.
    assert sent[-2]["content"].startswith("message 39 ")
    assert not any(m["content"].startswith("message 0 ") for m in sent)
    assert sum(len(m["content"]) for m in sent) < 2000 * 3
    note = execution.steps.get(name="context_trimmed")
    assert note.output["context_window"] == 2000
    assert note.output["history_dropped"] == 40 - (len(sent) - 2)


# --- The dev fixture's agents, as scripts/serve runs them ------------------------------


def test_the_dev_fixtures_tool_agents_reach_the_stand_ins(
    peers, llm, tool_server, mcp_server, monkeypatch
):
    monkeypatch.setenv("AES_STANDIN_TOOLS_URL", tool_server.url)
    monkeypatch.setenv("AES_STANDIN_MCP_URL", mcp_server.url)
    peers.fixture["agents"]["*"].update(load_fixture()["agents"]["*"])
    # No script: the stand-in LLM calls the one tool it is offered.
    orders = run_one(agent_run(agent_id="orders-bot", message="Where is order A-1001?"))
    crm = run_one(agent_run(agent_id="crm-bot", message="And order A-1003?"))

    assert [orders.status, crm.status] == ["completed", "completed"]
    assert [c.body for c in tool_server.calls] == [{"query": "Where is order A-1001?"}]
    assert tool_server.calls[0].headers["Authorization"] == "Bearer demo-orders-token"
    assert [c.body for c in mcp_server.calls] == [{"order_id": "And order A-1003?"}]
    assert '"status": "shipped"' in orders.response
    assert '"status": "delivered"' in crm.response
