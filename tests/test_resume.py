"""Runs that outlive their worker (PROTOCOL.md §9): resumed from their journal, never repeated.

Real processes, SIGKILLed, on both worker shapes: a forked work-horse per run
and a threaded worker running several. The LLM is the stand-in, scripted to
ask for a tool, then to hang on the second call until the worker is killed,
then to answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection

from aes_project import redis_clients
from executions import leases, lifecycle, queues, recovery
from executions.models import Execution
from protocol import keys
from protocol.messages import QS_REQUEST
from tests.helpers import (
    agent_run,
    callbacks,
    children,
    consume,
    end,
    pid_alive,
    push,
    rq_worker_pids,
    start_service,
    wait_for,
    work,
)
from tiers import lookup
from workers import liveness

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

# Seconds a lease outlives its last renewal in these tests (the default is 15).
HEARTBEAT_TTL = 3
QUESTION = "How do refunds work?"


def _script_tool_then_hang(llm) -> None:
    """Call 1 asks for knowledge_search; call 2 hangs; the call after it answers."""
    llm.push_tool_call("knowledge_search", {"query": "refunds"})
    llm.push_hang(60)
    llm.push_answer("Refunds take five days.")


def _serve(llm, *args: str, **env: str) -> subprocess.Popen:
    return start_service(
        *args,
        OPENAI_BASE_URL=llm.url,
        AES_RUN_HEARTBEAT_TTL=str(HEARTBEAT_TTL),
        AES_REAPER_INTERVAL_SECONDS="1",
        **env,
    )


def _stop(service: subprocess.Popen) -> None:
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
    end(service)


def _in_second_llm_call(llm) -> None:
    wait_for(lambda: len(llm.requests) >= 2, timeout=60, what="the second LLM call")


@contextmanager
def _hung_in_second_llm_call(llm, redis, *args: str, **env: str) -> Iterator[int]:
    """Serve one run that asked for a tool and hangs in its second LLM call; yield the worker.

    The service is stopped on the way out, and the run must have sent one callback.
    """
    _script_tool_then_hang(llm)
    push(agent_run(tier="enterprise", agent_id="support-bot", message=QUESTION), "enterprise")
    service = _serve(llm, "--rq-workers", "1", *args, **env)
    try:
        _in_second_llm_call(llm)
        (worker,) = rq_worker_pids(redis)
        yield worker
    finally:
        _stop(service)
    assert len(callbacks()) == 1


def _first_calls(llm) -> list[dict]:
    """The LLM requests that carried only the prompt (the run's first call)."""
    return [r for r in llm.requests if r["messages"][-1]["role"] == "user"]


def _assert_resumed_once_and_completed(llm, peers, started: float) -> Execution:
    sent = wait_for(callbacks, timeout=90, what="the callback")
    took = time.monotonic() - started
    execution = Execution.objects.get()
    assert execution.status == "completed", execution.error_message
    assert execution.response == "Refunds take five days."
    assert execution.resumes == 1
    assert [c["data"]["status"] for c in sent] == ["completed"]
    assert sent[0]["data"]["resumes"] == 1
    # The completed calls were not made again: one first LLM call, one QS request.
    assert len(_first_calls(llm)) == 1
    assert peers.peers.handled.get(QS_REQUEST) == 1
    steps = [(s.kind, s.name, s.attempt) for s in execution.steps.all()]
    assert steps == [
        ("llm", "llm_call_1", 1),
        ("tool", "knowledge_search", 1),
        ("llm", "llm_call_2", 2),
    ]
    assert execution.iterations == 2
    # Its events go on from where the lost attempt left them: no gap, no repeat.
    entries = redis_clients.shared().xrange(keys.events(str(execution.id)))
    events = [json.loads(fields[b"event"]) for _, fields in entries]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [(e["type"], e.get("status") or e.get("step", {}).get("name")) for e in events] == [
        ("status", "queued"),
        ("status", "running"),
        ("step", "llm_call_1"),
        ("step", "knowledge_search"),
        ("status", "running"),
        ("step", "llm_call_2"),
        ("done", None),
    ]
    assert events[4].get("resumed") is True
    # Noticed in seconds, not at the run's deadline (enterprise: 300 s).
    assert took < 90
    return execution


def test_a_threaded_worker_killed_mid_run_has_its_run_resumed_where_it_stood(peers, llm, redis):
    with _hung_in_second_llm_call(llm, redis, "--runs-per-worker", "4") as worker:
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        _assert_resumed_once_and_completed(llm, peers, killed)


@pytest.mark.parametrize(
    "whole",
    [False, True],
    ids=["the work-horse, seen by its worker", "horse and worker at once, as with a lost machine"],
)
def test_a_forking_worker_killed_mid_run_has_its_run_resumed_where_it_stood(
    peers, llm, redis, whole
):
    # Alone, the horse's death is seen by its worker; with the worker, by
    # nobody: the run's lapsed lease tells.
    with _hung_in_second_llm_call(llm, redis, "--runs-per-worker", "1") as worker:
        (horse,) = wait_for(lambda: children(worker), what="the work-horse")
        killed = time.monotonic()
        if whole:
            os.kill(worker, signal.SIGKILL)
        os.kill(horse, signal.SIGKILL)
        _assert_resumed_once_and_completed(llm, peers, killed)
        if not whole:
            assert pid_alive(worker)  # the worker lives on and took the resumed run


def test_a_worker_killed_during_a_tool_call_runs_that_tool_again_and_no_llm_call(
    start_peers, llm, redis
):
    # QS answers only after 2 s: the worker dies while the tool call waits.
    peers = start_peers(delay_seconds=2)
    llm.push_tool_call("knowledge_search", {"query": "refunds"})
    llm.push_answer("Refunds take five days.")
    push(agent_run(tier="enterprise", agent_id="support-bot", message=QUESTION), "enterprise")
    service = _serve(llm, "--rq-workers", "1", "--runs-per-worker", "4")
    try:
        wait_for(lambda: peers.peers.handled.get(QS_REQUEST), timeout=60, what="the QS request")
        (worker,) = rq_worker_pids(redis)
        os.kill(worker, signal.SIGKILL)
        sent = wait_for(callbacks, timeout=90, what="the callback")
        execution = Execution.objects.get()
        assert [c["data"]["status"] for c in sent] == ["completed"]
        assert execution.resumes == 1
        # The LLM call had completed: made once. The tool call had not: made again.
        assert len(_first_calls(llm)) == 1
        assert len(llm.requests) == 2
        assert peers.peers.handled.get(QS_REQUEST) == 2
        assert [(s.kind, s.attempt) for s in execution.steps.all()] == [
            ("llm", 1),
            ("tool", 2),
            ("llm", 2),
        ]
    finally:
        _stop(service)
    assert len(callbacks()) == 1


def test_a_run_that_loses_its_worker_once_too_often_fails_worker_lost(peers, llm, redis):
    with _hung_in_second_llm_call(
        llm, redis, "--runs-per-worker", "4", AES_MAX_RESUMES="0"
    ) as worker:
        os.kill(worker, signal.SIGKILL)
        sent = wait_for(callbacks, timeout=90, what="the callback")
        execution = Execution.objects.get()
        assert execution.status == "failed"
        assert [c["data"]["error"]["code"] for c in sent] == ["WORKER_LOST"]
        # What the run had done is kept: its first LLM call and its tool call.
        assert sent[0]["data"]["iterations"] == 1
        assert sent[0]["data"]["tool_calls"][0]["name"] == "knowledge_search"
        assert execution.resumes == 0


def test_a_consumer_and_a_worker_killed_at_once_lose_nothing(peers, llm, redis):
    # A whole service goes (its consumer, supervisor, worker and runs, as
    # with a lost machine); another service finds its run and its messages.
    _script_tool_then_hang(llm)
    push(agent_run(tier="enterprise", agent_id="support-bot", message=QUESTION), "enterprise")
    first = _serve(llm, "--rq-workers", "1", "--runs-per-worker", "4")
    try:
        _in_second_llm_call(llm)
        (worker,) = rq_worker_pids(redis)
        os.kill(first.pid, signal.SIGKILL)
        os.kill(worker, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        end(first)
    push(agent_run(message="And now?"))
    second = _serve(llm, "--rq-workers", "1", "--runs-per-worker", "4")
    try:
        sent = wait_for(
            lambda: len(callbacks()) == 2 and callbacks(), timeout=60, what="two callbacks"
        )
        assert sorted(c["data"]["status"] for c in sent) == ["completed", "completed"]
        resumed = Execution.objects.get(message=QUESTION)
        assert resumed.resumes == 1
        assert len(_first_calls(llm)) == 2  # one per run, none repeated
    finally:
        _stop(second)
    assert len(callbacks()) == 2


def test_a_stale_attempt_writes_nothing_once_a_later_one_holds_the_run(peers, llm, settings):
    # In one process: attempt 1 hangs in its second LLM call; the run is
    # resumed meanwhile (as if its lease had lapsed). Attempt 1 notices at its
    # next heartbeat and stops; attempt 2 ends the run, with one callback.
    settings.AES_RUN_HEARTBEAT_TTL = 1.5
    _script_tool_then_hang(llm)
    push(agent_run(tier="enterprise", agent_id="support-bot", message=QUESTION), "enterprise")
    consume()
    execution = Execution.objects.get()
    recovered = []

    def lapse() -> None:
        try:
            _in_second_llm_call(llm)
            recovered.append(recovery.recover(str(execution.id), "test: the lease lapsed"))
        finally:
            connection.close()

    thread = threading.Thread(target=lapse)
    thread.start()
    work()  # attempt 1 stops; the same burst worker then runs attempt 2
    thread.join(timeout=30)
    assert recovered == [True]
    execution.refresh_from_db()
    assert execution.status == "completed"
    assert execution.resumes == 1
    assert [c["data"]["resumes"] for c in callbacks()] == [1]
    assert [(s.name, s.attempt) for s in execution.steps.all()] == [
        ("llm_call_1", 1),
        ("knowledge_search", 1),
        ("llm_call_2", 2),
    ]


def test_a_resumed_run_on_its_way_to_a_worker_is_resumed_once(peers, llm, redis, settings):
    # A worker takes a resumed run's job from its queue and marks it started
    # a round trip later: a look for lost runs in that moment leaves the run
    # alone. Should that worker die before starting it, the run is resumed
    # again once the lease held for it lapses, and completes.
    settings.AES_RUN_HEARTBEAT_TTL = 1
    llm.push_answer("Refunds take five days.")
    push(agent_run(tier="enterprise", agent_id="support-bot", message=QUESTION), "enterprise")
    consume()
    execution = Execution.objects.get()
    execution_id, queue = str(execution.id), queues.tier_queue("enterprise").key
    assert redis.lpop(queue).decode() == execution_id  # a worker takes the job,
    assert lifecycle.begin(execution, lookup.get_tier("enterprise")) is None  # starts the run
    leases.heartbeat().release(execution_id, 0)
    redis.delete(keys.lease(execution_id))  # and dies: its lease lapses
    assert liveness.find_lost() == 1

    assert redis.lpop(queue).decode() == execution_id  # the next worker takes the job
    assert liveness.find_lost() == 0
    execution.refresh_from_db()
    assert execution.resumes == 1

    # That worker dies before starting it.
    wait_for(liveness.find_lost, timeout=10, what="the run resumed again")
    work()
    execution.refresh_from_db()
    assert execution.status == "completed", execution.error_message
    assert execution.resumes == 2
    assert [c["data"]["resumes"] for c in callbacks()] == [2]
    assert [(s.name, s.attempt) for s in execution.steps.all()] == [("llm_call_1", 3)]
