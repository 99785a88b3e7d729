"""Proxy actions (§6): other services read agents and history through the AES."""

from __future__ import annotations

import json
import uuid

import pytest

from protocol.messages import AMS_GET_AGENT_CONFIG, GET_AGENT_CONFIG, GET_CONTEXT, GET_HISTORY
from tests.helpers import consume, dead_letters, push

pytestmark = pytest.mark.django_db


def proxy_request(action_type: str, data: dict, *, reply_to: str | None = "caller:replies"):
    return {
        "action_id": str(uuid.uuid4()),
        "action_type": action_type,
        "task_id": "task-p",
        "tenant_id": "tenant-a",
        "tenant_tier": "free",
        "session_id": data.get("session_id"),
        "correlation_id": str(uuid.uuid4()) if reply_to else None,
        "callback_queue": reply_to,
        "data": data,
    }


def ask(redis, action_type: str, data: dict) -> tuple[dict, dict]:
    request = proxy_request(action_type, data)
    push(request)
    consume()  # returns once the pool has answered
    raw = redis.rpop("caller:replies")
    assert raw is not None, "no reply"
    return request, json.loads(raw)


def test_get_agent_config_is_answered_and_then_served_from_the_cache(peers, redis):
    request, reply = ask(redis, GET_AGENT_CONFIG, {"agent_id": "support-bot"})
    assert reply["success"] is True
    assert reply["correlation_id"] == request["correlation_id"]
    assert reply["task_id"] == "task-p"
    assert reply["error"] is None
    assert reply["data"]["agent"]["agent_id"] == "support-bot"
    assert reply["data"]["agent"]["collection_ids"] == ["kb-1"]

    push(proxy_request(GET_AGENT_CONFIG, {"agent_id": "support-bot"}))
    consume()
    assert redis.ttl("caller:replies") <= 300
    assert json.loads(redis.rpop("caller:replies"))["success"] is True
    assert peers.peers.handled.get(AMS_GET_AGENT_CONFIG) == 1


def test_get_history_returns_the_sessions_messages_up_to_the_limit(peers, redis):
    _, reply = ask(
        redis,
        GET_HISTORY,
        {"session_id": "demo-session", "limit": 1},
    )
    history = peers.fixture["sessions"]["demo-session"]
    assert reply["success"] is True
    assert [m["content"] for m in reply["data"]["messages"]] == [history[-1]["content"]]


def test_get_context_returns_agent_and_messages(peers, redis):
    _, reply = ask(
        redis,
        GET_CONTEXT,
        {"session_id": "demo-session", "agent_id": "plain-bot"},
    )
    assert reply["data"]["agent"]["agent_id"] == "plain-bot"
    assert len(reply["data"]["messages"]) == len(peers.fixture["sessions"]["demo-session"])


def test_an_unknown_agent_is_answered_with_an_error(peers, redis):
    _, reply = ask(redis, GET_AGENT_CONFIG, {"agent_id": "nobody"})
    assert reply["success"] is False
    assert reply["data"] == {}
    assert reply["error"]["code"] == "AGENT_NOT_FOUND"


def test_invalid_data_is_answered_with_invalid_action(redis):
    _, reply = ask(redis, GET_HISTORY, {"limit": 3})
    assert reply["success"] is False
    assert reply["error"]["code"] == "INVALID_ACTION"
    assert "session_id" in reply["error"]["message"]


def test_a_proxy_action_without_a_reply_queue_is_dead_lettered(redis):
    push(proxy_request(GET_AGENT_CONFIG, {"agent_id": "x"}, reply_to=None))
    consume()
    assert "needs correlation_id and callback_queue" in dead_letters()[0]["error"]["message"]
