"""Runs whose worker stopped, found within seconds by their lapsed leases, and resumed (§9).

Every running run's lease (executions/leases.py) is renewed by the process
running it. `find_lost` looks at every running run, at most one pass at a
time across all services (a Redis lock), every third of
AES_RUN_HEARTBEAT_TTL: a run with no lease whose job is not waiting in a
queue for a worker, and did not just start, has lost its worker, and
recovery.recover resumes it (or fails it WORKER_LOST once its resumes are
spent).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from rq.job import Job, JobStatus

from aes_project import redis_clients
from executions import leases, queues, recovery
from executions.models import Execution, Status
from protocol import keys

log = logging.getLogger(__name__)

# Runs looked at per round trip.
BATCH = 1000
# Seconds a job may have been started without its run holding a lease: the
# job reads its row first, then takes the lease.
START_GRACE_SECONDS = 5


def find_lost() -> int:
    """Resume the running runs whose lease lapsed (unless another process is looking).

    Return how many were resumed or ended.
    """
    client = redis_clients.shared()
    interval = settings.AES_RUN_HEARTBEAT_TTL / 3
    if not client.set(keys.LIVENESS_LOCK, "1", nx=True, px=int(interval * 4000)):
        return 0
    try:
        running = Execution.objects.filter(status=Status.RUNNING).values_list(
            "id", "tier", "resumes"
        )
        runs = [(str(execution_id), tier, resumes) for execution_id, tier, resumes in running]
        resumed = 0
        for start in range(0, len(runs), BATCH):
            resumed += _look_at(runs[start : start + BATCH])
        return resumed
    finally:
        client.delete(keys.LIVENESS_LOCK)


def _look_at(runs: list[tuple[str, str, int]]) -> int:
    holders = leases.held_by([execution_id for execution_id, _, _ in runs])
    unheld = [run for run, holder in zip(runs, holders, strict=True) if holder is None]
    if not unheld:
        return 0
    client = redis_clients.shared()
    jobs = Job.fetch_many([execution_id for execution_id, _, _ in unheld], connection=client)
    with client.pipeline(transaction=False) as pipeline:
        for execution_id, tier, _ in unheld:
            pipeline.lpos(queues.tier_queue(tier).key, execution_id)
        positions = pipeline.execute()
    resumed = 0
    for (execution_id, _, attempt), job, position in zip(unheld, jobs, positions, strict=True):
        if _waiting_or_starting(job, position):
            continue
        reason = "its worker stopped renewing its lease"
        if recovery.recover(execution_id, reason, attempt=attempt):
            resumed += 1
    if resumed:
        log.warning("resumed %d run(s) whose worker was lost", resumed)
    return resumed


def _waiting_or_starting(job: Job | None, position: int | None) -> bool:
    """Whether the run's job waits in its queue (a resumed run) or has just been taken."""
    if job is None:
        return False
    status = job.get_status(refresh=False)
    # A job just taken from its queue is marked started a round trip later;
    # a resumed run's lease is reserved for its new job (leases.reserve), so
    # such a run is not looked at in that moment.
    if status == JobStatus.QUEUED and position is not None:
        return True
    if status == JobStatus.STARTED and job.started_at is not None:
        started = (
            job.started_at.replace(tzinfo=UTC) if job.started_at.tzinfo is None else job.started_at
        )
        return datetime.now(UTC) - started < timedelta(seconds=START_GRACE_SECONDS)
    return False
