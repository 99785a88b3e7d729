"""Starts RQ worker processes and keeps them running."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from aes_project import processes
from workers.threaded import recover_runs_of_dead_host

log = logging.getLogger(__name__)

# Seconds a stopping worker may take to finish its job before it is killed.
STOP_GRACE_SECONDS = 30
# Seconds between restarts of a worker that keeps dying.
RESTART_BACKOFF_SECONDS = 2.0
# Database connections a threaded worker process pools by default.
THREADED_POOL_SIZE = 10


class WorkerPool:
    """N RQ worker processes serving the tier queues in priority order.

    With one run per worker, each is a `manage.py rqworker` forking a
    work-horse per run; with more, a `manage.py rqworker_threads` running
    that many at once in threads (docs/operations.md sizes the two).
    """

    def __init__(
        self, count: int, queues: list[str], *, burst: bool = False, runs_per_worker: int = 1
    ) -> None:
        self.count = count
        self.queues = queues
        self.burst = burst
        self.runs_per_worker = runs_per_worker
        self.processes: list[subprocess.Popen | None] = [None] * count
        self._restart_after = [0.0] * count

    def command(self) -> list[str]:
        manage = Path(settings.BASE_DIR) / "manage.py"
        # Verbosity 0: rqworker would otherwise set rq's loggers to INFO,
        # three lines per job, overriding RQ_LOG_LEVEL.
        if self.runs_per_worker == 1:
            command = [sys.executable, str(manage), "rqworker", "--verbosity", "0", *self.queues]
        else:
            command = [sys.executable, str(manage), "rqworker_threads", *self.queues]
            command += ["--slots", str(self.runs_per_worker)]
        if self.burst:
            command.append("--burst")
        return command

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.runs_per_worker > 1:
            # A threaded worker's runs hold a connection only while they
            # write: a small pool serves them all (PostgreSQL; DB_POOL_SIZE
            # overrides).
            env.setdefault("DB_POOL_SIZE", str(min(self.runs_per_worker, THREADED_POOL_SIZE)))
        return env

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        # A worker whose supervisor was SIGKILLed gets SIGTERM: RQ's warm
        # shutdown finishes the job in hand and exits, so no worker is orphaned.
        self.processes[slot] = processes.start(self.command(), env=self.environment())
        log.info("started RQ worker pid %d", self.processes[slot].pid)

    def supervise(self) -> None:
        """Restart workers that died (not in burst mode, where exiting is the point)."""
        now = time.monotonic()
        for slot, process in enumerate(self.processes):
            if process is None or process.poll() is None or self.burst:
                continue
            if now < self._restart_after[slot]:
                continue
            log.warning(
                "RQ worker pid %d exited with %s; restarting", process.pid, process.returncode
            )
            self._restart_after[slot] = now + RESTART_BACKOFF_SECONDS
            if self.runs_per_worker > 1:
                moved = recover_runs_of_dead_host(process.pid)
                if moved:
                    log.error("resuming %d run(s) lost with RQ worker pid %d", moved, process.pid)
            self._spawn(slot)

    def running(self) -> bool:
        return any(p is not None and p.poll() is None for p in self.processes)

    def wait(self) -> None:
        for process in self.processes:
            if process is not None:
                process.wait()

    def stop(self) -> None:
        """Warm-stop every worker (SIGTERM), then kill what is left after the grace period."""
        live = [p for p in self.processes if p is not None and p.poll() is None]
        processes.stop_all(live, STOP_GRACE_SECONDS)
