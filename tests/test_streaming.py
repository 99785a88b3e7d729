"""Streamed answers (`data.stream`): delta events as the text arrives, the callback unchanged."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from executions.models import Execution
from protocol import keys
from protocol.messages import CANCEL, RunRequest
from tests.helpers import agent_run, callbacks, consume, push, run_one, wait_for, work

pytestmark = pytest.mark.django_db


def stream_events(redis, execution_id) -> list[dict]:
    entries = redis.xrange(keys.events(str(execution_id)))
    return [json.loads(fields[b"event"]) for _, fields in entries]


def deltas(events: list[dict]) -> list[str]:
    return [e["text"] for e in events if e["type"] == "delta"]


def test_the_deltas_of_a_streamed_run_concatenate_to_the_callbacks_response(peers, llm, redis):
    text = "Refunds are issued within five working days of the return reaching us."
    llm.push_stream(text, chunk_sleep=0.05)  # paced, as a model writes
    execution = run_one(agent_run(stream=True))

    request = llm.requests[0]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    events = stream_events(redis, execution.id)
    data = callbacks()[0]["data"]
    assert data["status"] == "completed"
    assert data["response"] == text
    assert "".join(deltas(events)) == text
    assert len(deltas(events)) > 1  # chunks that arrive together go out as one delta
    # The usage is the final chunk's, as a plain call's would be.
    assert data["usage"]["completion_tokens"] == len(text) // 4
    assert data["usage"]["prompt_tokens"] > 0
    # Every delta comes before the step that records the answer, and done is last.
    types = [e["type"] for e in events]
    assert types.index("step") > max(i for i, t in enumerate(types) if t == "delta")
    assert types[-1] == "done"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_without_stream_the_call_is_plain_and_no_delta_is_written(peers, llm, redis):
    execution = run_one(agent_run())
    assert "stream" not in llm.requests[0]
    assert deltas(stream_events(redis, execution.id)) == []


def test_a_streamed_tool_call_is_assembled_from_its_fragments(peers, llm, redis):
    arguments = {"query": "How do refunds work for orders paid by card?"}
    llm.push_tool_call("knowledge_search", arguments)
    execution = run_one(agent_run(agent_id="support-bot", stream=True))

    assert execution.status == "completed"
    assert all(request["stream"] for request in llm.requests)
    tool = execution.steps.get(kind="tool")
    assert tool.input == arguments
    data = callbacks()[0]["data"]
    assert data["tool_calls"][0]["arguments"] == arguments
    assert data["sources"][0]["document_id"] == "kb-1-refunds"
    # The model's second answer was streamed too, and is the response.
    assert "".join(deltas(stream_events(redis, execution.id))) == data["response"]


def cancel_message(execution_id: str) -> dict:
    return {
        "action_id": str(uuid.uuid4()),
        "action_type": CANCEL,
        "task_id": "canceller",
        "tenant_id": "tenant-a",
        "tenant_tier": "free",
        "data": {"execution_id": execution_id},
    }


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_cancel_during_a_streamed_answer_cuts_the_call_and_ends_with_done(peers, llm, redis):
    cut_before = llm.streams_cut
    llm.push_stream("word " * 200, chunk_sleep=0.05)  # 250 chunks: about 12 s in all
    push(agent_run(stream=True))
    consume()
    execution = Execution.objects.get()

    def cancel_once_text_arrives() -> None:
        wait_for(lambda: deltas(stream_events(redis, execution.id)), timeout=30)
        push(cancel_message(str(execution.id)))

    canceller = threading.Thread(target=cancel_once_text_arrives, daemon=True)
    canceller.start()
    work()
    canceller.join(timeout=5)

    execution.refresh_from_db()
    assert execution.status == "cancelled"
    assert [c["data"]["status"] for c in callbacks()] == ["cancelled"]
    events = stream_events(redis, execution.id)
    assert deltas(events)
    assert events[-1]["type"] == "done"
    assert events[-1]["callback"]["error"]["code"] == "CANCELLED"
    # The stand-in saw its answer cut before its end.
    wait_for(lambda: llm.streams_cut == cut_before + 1, timeout=10, what="the stream to be cut")


def test_a_stream_that_falls_silent_is_an_llm_error(peers, llm, redis, settings):
    settings.AES_LLM_STREAM_IDLE_SECONDS = 0.5
    llm.push_stream("The answer is coming, but", stall_after=3)
    execution = run_one(agent_run(stream=True))

    assert execution.status == "failed"
    assert execution.error_code == "LLM_ERROR"
    assert "silent" in execution.error_message
    events = stream_events(redis, execution.id)
    assert "".join(deltas(events)) == "The answer is coming, but"[:8]
    assert events[-1]["type"] == "done"
    assert len(llm.requests) == 1  # text was published: not tried again


def test_the_runs_deadline_cuts_a_streamed_answer(peers, llm, redis):
    cut_before = llm.streams_cut
    llm.push_stream("word " * 200, chunk_sleep=0.05)
    execution = run_one(agent_run(stream=True, timeout=1))

    assert execution.status == "timeout"
    assert execution.error_code == "EXECUTION_TIMEOUT"
    events = stream_events(redis, execution.id)
    assert events[-1]["type"] == "done"
    assert events[-1]["callback"]["status"] == "timeout"
    assert deltas(events)  # it was cut while it wrote, not before it began
    wait_for(lambda: llm.streams_cut == cut_before + 1, timeout=10, what="the stream to be cut")


@pytest.mark.django_free
def test_the_api_run_request_carries_stream_into_the_message_data():
    body = {"agent_id": "plain-bot", "message": "Hi", "stream": True}
    assert RunRequest.model_validate(body).run_data()["stream"] is True
    # Unset, the message's data says nothing of it, as before.
    del body["stream"]
    assert "stream" not in RunRequest.model_validate(body).run_data()
