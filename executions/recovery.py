"""Runs that outlive their worker (§9): resumed from their journal, or ended.

The workers call `recover` when a run's process is known dead (a work-horse
killed, a threaded worker gone) or its lease lapsed (workers/liveness.py);
the reaper calls `expire` for a run stuck long past its deadline.
"""

from __future__ import annotations

import logging

from django.conf import settings

from executions import leases, queues
from executions.agent import run
from executions.exceptions import ExecutionTimeout, WorkerLost
from executions.lifecycle import conclude
from executions.models import Execution, Status
from executions.outcome import Outcome

log = logging.getLogger(__name__)


def recover(execution_id: str, reason: str, *, attempt: int | None = None) -> bool:
    """Go on with a run whose worker was lost (§9); True when this call moved it on.

    A `queued` run did nothing yet: its job is enqueued again. A `running`
    one is resumed: a new attempt, enqueued at the front of its queue, goes
    on from its journal, so completed LLM and tool calls are not made again
    and its deadline stays. After AES_MAX_RESUMES resumes it ends
    `failed`/WORKER_LOST instead, with what it had produced. `attempt`, the
    run's `resumes` when its loss was seen, makes this do nothing once the
    run has been handed on since.
    """
    execution = Execution.objects.filter(pk=execution_id).first()
    if execution is None or execution.is_final:
        return False
    if execution.status == Status.QUEUED:
        log.warning("execution %s enqueued again: %s before it started", execution_id, reason)
        queues.enqueue(execution, wake=True)
        return False
    if attempt is not None and execution.resumes != attempt:
        return False
    if execution.resumes >= settings.AES_MAX_RESUMES:
        log.error("execution %s lost its worker again: %s", execution_id, reason)
        error = WorkerLost(f"{reason}; the run was resumed {execution.resumes} time(s) already")
        return conclude(execution, Outcome.from_error(error, run.journal_result(execution)))
    leases.reserve(execution_id, execution.resumes)
    if not execution.resume():
        return False
    log.warning(
        "execution %s will resume (attempt %d): %s", execution_id, execution.resumes + 1, reason
    )
    queues.enqueue(execution, wake=True)
    return True


def expire(execution: Execution) -> bool:
    """End a run still running long past its deadline (its process is stuck), with one callback."""
    error = ExecutionTimeout("the run's deadline passed and its worker did not end it")
    return conclude(execution, Outcome.from_error(error, run.journal_result(execution)))
