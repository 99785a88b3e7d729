"""Smoke test against a real OpenAI-compatible server, run only where one is given.

    AES_REAL_LLM_BASE_URL=http://127.0.0.1:8080/v1 scripts/test tests/test_real_llm.py

(docs/agents.md, "A local model with llama.cpp"). The server must answer any
model name the fixture agents use (llama-server and llama-cpp-python serving
one model do); AES_REAL_LLM_API_KEY is sent when it is set. What a small
model answers is not checked: that the server accepts every request the
AES makes, and that each run ends as the protocol says, is.
"""

from __future__ import annotations

import os

import pytest

from executions.agent import llm
from executions.agent.loop import Completion, ToolCall, assistant_message
from protocol.messages import STOP_REASONS
from tests.helpers import agent_run, callbacks, run_one
from tiers.models import Tier

BASE_URL = os.environ.get("AES_REAL_LLM_BASE_URL")

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.real_llm,
    pytest.mark.skipif(not BASE_URL, reason="AES_REAL_LLM_BASE_URL is not set"),
    pytest.mark.timeout(600),
]


@pytest.fixture
def real_llm(settings):
    settings.OPENAI_BASE_URL = BASE_URL
    settings.OPENAI_API_KEY = os.environ.get("AES_REAL_LLM_API_KEY", "not-set")
    # A small model on a small machine: the run may take a while, each call too.
    settings.AES_LLM_CALL_TIMEOUT_SECONDS = 240
    # The free tier's 3 calls and 4,000 tokens keep a model that searches
    # again and again within a small server's context window (-c 4096).
    tier = Tier.objects.get(name="free")
    tier.timeout_seconds = 500
    tier.save()


def test_a_plain_run_completes_against_the_real_server(peers, real_llm):
    execution = run_one(agent_run(agent_id="plain-bot"))

    assert execution.status == "completed", execution.error_message
    assert execution.stop_reason in ("stop", "length")
    assert execution.response and execution.response.strip()
    assert execution.prompt_tokens > 0 and execution.completion_tokens > 0
    assert callbacks()[0]["data"]["stop_reason"] == execution.stop_reason


def test_a_tool_run_ends_as_the_protocol_says_and_no_request_is_refused(peers, real_llm):
    execution = run_one(agent_run(agent_id="support-bot", message="How do refunds work?"))

    # A small model may answer at once, search, or search until a limit:
    # what it may not meet is a refused request.
    steps = list(execution.steps.filter(kind="llm"))
    refused = [(step.error, step.output) for step in steps if step.error]
    assert execution.error_code != "LLM_ERROR" and not refused, refused
    assert execution.stop_reason in STOP_REASONS
    if execution.status == "completed":
        assert execution.response.strip()


def test_the_server_accepts_a_tool_result_after_an_assistant_tool_call(real_llm):
    # What every tool run sends on its second call, whether or not this model calls tools.
    call = ToolCall(id="call_1", name="knowledge_search", arguments='{"query": "refunds"}')
    schema = {
        "type": "function",
        "function": {
            "name": "knowledge_search",
            "description": "Search the knowledge base for passages relevant to a query.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
    messages = [
        {"role": "system", "content": "You answer from the knowledge base."},
        {"role": "user", "content": "How do refunds work?"},
        assistant_message(Completion(content=None, tool_calls=[call])),
        {"role": "tool", "tool_call_id": "call_1", "content": "Refunds within 30 days."},
    ]
    complete = llm.completer(model="gpt-4o-mini", temperature=0.2)
    answer = complete(messages, [schema], 300.0, 64)

    assert answer.finish_reason in ("stop", "length", "tool_calls")
    assert answer.prompt_tokens > 0
    assert not answer.failed_attempts
