"""RQ worker processes that run several runs at once (`--runs-per-worker N`)."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from datetime import timedelta

import django_rq
import pytest
from django.db import connection
from rq.worker import Worker

from aes_project import redis_clients
from executions.models import Execution, ExecutionStep
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
from tiers.models import Tier
from workers import threaded
from workers.threaded import SlotWorker, ThreadedHost, recover_runs_of_dead_host

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _start(llm, runs: int, slots: int, timeout: int = 30, **env: str):
    for number in range(runs):
        message = agent_run(tier="enterprise", message=f"run {number}", timeout=timeout)
        push(message, tier="enterprise")
    return start_service(
        "--rq-workers", "1", "--runs-per-worker", str(slots), OPENAI_BASE_URL=llm.url, **env
    )


@contextmanager
def _serving(llm, runs: int, slots: int, timeout: int = 30, **env: str):
    """As `_start`, stopping the service (SIGTERM, then by its PID) on the way out."""
    service = _start(llm, runs, slots, timeout, **env)
    try:
        yield service
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=45)
        end(service)


def _running() -> int:
    return Execution.objects.filter(status="running").count()


def test_one_worker_process_runs_several_runs_at_once(peers, llm, redis):
    llm.latency_seconds = 2
    with _serving(llm, runs=4, slots=4):
        wait_for(lambda: _running() == 4, what="four runs running at once")
        (worker,) = rq_worker_pids(redis)
        assert children(worker) == []  # no work-horses: the runs are threads of the worker
        sent = wait_for(lambda: len(callbacks()) >= 4 and callbacks(), what="four callbacks")
    assert sorted(c["data"]["response"] for c in sent) == [
        f"(stand-in) You said: run {n}" for n in range(4)
    ]
    assert set(Execution.objects.values_list("status", flat=True)) == {"completed"}
    assert len(callbacks()) == 4


def test_runs_one_after_another_take_the_same_slot_and_its_model_connection(peers, llm, redis):
    # The slot freed last takes the next run, so a light load keeps a
    # connection to the model alive instead of one per slot, each gone idle.
    with _serving(llm, runs=0, slots=4):
        for number in range(6):
            push(agent_run(tier="enterprise", message=f"run {number}"), tier="enterprise")
            wait_for(lambda n=number: len(callbacks()) == n + 1, what=f"callback {number}")
    assert len(llm.requests) == 6
    assert llm.connections == 1


def test_runs_give_their_turn_back_while_they_wait_for_the_model(peers, llm, redis):
    llm.latency_seconds = 3
    # One turn for four slots: one run works at a time, and a run waiting
    # for its model lets the next one work, so the four wait together.
    with _serving(llm, runs=4, slots=4, AES_ACTIVE_RUNS_PER_WORKER="1"):
        wait_for(lambda: len(callbacks()) == 4, timeout=30, what="four callbacks")
    calls = [
        (step.created_at - timedelta(milliseconds=step.duration_ms), step.created_at)
        for step in ExecutionStep.objects.filter(kind="llm")
    ]
    assert len(calls) == 4
    assert max(start for start, _ in calls) < min(end for _, end in calls)
    assert set(Execution.objects.values_list("status", flat=True)) == {"completed"}


def test_a_worker_takes_no_more_runs_than_its_slots(peers, llm, redis):
    llm.latency_seconds = 2
    with _serving(llm, runs=3, slots=2):
        wait_for(lambda: _running() == 2, what="two runs running")
        # The third stays queued, in RQ, for this or another worker's next free slot.
        assert Execution.objects.filter(status="queued").count() == 1
        assert django_rq.get_queue("enterprise").count == 1
        wait_for(lambda: len(callbacks()) == 3, timeout=30, what="three callbacks")
    assert set(Execution.objects.values_list("status", flat=True)) == {"completed"}


def test_sigterm_lets_the_runs_in_hand_finish(peers, llm, redis):
    llm.latency_seconds = 3
    service = _start(llm, runs=2, slots=2)
    try:
        wait_for(lambda: _running() == 2, what="two runs running")
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=45) == 0
    finally:
        output = end(service)
    assert [c["data"]["status"] for c in callbacks()] == ["completed", "completed"], output
    assert redis.smembers(Worker.redis_workers_keys) == set()  # every slot deregistered


def test_a_killed_threaded_worker_has_all_its_runs_resumed_and_each_ends_once(peers, llm, redis):
    llm.latency_seconds = 120
    # Leases of two minutes: only the supervisor, which saw its worker die,
    # can have these runs resumed within the minute.
    with _serving(llm, runs=3, slots=3, timeout=120, AES_RUN_HEARTBEAT_TTL="120"):
        wait_for(lambda: _running() == 3, what="three runs running")
        (worker,) = rq_worker_pids(redis)
        llm.latency_seconds = 0  # the resumed attempts are answered at once
        os.kill(worker, signal.SIGKILL)  # every run in that process is lost with it
        sent = wait_for(lambda: len(callbacks()) >= 3 and callbacks(), timeout=60, what="ends")
        wait_for(lambda: rq_worker_pids(redis) - {worker}, what="a replacement worker")
    assert not pid_alive(worker)
    assert [c["data"]["status"] for c in sent] == ["completed"] * 3
    assert [c["data"]["resumes"] for c in sent] == [1] * 3
    assert set(Execution.objects.values_list("status", flat=True)) == {"completed"}
    assert len(callbacks()) == 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the connection pool is PostgreSQL's")
def test_runs_share_a_small_connection_pool_while_they_wait(peers, llm, redis):
    llm.latency_seconds = 3
    # Six runs in flight on two connections: each holds one only to write.
    # Tiers re-read by every run, and a short wait for a connection: a run
    # that kept its connection through the LLM call would starve the others.
    with _serving(
        llm, runs=6, slots=6, DB_POOL_SIZE="2", DB_POOL_TIMEOUT="2", AES_TIER_CACHE_SECONDS="0"
    ):
        wait_for(lambda: _running() == 6, what="six runs running at once")
        wait_for(lambda: len(callbacks()) == 6, timeout=30, what="six callbacks")
    assert set(Execution.objects.values_list("status", flat=True)) == {"completed"}


def _registered_slot(execution_id: str, pid: int):
    """An RQ slot registered in Redis as a dead process's, busy with the given job."""
    slot = SlotWorker(["free"], connection=redis_clients.shared())
    slot.register_birth()
    slot.connection.hset(slot.key, "pid", pid)
    slot.set_current_job_id(execution_id)
    return slot


def test_a_dead_hosts_runs_are_resumed_and_its_unstarted_runs_run_again(peers, llm, redis):
    push(agent_run(message="taken, never started"))
    push(agent_run(message="running"))
    consume()
    taken, running = Execution.objects.order_by("queued_at")
    running.start(Tier.objects.get(name="free").limits(), 30)
    redis.delete(django_rq.get_queue("free").key)  # both jobs were taken by the dead process
    dead_pid = 2**22 + 1  # above the kernel's pid_max: no such process
    for execution in (taken, running):
        _registered_slot(str(execution.id), dead_pid)

    assert recover_runs_of_dead_host(dead_pid) == 1
    work()
    statuses = dict(Execution.objects.values_list("pk", "status"))
    assert statuses == {taken.pk: "completed", running.pk: "completed"}
    assert Execution.objects.get(pk=running.pk).resumes == 1
    assert len(callbacks()) == 2
    assert redis.smembers(Worker.redis_workers_keys) == set()  # the dead slots are deregistered


def test_a_slot_whose_run_outlasts_rqs_beat_stays_registered(peers, llm, redis, monkeypatch):
    # RQ beats a slot's registration only as the slot starts a job, for at
    # most 90 s; a longer run must not make its slot look dead meanwhile.
    monkeypatch.setattr(threaded, "SLOT_HEARTBEAT_SECONDS", 0.2)
    llm.latency_seconds = 8
    push(agent_run(message="a long one"))
    consume()
    host = ThreadedHost(["free"], 1)
    serving = threading.Thread(target=host.run)
    serving.start()
    try:
        wait_for(lambda: _running() == 1, what="the run running")
        (slot,) = host.slots
        # As if RQ's beat at the job's start ran out soon. The dispatcher
        # looks up at least every keys.BLOCK_SECONDS (5), and beats then.
        redis.expire(slot.key, 7)
        wait_for(lambda: redis.ttl(slot.key) > 60, timeout=6, what="the slot's next beat")
        assert _running() == 1
        assert redis.ttl(slot.key) > 60
    finally:
        host.stop()
        serving.join(timeout=30)
    assert Execution.objects.get().status == "completed"
