"""Cancelling runs with execution.cancel: queued at once, running at its next step."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from executions.models import Execution
from protocol import keys
from protocol.messages import CANCEL
from tests.helpers import agent_run, callbacks, consume, push, wait_for, work


def cancel_message(tenant_id: str = "tenant-a", **data) -> dict:
    return {
        "action_id": str(uuid.uuid4()),
        "action_type": CANCEL,
        "task_id": "canceller",
        "tenant_id": tenant_id,
        "tenant_tier": "free",
        "correlation_id": str(uuid.uuid4()),
        "callback_queue": "canceller:replies",
        "data": data,
    }


def cancel_reply(redis) -> dict:
    return json.loads(redis.rpop("canceller:replies"))


@pytest.mark.django_db
def test_a_queued_run_is_cancelled_at_once_with_one_callback(peers, llm, redis):
    message = agent_run()
    push(message)
    consume()
    execution = Execution.objects.get()
    push(cancel_message(execution_id=str(execution.id)))
    consume()
    work()  # its job finds the run over and does nothing

    execution.refresh_from_db()
    assert execution.status == "cancelled"
    assert execution.error_code == "CANCELLED"
    assert llm.requests == []
    sent = callbacks()
    assert [(c["data"]["status"], c["data"]["error"]["code"]) for c in sent] == [
        ("cancelled", "CANCELLED")
    ]
    reply = cancel_reply(redis)
    assert reply["success"] is True
    assert reply["data"] == {"execution_ids": [str(execution.id)]}


@pytest.mark.django_db
def test_cancelling_by_task_id_and_an_ended_run(peers, llm, redis):
    message = agent_run()
    push(message)
    consume()
    push(cancel_message(task_id=message["task_id"]))
    consume()
    assert cancel_reply(redis)["success"] is True
    push(cancel_message(task_id=message["task_id"]))
    consume()
    reply = cancel_reply(redis)
    assert (reply["success"], reply["error"]["code"]) == (False, "ALREADY_FINISHED")
    assert len(callbacks()) == 1


@pytest.mark.django_db
def test_a_tenant_cannot_cancel_another_tenants_run(redis):
    push(agent_run())
    consume()
    execution = Execution.objects.get()
    push(cancel_message(tenant_id="tenant-b", execution_id=str(execution.id)))
    push(cancel_message(execution_id="not-a-uuid"))
    consume()
    assert cancel_reply(redis)["error"]["code"] == "NOT_FOUND"
    assert cancel_reply(redis)["error"]["code"] == "NOT_FOUND"
    execution.refresh_from_db()
    assert execution.status == "queued"


@pytest.mark.django_db
def test_a_cancel_without_a_target_is_dead_lettered(redis):
    push(cancel_message())
    consume()
    letter = json.loads(redis.rpop(keys.DEAD_LETTER))
    assert "execution_id or task_id is required" in letter["error"]["message"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_running_run_with_a_hung_llm_is_cut_and_keeps_its_steps(peers, llm, redis):
    llm.push_tool_call("knowledge_search", {"query": "refunds"})
    llm.push_hang(30)
    message = agent_run(agent_id="support-bot")
    push(message)
    consume()
    execution = Execution.objects.get()

    def cancel_when_hung() -> None:
        wait_for(lambda: len(llm.requests) == 2, timeout=20)
        push(cancel_message(execution_id=str(execution.id)))

    canceller = threading.Thread(target=cancel_when_hung, daemon=True)
    canceller.start()
    work()  # the consumer beside the worker takes the cancel
    canceller.join(timeout=5)

    execution.refresh_from_db()
    assert execution.status == "cancelled"
    assert execution.stop_reason == "cancelled"
    # Cut while the model hung, not when its 30 s were over.
    assert execution.duration_ms < 15_000
    assert execution.steps.filter(kind="tool").count() == 1
    sent = callbacks()
    assert [c["data"]["status"] for c in sent] == ["cancelled"]
    assert sent[0]["data"]["stop_reason"] == "cancelled"
    assert sent[0]["data"]["tool_calls"][0]["name"] == "knowledge_search"
