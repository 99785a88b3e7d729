"""Cancelling runs: at once while queued, at the next step while running.

A cancel request sets `execution:cancel:{id}` in Redis, which the running
job checks before every step and every second of an LLM call, then ends a
queued run on the spot. Whoever wins the final status transition (the
canceller or the job) sends the one callback.
"""

from __future__ import annotations

from executions.exceptions import Cancelled
from executions.models import Execution, Status
from protocol import keys
from workers import redis_client
from workers.callbacks import Outcome

# Seconds a cancel flag outlives the request: longer than any run.
FLAG_TTL_SECONDS = 24 * 3600


def is_cancelled(execution_id: str) -> bool:
    """Return True when a cancel was requested for the execution."""
    return bool(redis_client.shared().exists(keys.cancel_flag(execution_id)))


def checker(execution_id: str):
    """Return a function raising Cancelled once the execution is cancelled."""

    def check() -> None:
        if is_cancelled(execution_id):
            raise Cancelled("the run was cancelled")

    return check


def cancel(execution: Execution) -> bool:
    """Cancel the execution; return False when it had already ended."""
    from workers.jobs import conclude  # jobs imports this module

    if execution.is_final:
        return False
    redis_client.shared().set(keys.cancel_flag(str(execution.id)), "1", ex=FLAG_TTL_SECONDS)
    if execution.status == Status.QUEUED:
        conclude(execution, Outcome.from_error(Cancelled("cancelled while queued")))
    return True
