"""Nothing lost, nothing doubled: recovery paths, in-process.

Each test puts Redis and the database in the state a crash at one instant
leaves behind, then lets the normal machinery (recovery, the reaper) finish
the job, and checks exactly one Execution and one callback.
"""

from __future__ import annotations

import json
from datetime import timedelta

import django_rq
import pytest
from django.core.management import call_command
from django.utils import timezone
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from executions import metrics
from executions.models import Execution
from protocol import keys
from protocol.messages import CANCEL
from tests.helpers import agent_run, callbacks, consume, dead_letters, push, tier_names, work
from workers import handlers, reaper
from workers.consumer import MAX_REDELIVERIES, Consumer
from workers.rq_worker import ExecutionWorker

pytestmark = pytest.mark.django_db


def held_by_dead_consumer(redis, message: dict, name: str = "dead:1:cafe") -> None:
    """Leave `message` in the processing list of a consumer that died."""
    redis.sadd(keys.CONSUMERS, name)
    redis.lpush(keys.processing(name, keys.actions("free")), json.dumps(message))


def test_consumer_killed_after_the_row_committed_runs_the_message_once(peers, llm, redis):
    message = agent_run()
    # The dead consumer had recorded the row but not enqueued the job.
    Execution.record(
        "tenant-a",
        message["action_id"],
        task_id=message["task_id"],
        tier="free",
        agent_id="plain-bot",
        message=message["data"]["message"],
        request=message,
        callback_queue=message["callback_queue"],
    )
    held_by_dead_consumer(redis, message)
    consume()
    work()
    assert Execution.objects.count() == 1
    assert [c["data"]["status"] for c in callbacks()] == ["completed"]


def test_consumer_killed_after_the_enqueue_runs_the_message_once(peers, llm, redis):
    message = agent_run()
    handlers.handle("free", json.dumps(message).encode())  # row and job exist
    held_by_dead_consumer(redis, message)  # but the message was never acknowledged
    consume()
    assert django_rq.get_queue("free").count == 1
    work()
    assert Execution.objects.count() == 1
    assert [c["data"]["status"] for c in callbacks()] == ["completed"]
    assert len(llm.requests) == 1


def test_a_message_that_kills_every_consumer_is_dead_lettered(redis):
    message = agent_run()
    for attempt in range(MAX_REDELIVERIES + 1):
        held_by_dead_consumer(redis, message, name=f"dead:{attempt}:beef")
        Consumer(tier_names()).recover_dead_consumers()
        redis.delete(keys.actions("free"))  # taken again by the next victim
    letter = dead_letters()[0]
    assert letter["error"]["code"] == "POISON_MESSAGE"
    assert json.loads(letter["raw"]) == message
    assert redis.llen(keys.actions("free")) == 0


def _queued_run_that_the_reaper_must_run(lose_job) -> Execution:
    """Record a run, lose its job with `lose_job(queue, execution)`, age the row, reap."""
    push(agent_run())
    consume()
    execution = Execution.objects.get()
    lose_job(django_rq.get_queue("free"), execution)
    Execution.objects.update(queued_at=timezone.now() - timedelta(minutes=5))
    assert reaper.reap()["requeued"] == 1
    work()
    execution.refresh_from_db()
    return execution


def _take_and_start(queue) -> ExecutionWorker:
    """A worker takes the queue's job and RQ marks it started (the run has not begun)."""
    job = queue.dequeue_any([queue], None, connection=queue.connection, serializer=JSONSerializer)
    worker = ExecutionWorker([queue], connection=queue.connection)
    worker.register_birth()
    worker.prepare_job_execution(job[0])
    return worker


def test_reaper_enqueues_a_queued_run_whose_job_was_lost(peers, llm, redis):
    # As after a Redis restart without persistence.
    execution = _queued_run_that_the_reaper_must_run(lambda queue, _: queue.empty())
    assert execution.status == "completed"
    assert len(callbacks()) == 1


def test_reaper_enqueues_a_run_whose_worker_died_holding_its_job(peers, llm, redis):
    # A worker took the job off its queue and died before starting it: the
    # job still says "queued", but no queue holds it.
    execution = _queued_run_that_the_reaper_must_run(lambda queue, _: redis.lpop(queue.key))
    assert execution.status == "completed"
    assert len(callbacks()) == 1


def test_reaper_enqueues_a_run_whose_job_a_dead_worker_had_started(peers, llm, redis):
    # RQ marked the job started; its worker died before the run claimed its
    # row, leaving its registration behind with its pid.
    def die_after_starting(queue, _):
        worker = _take_and_start(queue)
        worker.connection.hset(worker.key, "pid", 2**22 + 1)  # no such process

    execution = _queued_run_that_the_reaper_must_run(die_after_starting)
    assert execution.status == "completed"
    assert len(callbacks()) == 1


def test_reaper_leaves_a_queued_run_whose_live_worker_is_starting_it(redis):
    push(agent_run())
    consume()
    _take_and_start(django_rq.get_queue("free"))  # a worker of this process: alive
    Execution.objects.update(queued_at=timezone.now() - timedelta(minutes=5))
    assert reaper.reap()["requeued"] == 0


def test_reaper_leaves_queued_runs_whose_job_waits_alone(redis):
    push(agent_run())
    consume()
    Execution.objects.update(queued_at=timezone.now() - timedelta(minutes=5))
    assert reaper.reap()["requeued"] == 0
    assert django_rq.get_queue("free").count == 1


def test_reaper_ends_a_run_stuck_long_past_its_deadline(settings, redis):
    # Its process lives on (its lease renewed) but never ends it: the reaper
    # does, once the grace past the deadline is over, with one callback.
    settings.AES_REAPER_GRACE_SECONDS = 0
    push(agent_run())
    consume()
    execution = Execution.objects.get()
    execution.start({"max_iterations": 3}, 1)
    Execution.objects.filter(pk=execution.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=5)
    )
    assert reaper.reap()["expired"] == 1
    assert reaper.reap()["expired"] == 0
    execution.refresh_from_db()
    assert (execution.status, execution.error_code) == ("timeout", "EXECUTION_TIMEOUT")
    assert [c["data"]["error"]["code"] for c in callbacks()] == ["EXECUTION_TIMEOUT"]


def _finished_but_unsent(peers, llm) -> Execution:
    push(agent_run())
    consume()
    work()
    execution = Execution.objects.get()
    Execution.objects.filter(pk=execution.pk).update(
        callback_sent_at=None, finished_at=timezone.now() - timedelta(minutes=1)
    )
    return execution


def test_reaper_pushes_a_callback_recorded_but_never_pushed(peers, llm, redis):
    execution = _finished_but_unsent(peers, llm)
    redis.delete("test:callbacks", keys.outbox(str(execution.id)))
    assert reaper.reap()["callbacks"] == 1
    assert [c["data"]["execution_id"] for c in callbacks()] == [str(execution.id)]
    execution.refresh_from_db()
    assert execution.callback_sent_at is not None


def test_reaper_does_not_push_twice_a_callback_pushed_before_a_crash(peers, llm, redis):
    execution = _finished_but_unsent(peers, llm)  # pushed, then "crashed" before marking
    assert reaper.reap()["callbacks"] == 1
    assert len(callbacks()) == 1
    execution.refresh_from_db()
    assert execution.callback_sent_at is not None


@pytest.mark.parametrize("pushed", [True, False], ids=["pushed", "counted-only"])
def test_an_outbox_marker_left_by_an_earlier_version_is_honoured(peers, llm, redis, pushed):
    # Before the marker was a string it was a hash: `counted`, then `pushed`.
    execution = _finished_but_unsent(peers, llm)
    marker = keys.outbox(str(execution.id))
    redis.delete("test:callbacks", marker)
    redis.hset(marker, mapping={"counted": "1", **({"pushed": "1"} if pushed else {})})
    before = metrics.summary()["runs"]
    assert reaper.reap()["callbacks"] == 1
    assert len(callbacks()) == (0 if pushed else 1)
    assert metrics.summary()["runs"] == before  # counted once, by the earlier pass
    execution.refresh_from_db()
    assert execution.callback_sent_at is not None


def test_an_operator_can_list_and_resend_callbacks(peers, llm, redis, capsys):
    execution = _finished_but_unsent(peers, llm)
    call_command("resend_callbacks")
    assert f"{execution.id} completed test:callbacks" in capsys.readouterr().out

    call_command("resend_callbacks", str(execution.id))
    sent = callbacks()
    assert len(sent) == 2
    assert sent[0]["event_id"] == sent[1]["event_id"]  # receivers can deduplicate
    call_command("resend_callbacks")
    assert capsys.readouterr().out.strip().endswith("0 undelivered")


def test_the_worker_refuses_jobs_that_are_not_the_services(redis, tmp_path):
    queue = django_rq.get_queue("free")
    marker = tmp_path / "ran"
    job = queue.enqueue_call("pathlib.Path.touch", args=(str(marker),))
    ExecutionWorker([queue], connection=queue.connection).work(burst=True)
    assert not marker.exists()
    assert job.id in FailedJobRegistry(queue=queue).get_job_ids()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_consumer_reconnects_after_the_database_dropped_its_connection(redis):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("closing a session from outside needs PostgreSQL")
    push(agent_run())
    consume()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    # As a database restart would: the server ends the consumer's session.
    import psycopg

    settings_dict = connection.settings_dict
    with psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or 5432,
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    # A cancel's first query runs outside any transaction, where Django does
    # not notice a dead connection by itself.
    push(
        {
            **agent_run(),
            "action_type": CANCEL,
            "correlation_id": "c-1",
            "callback_queue": "canceller:replies",
            "data": {"task_id": "no-such-task"},
        }
    )
    consume()
    assert dead_letters() == []
    reply = json.loads(redis.rpop("canceller:replies"))
    assert reply["error"]["code"] == "NOT_FOUND"
