"""RQ jobs: one agent run per job. A job takes an execution id and loads the rest.

Before a run starts it must pass its gates (workers/gates.py): its session's
turn and a tenant slot. A run that must wait stays `queued` and its job
ends; the run ahead of it wakes it by enqueueing its job again.
"""

from __future__ import annotations

import functools
import logging
import math

from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from aes_project import logs
from executions.exceptions import Cancelled, InvalidAction
from executions.models import FINAL_STATUSES, Execution, Status
from protocol.messages import AgentRunData
from tiers import lookup
from workers import agent_run, callbacks, cancellation, gates, redis_client
from workers.callbacks import Outcome

log = logging.getLogger(__name__)

# Seconds RQ lets a job run past the run's own deadline before killing it;
# the run stops itself at the deadline, this only catches a stuck process.
JOB_TIMEOUT_MARGIN_SECONDS = 30
# Seconds RQ keeps a finished or failed job's record (the row is the record).
# A finished job and its result take ~6 KB of Redis: kept an hour, 2.2 GB
# at 100 runs/s; a minute, 37 MB. Failed jobs are few and kept for a week.
RESULT_TTL_SECONDS = 60
FAILURE_TTL_SECONDS = 7 * 24 * 3600


@functools.cache
def tier_queue(tier: str) -> Queue:
    """Return the tier's RQ queue, one per process, on the shared client.

    django_rq.get_queue builds a new client (a new connection, and RQ's
    version check on it) at every call.
    """
    return Queue(tier, connection=redis_client.shared(), serializer=JSONSerializer)


def enqueue(execution: Execution, *, wake: bool = False, known_new: bool = False) -> None:
    """Put the execution's job on its tier's RQ queue.

    Nothing is done when RQ knows the job already (a redelivered message),
    unless `wake` is set; `known_new` skips that check for a row just made.
    A woken run goes to the front of its queue: it has waited its turn.
    """
    queue = tier_queue(execution.tier)
    job_id = str(execution.id)
    if not (wake or known_new) and Job.exists(job_id, connection=queue.connection):
        return
    tier = lookup.get_tier(execution.tier)
    timeout = tier.timeout_seconds if tier else 60
    queue.enqueue_call(
        "workers.jobs.run_execution",
        args=(job_id,),
        job_id=job_id,
        timeout=timeout + JOB_TIMEOUT_MARGIN_SECONDS,
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=FAILURE_TTL_SECONDS,
        at_front=wake,
    )


def run_execution(execution_id: str) -> str:
    """Run one execution to its final status and send its callback; return what happened."""
    execution = Execution.objects.filter(pk=execution_id).first()
    if execution is None:
        log.warning("job for unknown execution %s dropped", execution_id)
        return "missing"
    try:
        with logs.run_context(
            execution_id=execution_id, task_id=execution.task_id, tenant_id=execution.tenant_id
        ):
            return _run_execution(execution)
    finally:
        # Not held through RQ's own bookkeeping after the job (threaded workers).
        agent_run.release_connection()


def _run_execution(execution: Execution) -> str:
    execution_id = str(execution.id)
    if execution.is_final:
        # A redelivered or woken job: the run is over; finish what its end did.
        callbacks.deliver(execution)
        _release(execution)
        return execution.status
    tier = lookup.get_tier(execution.tier)
    if tier is None:
        conclude(execution, Outcome.from_error(InvalidAction(f"unknown tier {execution.tier!r}")))
        return execution.status
    if execution.session_id and not _session_turn(execution):
        return "waiting-for-session"
    if not gates.acquire_slot(
        execution.tenant_id, execution_id, tier.max_concurrent_executions, tier.timeout_seconds
    ):
        return "waiting-for-slot"
    if cancellation.is_cancelled(execution_id):
        conclude(execution, Outcome.from_error(Cancelled("cancelled before it started")))
        return execution.status
    requested = AgentRunData.model_validate(execution.request["data"]).timeout
    if not execution.start(tier.limits(), min(tier.timeout_seconds, requested or math.inf)):
        return "not-claimed"
    conclude(execution, agent_run.run(execution))
    return execution.status


def _session_turn(execution: Execution) -> bool:
    """Return True when the run is first in its session's line.

    A head that has already ended (its end crashed before it left the line)
    is taken out, so a session never stays blocked behind a finished run.
    """
    tenant, session, me = execution.tenant_id, execution.session_id, str(execution.id)
    while True:
        head = gates.session_head(tenant, session)
        if head is None:
            gates.join_session(tenant, session, me)
            continue
        if head == me:
            return True
        ahead = Execution.objects.filter(pk=head).values_list("status", flat=True).first()
        if ahead is not None and ahead not in FINAL_STATUSES:
            return False
        gates.leave_session(tenant, session, head)


def conclude(execution: Execution, outcome: Outcome) -> bool:
    """End the run with `outcome` (one callback), free its gates; False if it had ended."""
    won = callbacks.conclude(execution, outcome)
    _release(execution)
    return won


def _release(execution: Execution) -> None:
    """Free the run's session turn and tenant slot, and wake the runs waiting for them."""
    me = str(execution.id)
    woken = set()
    if execution.session_id:
        woken.add(gates.leave_session(execution.tenant_id, execution.session_id, me))
    woken.add(gates.release_slot(execution.tenant_id, me))
    for execution_id in woken - {None, me}:
        waiting = Execution.objects.filter(pk=execution_id, status=Status.QUEUED).first()
        if waiting is not None:
            enqueue(waiting, wake=True)


def close_abandoned(execution_id: str, reason: str) -> bool:
    """End an execution whose job died before finishing it, with one callback.

    Not retried once started: the dead job may have called the LLM or saved
    messages, and running it again could answer or bill twice. The caller
    may send the request again with a new action_id. A run whose job died
    before it started (still `queued`) did nothing: it is enqueued again.
    Return True when this call ended the run.
    """
    execution = Execution.objects.filter(pk=execution_id).first()
    if execution is None or execution.is_final:
        return False
    if execution.status == Status.QUEUED:
        log.warning("execution %s enqueued again: %s before it started", execution_id, reason)
        enqueue(execution, wake=True)
        return False
    log.error("execution %s abandoned: %s", execution_id, reason)
    return conclude(
        execution, Outcome(status="failed", error_code="INTERNAL", error_message=reason)
    )
