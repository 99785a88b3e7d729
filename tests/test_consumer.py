"""The consumer: validation, idempotency, priority, dead letters, recovery."""

from __future__ import annotations

import json
import zlib

import django_rq
import pytest
from rq.job import Job

from executions.models import Execution
from protocol import keys
from tests.helpers import agent_run, callbacks, consume, dead_letters, push, tier_names, work
from workers.consumer import Consumer

pytestmark = pytest.mark.django_db


def test_agent_run_becomes_a_queued_execution_with_a_json_job_carrying_only_its_id(redis):
    message = agent_run(session_id="s-1", conversation_id="c-1")
    push(message)
    consume()

    execution = Execution.objects.get(action_id=message["action_id"])
    assert execution.status == "queued"
    assert (execution.tenant_id, execution.tier, execution.agent_id) == (
        "tenant-a",
        "free",
        "plain-bot",
    )
    assert (execution.session_id, execution.conversation_id) == ("s-1", "c-1")
    assert execution.request == message
    queue = django_rq.get_queue("free")
    assert queue.job_ids == [str(execution.id)]
    job = queue.fetch_job(str(execution.id))
    assert job.func_name == "executions.jobs.run_execution"
    assert job.args == [str(execution.id)]
    # Stored as (compressed) JSON, not a pickle.
    stored = json.loads(zlib.decompress(redis.hget(Job.key_for(str(execution.id)), "data")))
    assert stored[0] == "executions.jobs.run_execution"
    assert stored[2] == [str(execution.id)]
    assert redis.llen(keys.actions("free")) == 0


def test_same_action_id_twice_gives_one_execution_and_one_callback(peers, llm):
    message = agent_run()
    push(message)
    push(message)
    consumer = consume()
    work()
    assert consumer.handled == 2
    assert Execution.objects.filter(action_id=message["action_id"]).count() == 1
    assert len(callbacks()) == 1
    assert len(llm.requests) == 1


def test_primary_agent_id_of_the_execution_context_names_the_agent():
    message = agent_run()
    del message["data"]["agent_id"]
    message["execution_context"] = {"primary_agent_id": "support-bot"}
    push(message)
    consume()
    assert Execution.objects.get().agent_id == "support-bot"


def test_enterprise_is_served_before_free_when_both_wait():
    free = [agent_run(tier="free") for _ in range(3)]
    enterprise = [agent_run(tier="enterprise") for _ in range(2)]
    for message in free:
        push(message, "free")
    for message in enterprise:
        push(message, "enterprise")
    consume()
    order = list(Execution.objects.order_by("queued_at").values_list("action_id", flat=True))
    assert order == [m["action_id"] for m in enterprise + free]


def test_a_message_whose_tier_differs_from_its_list_runs_under_the_list_tier():
    message = agent_run(tier="enterprise")
    push(message, "free")
    consume()
    execution = Execution.objects.get()
    assert execution.tier == "free"
    assert django_rq.get_queue("free").count == 1


def _valid_but(**changes):
    message = agent_run()
    for key, value in changes.items():
        if value is None:
            message.pop(key)
        else:
            message[key] = value
    return json.dumps(message).encode()


INVALID = {
    "not JSON": b"{this is not json",
    "not an object": b'["a", "list"]',
    "invalid UTF-8": b'{"action_id": "\xff\xfe"}',
    "missing action_id": _valid_but(action_id=None),
    "wrong type": _valid_but(task_id=12345),
    "unknown tier": _valid_but(tenant_tier="platinum"),
    "unknown action_type": _valid_but(action_type="execution.self_destruct"),
    "missing message": json.dumps({**agent_run(), "data": {"agent_id": "plain-bot"}}).encode(),
    "no agent": json.dumps({**agent_run(), "data": {"message": "hi"}}).encode(),
    "deeply nested": b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


@pytest.mark.parametrize("raw", INVALID.values(), ids=INVALID.keys())
def test_invalid_messages_are_dead_lettered_and_the_consumer_goes_on(raw):
    push(raw)
    good = agent_run()
    push(good)
    consume()

    letters = dead_letters()
    assert len(letters) == 1
    assert letters[0]["queue"] == keys.actions("free")
    assert letters[0]["error"]["code"] == "INVALID_ACTION"
    assert letters[0]["error"]["message"]
    assert letters[0]["raw"] == raw.decode("utf-8", errors="replace")
    assert letters[0]["received_at"]
    assert Execution.objects.get().action_id == good["action_id"]


def test_an_invalid_message_with_a_callback_queue_gets_an_invalid_action_callback():
    message = agent_run()
    message["data"] = {"agent_id": "plain-bot", "message": ""}
    push(message)
    consume()
    sent = callbacks()
    assert len(sent) == 1
    assert sent[0]["task_id"] == message["task_id"]
    assert sent[0]["correlation_id"] == message["correlation_id"]
    assert sent[0]["data"]["status"] == "rejected"
    assert sent[0]["data"]["execution_id"] is None
    assert sent[0]["data"]["error"]["code"] == "INVALID_ACTION"
    assert sent[0]["data"]["stop_reason"] == "error"
    assert Execution.objects.count() == 0


def test_a_message_over_one_mebibyte_is_dead_lettered_unread(settings):
    message = agent_run(message="x" * (settings.AES_MAX_MESSAGE_BYTES + 1))
    push(message)
    consume()
    letter = dead_letters()[0]
    assert letter["error"]["code"] == "MESSAGE_TOO_LARGE"
    assert letter["truncated"] is True
    assert callbacks() == []  # too large to read a callback queue from
    assert Execution.objects.count() == 0


def test_messages_held_by_a_dead_consumer_are_recovered_once(redis):
    held = agent_run()
    dead = "gone-host:1:deadbeef"
    redis.sadd(keys.CONSUMERS, dead)
    redis.lpush(keys.processing(dead, keys.actions("free")), json.dumps(held))
    waiting = agent_run()
    push(waiting)

    consumer = Consumer(tier_names())
    assert consumer.recover_dead_consumers() == 1
    consumer.run(burst=True)

    # The held message was older: it goes back to the head of the line.
    order = list(Execution.objects.order_by("queued_at").values_list("action_id", flat=True))
    assert order == [held["action_id"], waiting["action_id"]]
    assert redis.exists(keys.processing(dead, keys.actions("free"))) == 0
    assert not redis.sismember(keys.CONSUMERS, dead)


def test_a_live_consumers_messages_are_left_alone(redis, settings):
    other = Consumer(["free"])
    other._heartbeat()
    redis.lpush(keys.processing(other.id, keys.actions("free")), json.dumps(agent_run()))
    assert Consumer(["free"]).recover_dead_consumers() == 0
    assert redis.llen(keys.processing(other.id, keys.actions("free"))) == 1


def test_a_consumer_stopping_returns_nothing_it_has_not_handled(redis):
    push(agent_run())
    consumer = Consumer(["free"])
    consumer.stop()
    consumer.run()
    assert redis.llen(keys.actions("free")) == 1
    assert not redis.sismember(keys.CONSUMERS, consumer.id)
