"""The jobs of the floor measurement: RQ's own cost, with nothing to do."""

from __future__ import annotations

from rq import get_current_job


def noop() -> None:
    """Do nothing."""


def ping(key: str) -> None:
    """Push to `key`, so the bench sees when a job enqueued at low load has run."""
    job = get_current_job()
    job.connection.lpush(key, job.id)
