"""The RQ worker class the service runs: JSON jobs only, Django set up once.

Django is loaded in the worker process (by `manage.py rqworker`), so each
forked work-horse starts warm; database connections are closed before every
fork so parent and child never share a socket.
"""

from __future__ import annotations

import logging

from django.db import connections
from rq.serializers import JSONSerializer
from rq.worker import Worker

from executions.agent import llm

# Imported here, in the worker process, so every forked work-horse starts with
# the job module (and openai, pydantic, the models) already loaded.
from executions.queues import RUN_JOB
from executions.recovery import recover
from tiers import lookup

log = logging.getLogger(__name__)


# The only job functions this service runs; anything else on its queues is
# refused unread.
ALLOWED_JOBS = frozenset({RUN_JOB})


class ExecutionJobs:
    """What every worker class of the service does: JSON jobs, ours only."""

    def __init__(self, *args, **kwargs) -> None:
        # Jobs carry only an execution id: JSON is enough, and unlike pickle
        # it cannot smuggle code into the worker.
        kwargs["serializer"] = JSONSerializer
        super().__init__(*args, **kwargs)

    def execute_job(self, job, queue) -> None:
        try:
            allowed = job.func_name in ALLOWED_JOBS
        except Exception:  # not JSON, or not a job of ours
            allowed = False
        if not allowed:
            log.error("refused job %s: not one of %s", job.id, sorted(ALLOWED_JOBS))
            self.handle_job_failure(job, queue, exc_string="refused: not an AES job function")
            return
        super().execute_job(job, queue)


def warm() -> None:
    """Do once, in the worker process, what every run would otherwise redo.

    Building the OpenAI client and reading the tiers take about 90 ms: done
    before a fork, each forked work-horse inherits them (measured:
    python -m bench.profile_run --warm, 173 ms to 79 ms per run). No connection is
    opened here.
    """
    llm.client()
    lookup.tiers_by_priority()
    connections.close_all()


class ExecutionWorker(ExecutionJobs, Worker):
    """One forked work-horse per run: a run that crashes or leaks ends with its horse."""

    def work(self, *args, **kwargs):
        warm()
        return super().work(*args, **kwargs)

    def fork_work_horse(self, job, queue) -> None:
        # Refresh the tier cache here (one query per worker every few
        # seconds) so that horses inherit it rather than each query it.
        lookup.tiers_by_priority()
        connections.close_all()
        for connection in connections.all(initialized_only=True):
            # A pool's open sockets would be shared with the horse.
            if getattr(connection, "pool", None):
                connection.close_pool()
        super().fork_work_horse(job, queue)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage) -> None:
        """Resume the run of a work-horse that died (SIGKILL, OOM) without reporting (§9)."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        recover(job.id, f"its work-horse died (exit status {ret_val})")
