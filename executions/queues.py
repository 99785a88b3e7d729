"""The tier RQ queues a run's job waits on, and putting a run's job there."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from aes_project import redis_clients
from executions.models import Execution
from tiers import lookup
from tiers.models import Tier

# The job function every run's job calls: the only one the workers accept.
RUN_JOB = "executions.jobs.run_execution"
# Seconds RQ lets a job run past the run's own deadline before killing it;
# the run stops itself at the deadline, this only catches a stuck process.
JOB_TIMEOUT_MARGIN_SECONDS = 30
# Seconds RQ keeps a finished or failed job's record (the row is the record).
# A finished job and its result take ~6 KB of Redis: kept an hour, 2.2 GB
# at 100 runs/s; a minute, 37 MB. Failed jobs are few and kept for a week.
RESULT_TTL_SECONDS = 60
FAILURE_TTL_SECONDS = 7 * 24 * 3600
# Seconds a job may take when its tier is gone (it then ends the run at once).
UNKNOWN_TIER_TIMEOUT_SECONDS = 60


@functools.cache
def tier_queue(tier: str) -> Queue:
    """Return the tier's RQ queue, one per process, on the shared client.

    django_rq.get_queue builds a new client (a new connection, and RQ's
    version check on it) at every call.
    """
    return Queue(tier, connection=redis_clients.shared(), serializer=JSONSerializer)


def enqueue(
    execution: Execution,
    *,
    tier: Tier | None = None,
    wake: bool = False,
    known_new: bool = False,
    send: Callable[[Pipeline], list[Any]] | None = None,
) -> None:
    """Put the execution's job on its tier's RQ queue.

    Nothing is done when RQ knows the job already (a redelivered message),
    unless `wake` is set; `known_new` skips that check for a row just made.
    A woken run goes to the front of its queue: it has waited its turn.
    `tier` saves a lookup when the caller holds it already; `send` sends the
    enqueue's MULTI, adding its own commands (RunEvents.execute).
    """
    queue = tier_queue(execution.tier)
    job_id = str(execution.id)
    if not (wake or known_new) and Job.exists(job_id, connection=queue.connection):
        return
    tier = tier or lookup.get_tier(execution.tier)
    timeout = tier.timeout_seconds if tier else UNKNOWN_TIER_TIMEOUT_SECONDS
    pipe = queue.connection.pipeline()
    queue.enqueue_call(
        RUN_JOB,
        args=(job_id,),
        job_id=job_id,
        timeout=timeout + JOB_TIMEOUT_MARGIN_SECONDS,
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=FAILURE_TTL_SECONDS,
        at_front=wake,
        pipeline=pipe,
    )
    if send is None:
        pipe.execute()
    else:
        send(pipe)
