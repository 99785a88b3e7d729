"""The RQ job: one agent run per job. It takes an execution id and loads the rest.

Before a run starts it must pass its gates (executions/gates.py): its
session's turn and a tenant slot. A run that must wait stays `queued` and its
job ends; the run ahead of it wakes it by enqueueing its job again.
"""

from __future__ import annotations

import logging

from aes_project import logs
from executions import cancels, leases, lifecycle, outbox, turns
from executions.agent import run
from executions.exceptions import Superseded
from executions.models import Execution, Status
from tiers import lookup

log = logging.getLogger(__name__)


def run_execution(execution_id: str) -> str:
    """Run one execution to its final status and send its callback; return what happened."""
    try:
        execution = Execution.load(execution_id)
    except Execution.DoesNotExist:
        log.warning("job for unknown execution %s dropped", execution_id)
        return "missing"
    attempt = execution.resumes
    try:
        with logs.run_context(
            execution_id=execution_id, task_id=execution.task_id, tenant_id=execution.tenant_id
        ):
            return _run_execution(execution)
    finally:
        leases.heartbeat().release(execution_id, attempt)
        cancels.watcher().forget(execution_id)
        # Not held through RQ's own bookkeeping after the job (threaded workers).
        turns.release_connection()


def _run_execution(execution: Execution) -> str:
    if execution.is_final:
        # A redelivered or woken job: the run is over; finish what its end did.
        outbox.deliver(execution)
        lifecycle.release(execution)
        return execution.status
    tier = lookup.get_tier(execution.tier)
    if tier is None:
        lifecycle.reject_unknown_tier(execution)
        return execution.status
    if execution.status == Status.RUNNING:
        # A resumed run (§9), or a stray job of a run another process holds.
        if not lifecycle.take_over(execution):
            return "held-elsewhere"
    elif (waiting := lifecycle.begin(execution, tier)) is not None:
        return waiting
    try:
        outcome = run.run(execution, tier)
    except Superseded:
        log.warning("execution %s: a later attempt holds it; this one stops", execution.id)
        return "superseded"
    lifecycle.conclude(execution, outcome)
    return execution.status
