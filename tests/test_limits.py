"""Tier limits from the Tier table, enforced on runs; edits apply from the next run."""

from __future__ import annotations

import pytest

from executions import gates, lifecycle
from executions.models import Execution
from executions.outcome import Outcome
from protocol import keys
from protocol.messages import QS_REQUEST
from tests.helpers import agent_run, callbacks, consume, push, run_one, work
from tiers.models import Tier

pytestmark = pytest.mark.django_db


def set_free(**limits) -> None:
    tier = Tier.objects.get(name="free")
    for field, value in limits.items():
        setattr(tier, field, value)
    tier.save()  # the save signal clears this process's tier cache


def test_max_iterations_fails_the_run_and_keeps_its_partial_output(peers, llm):
    for _ in range(3):
        llm.push_tool_call("knowledge_search", {"query": "refunds"})
    execution = run_one(agent_run(agent_id="support-bot"))

    assert execution.status == "failed"
    assert execution.error_code == "MAX_ITERATIONS"
    assert execution.stop_reason == "max_iterations"
    assert execution.iterations == 3
    # The search asked for on the third and last call is not made: nothing would read it.
    assert execution.steps.filter(kind="tool").count() == 2
    assert peers.peers.handled.get(QS_REQUEST) == 2
    data = callbacks()[0]["data"]
    assert data["error"]["code"] == "MAX_ITERATIONS"
    assert data["stop_reason"] == "max_iterations"
    assert len(data["tool_calls"]) == 2
    assert data["sources"]


def test_a_request_may_lower_max_iterations_but_not_raise_it(peers, llm):
    llm.push_tool_call("knowledge_search", {"query": "a"})
    lowered = run_one(agent_run(agent_id="support-bot", max_iterations=1))
    assert (lowered.error_code, lowered.iterations) == ("MAX_ITERATIONS", 1)

    for _ in range(4):
        llm.push_tool_call("knowledge_search", {"query": "b"})
    raised = run_one(agent_run(agent_id="support-bot", max_iterations=50))
    assert (raised.error_code, raised.iterations) == ("MAX_ITERATIONS", 3)


def test_max_tokens_caps_each_call_and_the_whole_run(peers, llm):
    set_free(max_tokens=251)
    for _ in range(3):
        llm.push_tool_call("knowledge_search", {"query": "refunds"})
    execution = run_one(agent_run(agent_id="support-bot", message="refunds?"))

    assert llm.requests[0]["max_tokens"] < 251  # what the prompt leaves of the budget
    assert execution.error_code == "MAX_ITERATIONS"
    assert execution.stop_reason == "token_budget"
    assert "token budget of 251" in execution.error_message
    assert execution.total_tokens <= 251 * 1.05


def test_max_history_messages_trims_the_history_given_to_the_model(peers, llm):
    set_free(max_history_messages=1)
    run_one(agent_run(session_id="demo-session", message="now"))
    history = peers.fixture["sessions"]["demo-session"]
    contents = [m["content"] for m in llm.requests[0]["messages"] if m["role"] != "system"]
    assert contents == [history[-1]["content"], "now"]


def test_the_eleventh_free_run_in_a_minute_is_rate_limited_before_any_llm_call(peers, llm):
    messages = [agent_run() for _ in range(11)]
    for message in messages:
        push(message)
    consume()
    work()
    statuses = [Execution.objects.get(action_id=m["action_id"]) for m in messages]
    assert [e.status for e in statuses] == ["completed"] * 10 + ["rejected"]
    assert statuses[-1].error_code == "RATE_LIMITED"
    assert len(llm.requests) == 10
    assert callbacks()[-1]["data"]["error"]["code"] == "RATE_LIMITED"


def test_an_unlimited_tier_is_not_rate_limited(peers, llm):
    for _ in range(12):
        push(agent_run(tier="enterprise"), "enterprise")
    consume()
    work()
    assert set(Execution.objects.values_list("status", flat=True)) == {"completed"}


def hold_both_free_slots() -> list[Execution]:
    """Start two runs of tenant-a by hand: they hold the free tier's two slots."""
    holders = []
    for _ in range(2):
        message = agent_run()
        push(message)
        consume()
        holder = Execution.objects.get(action_id=message["action_id"])
        assert gates.acquire_slot("tenant-a", str(holder.id), 2, 30)
        holder.start(Tier.objects.get(name="free").limits(), 30)
        holders.append(holder)
    return holders


def test_a_run_over_the_concurrency_limit_waits_for_a_slot_and_then_runs(peers, llm):
    holders = hold_both_free_slots()
    llm_calls_before = len(llm.requests)

    waiting = run_one(agent_run())
    assert waiting.status == "queued"  # not lost, not failed: waiting
    assert len(llm.requests) == llm_calls_before

    # One holder ends; the waiting run is woken and completes.
    lifecycle.conclude(holders[0], Outcome.internal("test: the holder ended"))
    work()
    waiting.refresh_from_db()
    assert waiting.status == "completed"
    assert [c["data"]["status"] for c in callbacks()] == ["failed", "completed"]


def test_a_tier_edit_applies_from_the_next_run_and_runs_keep_their_snapshot(peers, llm):
    first = run_one(agent_run())
    set_free(max_iterations=7, timeout_seconds=45)
    second = run_one(agent_run())
    assert first.limits["max_iterations"] == 3
    assert second.limits["max_iterations"] == 7
    assert second.limits["timeout_seconds"] == 45


def test_runs_that_waited_before_a_limit_was_lifted_run_and_leave_no_one_waiting(peers, llm, redis):
    holders = hold_both_free_slots()
    first, second = run_one(agent_run()), run_one(agent_run())
    assert (first.status, second.status) == ("queued", "queued")

    # The limit is lifted; a holder's end wakes the first waiter, which runs
    # without a slot, and its own end wakes the second.
    set_free(max_concurrent_executions=None)
    lifecycle.conclude(holders[0], Outcome.internal("test: the holder ended"))
    work()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("completed", "completed")
    assert first.limits["max_concurrent_executions"] is None
    assert redis.lrange(keys.slot_waiters("tenant-a"), 0, -1) == []

    # With the limit back, a new run is not kept behind either of them.
    set_free(max_concurrent_executions=2)
    lifecycle.conclude(holders[1], Outcome.internal("test: the holder ended"))
    assert run_one(agent_run()).status == "completed"
