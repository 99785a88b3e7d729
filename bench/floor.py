"""The floor: what bare RQ and bare Redis do on the same machine, Redis and worker count."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from aes_project import processes
from bench.common import (
    MANAGE,
    PYTHON,
    STOP_SECONDS,
    Env,
    commandstats,
    diff,
    percentile,
    wait_until,
)
from bench.pipeline import counting_client

WORKER_CLASSES = {
    "fork": "rq.worker.Worker",
    "simple": "rq.worker.SimpleWorker",
    "threads": "workers.threaded.ThreadedHost",
}


def rq_noop(
    env: Env,
    *,
    tier: str,
    workers: int,
    jobs: int,
    worker_class: str,
    slots: int = 1,
    pings: int = 50,
) -> dict[str, Any]:
    """No-op jobs/s through `workers` RQ worker processes, and Redis commands per job.

    The workers are `manage.py rqworker` processes, as the AES's are (Django
    loaded, so a forked work-horse is as large), with RQ's plain class:
    the AES's class refuses any job but its own. They serve the tier's queue
    (the AES is stopped by then). Jobs are enqueued one by one, with the job
    options the AES uses, while the workers wait. With `threads`, each
    process is the AES's ThreadedHost with `slots` slots.
    """
    # Importable only once Django is set up: the job options the AES uses.
    from executions import queues
    from tiers import lookup

    timeout = lookup.get_tier(tier).timeout_seconds + queues.JOB_TIMEOUT_MARGIN_SECONDS
    if worker_class == "threads":
        command = [PYTHON, "-m", "bench.threaded_floor", "--slots", str(slots), tier]
    else:
        command = [*MANAGE, "rqworker", "--worker-class", WORKER_CLASSES[worker_class]]
        command += ["--serializer", "rq.serializers.JSONSerializer", tier]
    started_workers = [env.start(command, "floor-workers") for _ in range(workers)]
    plain = redis.Redis.from_url(env.redis_url)
    try:
        wait_until(
            lambda: len(Worker.all(connection=plain)) >= workers * slots, 120, "floor workers"
        )
        time.sleep(1.0)  # let them settle into their blocking dequeue
        enqueuer = redis.Redis.from_url(env.redis_url)
        poller = counting_client(env.redis_url)
        queue = Queue(tier, connection=enqueuer, serializer=JSONSerializer)
        ids = [str(uuid.uuid4()) for _ in range(jobs)]
        before = commandstats(poller)
        started = datetime.now(UTC)
        for job_id in ids:
            queue.enqueue_call(
                "bench.noop.noop",
                job_id=job_id,
                timeout=timeout,
                result_ttl=queues.RESULT_TTL_SECONDS,
                failure_ttl=queues.FAILURE_TTL_SECONDS,
            )
        # Read through the poller, whose commands are not counted as RQ's; the
        # AES's own finished jobs of this queue are there too, expiring.
        finished = FinishedJobRegistry(tier, connection=poller, serializer=JSONSerializer)
        ours = set(ids)
        wait_until(
            lambda: len(ours.intersection(finished.get_job_ids())) >= jobs,
            30 + jobs / 5,
            "the no-op jobs",
        )
        own = dict(poller.sent)  # the bench's polling and INFO are not RQ's
        calls = diff(commandstats(poller), before)
        for name, n in own.items():
            calls[name] = calls.get(name, 0) - n
        ended = [
            j.ended_at for j in Job.fetch_many(ids, connection=plain, serializer=JSONSerializer)
        ]
        last = max(e for e in ended if e is not None).replace(tzinfo=UTC)
        seconds = (last - started).total_seconds()
        figures: dict[str, Any] = {
            "floor_worker_class": WORKER_CLASSES[worker_class],
            "floor_worker_processes": workers,
            "floor_jobs": jobs,
            "floor_seconds": round(seconds, 3),
            "floor_jobs_per_second": round(jobs / seconds, 1),
            "floor_redis_commands_per_job": round(sum(calls.values()) / jobs, 2),
        }
        figures.update(_per(calls, jobs, "floor_redis_commands_per_job"))
        figures.update(_ping_latencies(queue, plain, pings, result_ttl=queues.RESULT_TTL_SECONDS))
        return figures
    finally:
        processes.stop_all(started_workers, STOP_SECONDS)
        env.children = [c for c in env.children if c not in started_workers]


def _ping_latencies(
    queue: Queue, client: redis.Redis, pings: int, result_ttl: int
) -> dict[str, float]:
    """Enqueue→done latency of jobs sent one at a time: the floor of the AES's overhead."""
    key = "bench:floor:pings"
    seconds = []
    for _ in range(pings):
        start = time.monotonic()
        queue.enqueue_call("bench.noop.ping", args=(key,), result_ttl=result_ttl)
        if client.brpop([key], timeout=30) is None:
            raise TimeoutError("a floor ping job did not run within 30 s")
        seconds.append(time.monotonic() - start)
    figures = {f"floor_low_load_latency_p{p}_ms": percentile(seconds, p) for p in (50, 95, 99)}
    return {name: round(value * 1000, 1) for name, value in figures.items()}


def _per(calls: dict[str, int], jobs: int, prefix: str) -> dict[str, float]:
    """`{prefix}.{command}`: each command's calls per job, the most frequent first."""
    ranked = sorted(calls.items(), key=lambda item: -item[1])
    return {f"{prefix}.{name}": round(count / jobs, 2) for name, count in ranked if count}


def lpush_brpop(env: Env, pairs: int = 5000) -> dict[str, Any]:
    """One client, LPUSH then BRPOP of the same list, back to back: round trips/s."""
    client = redis.Redis.from_url(env.redis_url)
    key = "bench:roundtrip"
    client.delete(key)
    start = time.monotonic()
    for _ in range(pairs):
        client.lpush(key, "x")
        client.brpop([key], timeout=1)
    seconds = time.monotonic() - start
    return {
        "lpush_brpop_pairs": pairs,
        "lpush_brpop_seconds": round(seconds, 3),
        "lpush_brpop_pairs_per_second": round(pairs / seconds, 1),
    }
