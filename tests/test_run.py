"""One agent run end to end: queued message → Execution → RQ job → one callback."""

from __future__ import annotations

import json

import pytest
from rq.job import Job

from executions.models import Execution, ExecutionStep
from protocol import keys
from protocol.messages import (
    AMS_GET_AGENT_CONFIG,
    CS_GET_HISTORY,
    CS_SAVE_MESSAGE,
    EXECUTION_CALLBACK,
)
from standins.peers import conversation_key
from tests.helpers import agent_run, callbacks, consume, push, work

pytestmark = pytest.mark.django_db


def run_one(message: dict, tier: str = "free") -> tuple[Execution, list[dict]]:
    push(message, tier)
    consume()
    work()
    return Execution.objects.get(action_id=message["action_id"]), callbacks()


def test_redis_keeps_a_finished_run_for_a_bounded_time(peers, llm, redis):
    # Redis's memory grows with runs/s times what each run leaves behind:
    # RQ's job (the row is the record) and the callback's push-once marker.
    execution, sent = run_one(agent_run(agent_id="plain-bot"))

    assert execution.status == "completed" and len(sent) == 1
    assert 0 < redis.ttl(Job.key_for(str(execution.id))) <= 60
    assert 0 < redis.ttl(keys.outbox(str(execution.id))) <= 3600


def test_completed_run_records_the_answer_and_sends_one_callback(peers, llm):
    message = agent_run(agent_id="plain-bot", message="What time is it?")
    execution, sent = run_one(message)

    assert execution.status == "completed"
    assert execution.response == "(stand-in) You said: What time is it?"
    assert execution.iterations == 1
    assert execution.total_tokens > 0
    assert execution.total_tokens == execution.prompt_tokens + execution.completion_tokens
    assert execution.started_at and execution.finished_at and execution.duration_ms is not None
    assert execution.limits["max_iterations"] == 3  # the free tier's snapshot
    assert execution.callback_sent_at is not None
    assert [step.kind for step in execution.steps.all()] == ["llm"]

    assert len(sent) == 1
    callback = sent[0]
    assert callback["action_type"] == EXECUTION_CALLBACK
    for field in ("task_id", "tenant_id", "session_id", "correlation_id"):
        assert callback[field] == message[field]
    assert callback["tenant_tier"] == "free"
    assert callback["metadata"] == {"origin": "tests"}
    data = callback["data"]
    assert data["execution_id"] == str(execution.id)
    assert data["status"] == "completed"
    assert data["response"] == execution.response
    assert data["agent_id"] == "plain-bot"
    assert data["iterations"] == 1
    assert data["usage"]["total_tokens"] == execution.total_tokens
    assert data["error"] is None
    assert data["execution_time_ms"] >= 0


def test_the_agents_prompt_model_and_the_history_reach_the_llm(peers, llm):
    execution, _ = run_one(agent_run(agent_id="plain-bot", session_id="demo-session"))
    body = llm.requests[0]
    agent = peers.fixture["agents"]["*"]["plain-bot"]
    assert body["model"] == agent["model"]
    assert body["messages"][0] == {"role": "system", "content": agent["system_prompt"]}
    history = peers.fixture["sessions"]["demo-session"]
    assert [m["content"] for m in body["messages"][1:-1]] == [m["content"] for m in history]
    assert body["messages"][-1] == {"role": "user", "content": "Hello there"}
    assert execution.status == "completed"


def test_user_and_assistant_messages_are_saved_and_appended_to_the_cached_history(
    peers, llm, redis
):
    first, _ = run_one(agent_run(session_id="s-1", message="first question"))
    second, _ = run_one(agent_run(session_id="s-1", message="second question"))

    saved = [json.loads(m) for m in redis.lrange(conversation_key("s-1"), 0, -1)]
    assert [(m["role"], m["content"]) for m in saved] == [
        ("user", "first question"),
        ("assistant", first.response),
        ("user", "second question"),
        ("assistant", second.response),
    ]
    # The second run saw the first exchange, served from the cache (one CS read).
    contents = [m["content"] for m in llm.requests[1]["messages"]]
    assert contents[-3:] == ["first question", first.response, "second question"]
    assert peers.peers.handled.get(CS_GET_HISTORY) == 1
    cached = json.loads(redis.get(keys.history("tenant-a", "s-1")))
    assert [m["content"] for m in cached][-1] == second.response


def test_agent_config_is_cached_for_the_tier_ttl(peers, llm, redis):
    run_one(agent_run(agent_id="plain-bot"))
    run_one(agent_run(agent_id="plain-bot"))
    assert peers.peers.handled.get(AMS_GET_AGENT_CONFIG) == 1
    ttl = redis.ttl(keys.agent_config("tenant-a", "plain-bot"))
    assert 0 < ttl <= 300


def test_professional_tier_waits_for_persistence(peers, llm):
    execution, sent = run_one(agent_run(tier="professional", session_id="s-2"), "professional")
    assert execution.status == "completed"
    assert peers.peers.handled.get(CS_SAVE_MESSAGE) == 2
    assert sent[0]["data"]["status"] == "completed"


@pytest.mark.parametrize(
    ("agent_id", "tier", "code"),
    [
        ("no-such-bot", "free", "AGENT_NOT_FOUND"),
        ("retired-bot", "free", "AGENT_INACTIVE"),
        ("enterprise-bot", "free", "TIER_INSUFFICIENT"),
    ],
)
def test_refused_runs_are_rejected_without_an_llm_call(peers, llm, agent_id, tier, code):
    execution, sent = run_one(agent_run(agent_id=agent_id, tier=tier), tier)
    assert execution.status == "rejected"
    assert execution.error_code == code
    assert llm.requests == []
    assert len(sent) == 1
    assert sent[0]["data"]["status"] == "rejected"
    assert sent[0]["data"]["error"]["code"] == code
    assert (execution.stop_reason, sent[0]["data"]["stop_reason"]) == ("error", "error")


def test_enterprise_agent_runs_for_an_enterprise_tenant(peers, llm):
    execution, _ = run_one(agent_run(agent_id="enterprise-bot", tier="enterprise"), "enterprise")
    assert execution.status == "completed"


def test_an_ams_that_never_answers_fails_the_run_with_upstream_timeout(start_peers, llm, settings):
    settings.AES_PEER_TIMEOUT_SECONDS = 0.5
    start_peers(silent={"management"})
    execution, sent = run_one(agent_run())
    assert execution.status == "failed"
    assert execution.error_code == "UPSTREAM_TIMEOUT"
    assert [c["data"]["error"]["code"] for c in sent] == ["UPSTREAM_TIMEOUT"]
    assert llm.requests == []


def test_a_refused_llm_request_fails_the_run_with_llm_error_at_once(peers, llm):
    llm.push_error(400, "bad request")
    execution, sent = run_one(agent_run())
    assert execution.status == "failed"
    assert execution.error_code == "LLM_ERROR"
    assert "400" in execution.error_message
    assert len(llm.requests) == 1
    assert sent[0]["data"]["error"]["code"] == "LLM_ERROR"


def test_llm_overload_and_server_errors_are_retried(peers, llm):
    llm.push_error(429, "slow down", headers={"retry-after-ms": "20"})
    llm.push_error(503, "overloaded", headers={"retry-after": "0.02"})
    execution, sent = run_one(agent_run(message="still there?"))
    assert execution.status == "completed"
    assert execution.response == "(stand-in) You said: still there?"
    assert len(llm.requests) == 3


def test_an_llm_that_keeps_failing_ends_in_llm_error(peers, llm):
    for _ in range(4):
        llm.push_error(503, "overloaded", headers={"retry-after-ms": "10"})
    execution, sent = run_one(agent_run())
    assert execution.status == "failed"
    assert execution.error_code == "LLM_ERROR"
    assert execution.error_message == "the model server refused the request (HTTP 503, 4 attempts)"
    assert len(llm.requests) == 4


def test_llm_slower_than_the_run_timeout_ends_in_timeout(peers, llm):
    llm.push_hang(3)
    execution, sent = run_one(agent_run(timeout=1))
    assert execution.status == "timeout"
    assert execution.error_code == "EXECUTION_TIMEOUT"
    assert sent[0]["data"]["status"] == "timeout"


def test_a_run_without_callback_queue_is_recorded_and_sends_nothing(peers, llm, redis):
    execution, _ = run_one(agent_run(callback_queue=None))
    assert execution.status == "completed"
    assert redis.keys("test:*") == []


def test_a_redelivered_job_does_not_run_twice(peers, llm):
    from executions.jobs import run_execution

    execution, sent = run_one(agent_run())
    assert run_execution(str(execution.id)) == "completed"
    assert len(callbacks()) == 1
    assert len(llm.requests) == 1


def test_a_job_reads_its_execution_as_the_orm_does(peers, llm):
    push(agent_run())
    consume()
    work()
    stored = Execution.objects.get()
    loaded = Execution.load(str(stored.id))
    for field in Execution._meta.concrete_fields:
        assert getattr(loaded, field.attname) == getattr(stored, field.attname), field.name
    assert loaded.finished_at.tzinfo is not None and loaded.status == "completed"
    with pytest.raises(Execution.DoesNotExist):
        Execution.load("00000000-0000-0000-0000-000000000000")


def test_a_recorded_step_is_the_row_the_database_holds(peers, llm):
    push(agent_run())
    consume()
    work()
    execution = Execution.objects.get()
    execution.resumes = 1  # as a resumed attempt records it
    step = execution.add_step(
        "tool",
        "lookup",
        input={"query": "refunds", "tags": ["a", "b"]},
        output={"summary": "…"},
        replay={"tool_call_id": "call_1", "content": "ok"},
        duration_ms=12,
    )
    stored = ExecutionStep.objects.get(pk=step.pk)
    for field in ExecutionStep._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(step, field.attname), field.name
    assert (stored.attempt, stored.created_at.tzinfo is not None) == (2, True)
    assert list(execution.steps.values_list("name", flat=True)) == ["llm_call_1", "lookup"]


def test_a_recorded_execution_is_the_row_the_database_holds(peers, llm):
    execution, created = Execution.record(
        "tenant-a",
        "action-1",
        task_id="task-1",
        tier="free",
        agent_id="plain-bot",
        callback_queue="test:callbacks",
        message="Hello",
        request={"data": {"agent_id": "plain-bot", "message": "Hello"}, "tags": ["a", "ü"]},
    )
    assert created and not execution._state.adding
    stored = Execution.objects.get(pk=execution.pk)
    for field in Execution._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(execution, field.attname), field.name
    assert (stored.status, stored.queued_at.tzinfo is not None) == ("queued", True)
    again, created = Execution.record("tenant-a", "action-1", message="other")
    assert not created and again.pk == execution.pk and again.message == "Hello"
