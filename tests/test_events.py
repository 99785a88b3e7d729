"""A run's events in its Redis Stream (PROTOCOL.md §8): complete, in order, without gaps."""

from __future__ import annotations

import json

import pytest

from executions import events, outbox
from executions.models import Execution
from protocol import keys
from tests.helpers import agent_run, callbacks, consume, push, run_one, work

pytestmark = pytest.mark.django_db


def stream_events(redis, execution_id) -> list[dict]:
    """The run's events as a platform service reads them: XRANGE from the start."""
    entries = redis.xrange(keys.events(str(execution_id)))
    events = [json.loads(fields[b"event"]) for _, fields in entries]
    # The entry ids are 0-{seq}: "the events after N" is XREAD ... 0-N.
    assert [entry_id.decode() for entry_id, _ in entries] == [f"0-{e['seq']}" for e in events]
    return events


def sent_status(execution_id: str, status: str, expect=None) -> events.RunEvents:
    """A writer of the run that says what it expects of the stream, then sends `status`."""
    writer = events.RunEvents(execution_id)
    if expect is not None:
        expect(writer)
    writer.add(events.STATUS, status=status)
    writer.flush()
    return writer


def test_the_events_of_a_run_that_uses_a_tool_are_complete_and_in_order(peers, llm, redis):
    execution = run_one(agent_run(agent_id="support-bot", message="How do refunds work?"))

    events = stream_events(redis, execution.id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [(e["type"], e.get("status") or (e.get("step") or {}).get("name")) for e in events] == [
        ("status", "queued"),
        ("status", "running"),
        ("step", "llm_call_1"),
        ("step", "knowledge_search"),
        ("step", "llm_call_2"),
        ("done", None),
    ]
    assert all(e["execution_id"] == str(execution.id) and e["at"] for e in events)
    tool = events[3]["step"]
    assert tool["kind"] == "tool" and tool["input"] == {"query": "How do refunds work?"}
    # `done` carries the callback's data, as the callback queue got it.
    assert events[-1]["callback"] == callbacks()[0]["data"]
    assert events[-1]["callback"]["status"] == "completed"
    # Kept an hour once the run has ended.
    assert 3500 < redis.ttl(keys.events(str(execution.id))) <= 3600


def test_a_redelivered_message_adds_no_second_queued_event(peers, llm, redis):
    message = agent_run()
    push(message)
    push(message)
    consume()
    work()
    execution = Execution.objects.get()
    types = [e["type"] for e in stream_events(redis, execution.id)]
    assert types == ["status", "status", "step", "done"]


def test_a_callback_sent_again_writes_no_second_done(peers, llm, redis):
    execution = run_one(agent_run())
    outbox.deliver(execution, again=True)
    assert len(callbacks()) == 2
    types = [e["type"] for e in stream_events(redis, execution.id)]
    assert types == ["status", "status", "step", "done"]


def test_writers_whose_knowledge_of_the_stream_is_stale_still_number_without_gaps(redis):
    # Two processes' views of one run: each knows only the seqs it wrote.
    execution_id = "3f0c6a52-0d8e-4a8e-9d51-7d3c1f1b2a10"
    here, there = events.RunEvents(execution_id), events.RunEvents(execution_id)
    here.expect_new_stream()
    here.add(events.STATUS, status="queued")
    here.flush()
    there.add(events.STATUS, status="running")
    there.add(events.DELTA, text="a")
    there.flush()  # knows nothing: reads the stream's newest
    here.add(events.DELTA, text="b")
    here.flush()  # its newest (1) is stale: refused, then read
    there.add(events.DELTA, text="c")
    there.flush()  # its newest (3) is stale too
    here.add(events.DELTA, text="d")
    here.flush()  # knows 5 from its own last write: taken as is

    written = stream_events(redis, execution_id)
    assert [e["seq"] for e in written] == [1, 2, 3, 4, 5, 6]
    assert [e.get("text") or e["status"] for e in written] == [
        "queued",
        "running",
        "a",
        "b",
        "c",
        "d",
    ]
    assert 0 < redis.ttl(keys.events(execution_id)) <= keys.EVENTS_LIVE_TTL_SECONDS


def test_a_run_said_to_be_new_whose_stream_exists_goes_on_from_it(redis):
    execution_id = "7a4d0b1e-52c3-4b6f-8e0a-1c9d2e3f4a5b"
    sent_status(execution_id, "queued")
    sent_status(execution_id, "running", expect=events.RunEvents.expect_new_stream)
    assert [e["seq"] for e in stream_events(redis, execution_id)] == [1, 2]


def test_a_flush_with_nothing_to_send_keeps_what_the_writer_knows(redis):
    execution_id = "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b"
    writer = sent_status(execution_id, "queued", expect=events.RunEvents.expect_new_stream)
    writer.flush()  # nothing queued: no round trip, and the newest seq is still known
    assert writer.take() == ("1", [])


def test_a_starting_run_numbers_on_from_whatever_its_stream_holds(redis):
    # The worker expects its run's stream to hold only `queued`; Redis says
    # when it holds more, or has gone (a run queued past the stream's TTL).
    execution_id = "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    consumer = events.RunEvents(execution_id)
    consumer.expect_new_stream()
    consumer.add(events.STATUS, status="queued")
    consumer.add(events.DELTA, text="more than queued")
    consumer.flush()
    sent_status(execution_id, "running", expect=events.RunEvents.expect_queued_only)
    assert [e["seq"] for e in stream_events(redis, execution_id)] == [1, 2, 3]

    gone = "6d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a"
    sent_status(gone, "running", expect=events.RunEvents.expect_queued_only)
    assert [e["status"] for e in stream_events(redis, gone)] == ["running"]
    assert stream_events(redis, gone)[0]["seq"] == 1
    assert 0 < redis.ttl(keys.events(gone)) <= keys.EVENTS_LIVE_TTL_SECONDS


def test_a_stream_that_has_gone_is_numbered_afresh_not_from_the_writers_last_seq(redis):
    execution_id = "8e9f0a1b-2c3d-4e5f-9a6b-7c8d9e0f1a2b"
    stream = keys.events(execution_id)
    writer = events.RunEvents(execution_id)
    writer.expect_new_stream()
    for text in "abc":
        writer.add(events.DELTA, text=text)
    writer.flush()
    redis.delete(stream)
    writer.add(events.DELTA, text="d")
    writer.add(events.DELTA, text="e")
    writer.flush()  # two events, seq 3 known: the script
    assert [(e["seq"], e["text"]) for e in stream_events(redis, execution_id)] == [
        (1, "d"),
        (2, "e"),
    ]
    redis.delete(stream)
    writer.add(events.DELTA, text="f")
    writer.flush()  # one event, seq 2 known: a plain XADD
    assert [(e["seq"], e["text"]) for e in stream_events(redis, execution_id)] == [(1, "f")]
    assert 0 < redis.ttl(stream) <= keys.EVENTS_LIVE_TTL_SECONDS
