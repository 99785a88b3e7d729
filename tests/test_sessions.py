"""Runs of one session never interleave and each sees the messages before it."""

from __future__ import annotations

import pytest

from executions import gates
from executions.jobs import run_execution
from executions.models import Execution
from tests.helpers import agent_run, consume, push, work

pytestmark = pytest.mark.django_db


def test_two_runs_of_a_session_pushed_together_run_in_order_and_see_each_other(peers, llm):
    first = agent_run(session_id="s-order", message="first question")
    second = agent_run(session_id="s-order", message="second question")
    push(first)
    push(second)
    consume()
    a = Execution.objects.get(action_id=first["action_id"])
    b = Execution.objects.get(action_id=second["action_id"])

    # A worker that picks the second run first must leave it waiting.
    assert run_execution(str(b.id)) == "waiting-for-session"
    b.refresh_from_db()
    assert b.status == "queued"

    work()
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, b.status) == ("completed", "completed")
    assert a.finished_at <= b.started_at
    prompt = [m["content"] for m in llm.requests[1]["messages"]]
    assert prompt[-3:] == ["first question", a.response, "second question"]


def test_a_session_is_not_blocked_by_a_run_that_ended_without_leaving_its_line(peers, llm):
    stale = agent_run(session_id="s-stale")
    push(stale)
    consume()
    work()
    ended = Execution.objects.get(action_id=stale["action_id"])
    # As if its end had crashed before it left the line.
    gates.join_session("tenant-a", "s-stale", str(ended.id))
    assert gates.session_head("tenant-a", "s-stale") == str(ended.id)

    nxt = agent_run(session_id="s-stale")
    push(nxt)
    consume()
    work()
    assert Execution.objects.get(action_id=nxt["action_id"]).status == "completed"


def test_runs_of_different_sessions_do_not_wait_for_each_other(peers, llm):
    one = agent_run(session_id="s-one")
    other = agent_run(session_id="s-other")
    push(one)
    push(other)
    consume()
    b = Execution.objects.get(action_id=other["action_id"])
    assert run_execution(str(b.id)) == "completed"
