"""The reaper: the database is the record, so reconcile RQ and Redis from it.

Runs inside every `run_execution_worker`, at most one pass at a time across
all of them (a Redis lock), every AES_REAPER_INTERVAL_SECONDS:

1. `queued` runs older than QUEUED_GRACE whose job RQ no longer holds (the
   consumer died between commit and enqueue, Redis lost its data, a
   wake-up was lost, a worker died between taking the job and starting
   the run: its job says queued but no queue holds it, or says started by
   a worker that is gone) are enqueued again; a run still waiting for its
   gates simply goes back to waiting.
2. `running` runs past their deadline by more than AES_REAPER_GRACE_SECONDS
   are stuck (RQ would have ended a live job by then; a lost worker's runs
   are resumed long before, workers/liveness.py): they end `timeout` with
   what they had produced, and their one callback.
3. Final runs whose callback was recorded but not pushed (a crash or a Redis
   outage between the two) get it pushed.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rq.job import Job, JobStatus
from rq.worker import Worker

from aes_project import redis_clients
from executions import outbox, queues, recovery
from executions.models import Execution, Status
from protocol import keys

log = logging.getLogger(__name__)

QUEUED_GRACE_SECONDS = 60
CALLBACK_GRACE_SECONDS = 10
BATCH = 500

_LIVE_JOB = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def reap() -> dict[str, int]:
    """Run one pass if no other process is running one; return what it did."""
    client = redis_clients.shared()
    if not client.set(
        keys.REAPER_LOCK, "1", nx=True, ex=int(settings.AES_REAPER_INTERVAL_SECONDS * 4) + 1
    ):
        return {}
    try:
        return {
            "requeued": _requeue_lost_jobs(),
            "expired": _expire_stuck_runs(),
            "callbacks": _push_unsent_callbacks(),
        }
    finally:
        client.delete(keys.REAPER_LOCK)


def _requeue_lost_jobs() -> int:
    cutoff = timezone.now() - timedelta(seconds=QUEUED_GRACE_SECONDS)
    stale = list(Execution.objects.filter(status=Status.QUEUED, queued_at__lt=cutoff)[:BATCH])
    client = redis_clients.shared()
    # One pipelined read for the jobs, one for where they are.
    found = Job.fetch_many([str(e.id) for e in stale], connection=client)
    with client.pipeline(transaction=False) as pipeline:
        for execution, job in zip(stale, found, strict=True):
            pipeline.lpos(queues.tier_queue(execution.tier).key, str(execution.id))
            worker = job.worker_name if job is not None and job.worker_name else "-"
            pipeline.hmget(f"{Worker.redis_worker_namespace_prefix}{worker}", "hostname", "pid")
        replies = pipeline.execute()
    count = 0
    where = zip(replies[::2], replies[1::2], strict=True)  # (position, (hostname, pid))
    for execution, job, (position, (hostname, pid)) in zip(stale, found, where, strict=True):
        if _lost(job, position, hostname, pid):
            queues.enqueue(execution, wake=True)
            count += 1
    if count:
        log.warning("reaper: enqueued %d queued run(s) whose job was gone", count)
    return count


def _lost(job: Job | None, position: int | None, hostname: bytes | None, pid: bytes | None) -> bool:
    """Whether nothing will ever run the job of a run that is still queued.

    Beyond a missing or ended job: a job marked queued that no queue holds,
    or marked started by a worker that is gone (its registration expired, or
    its process on this machine is dead), was taken by a worker that died
    before the run began.
    """
    status = job.get_status(refresh=False) if job is not None else None
    if status not in _LIVE_JOB:
        return True
    if status == JobStatus.QUEUED:
        return position is None
    if status == JobStatus.STARTED:
        if hostname is None:
            return True
        return hostname.decode() == socket.gethostname() and not _pid_alive(int(pid or 0))
    return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _expire_stuck_runs() -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.AES_REAPER_GRACE_SECONDS)
    count = 0
    for execution in Execution.objects.filter(status=Status.RUNNING, deadline_at__lt=cutoff)[
        :BATCH
    ]:
        if recovery.expire(execution):
            count += 1
    if count:
        log.error("reaper: ended %d run(s) stuck past their deadline", count)
    return count


def _push_unsent_callbacks() -> int:
    cutoff = timezone.now() - timedelta(seconds=CALLBACK_GRACE_SECONDS)
    unsent = Execution.objects.filter(
        callback__isnull=False, callback_sent_at__isnull=True, finished_at__lt=cutoff
    )[:BATCH]
    count = 0
    for execution in unsent:
        outbox.deliver(execution)
        count += 1
    if count:
        log.warning("reaper: pushed %d callback(s) recorded but not sent", count)
    return count
