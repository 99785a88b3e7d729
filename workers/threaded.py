"""Several runs at once in one RQ worker process, one thread per run.

A run spends most of its time waiting for the LLM and the peer services, so
a forked work-horse per run (`ExecutionWorker`) pays a process and a new
database connection for work that is mostly waiting. A `ThreadedHost` keeps
`slots` runs in one process. Each slot is an RQ `SimpleWorker` of its own (its
own name, registration, job state and execution record, as RQ expects of a
worker), run in its own thread; one dispatcher takes jobs from the tier
queues, in priority order, only as many as slots are free, so jobs this
process cannot start yet stay in RQ for other workers.

What the threads give up against a forked horse (docs/operations.md sizes
it): a run that crashes the interpreter takes its neighbours with it (the
supervisor has them resumed at once: `recover_runs_of_dead_host`); a job
past its RQ timeout is stopped by an exception raised in its thread rather
than by killing a process; and Python runs one thread at a time, so one
process per core.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time

import redis
from django.db import close_old_connections, connections
from rq import Queue
from rq.job import Job
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from aes_project import redis_clients
from executions.recovery import recover
from executions.turns import turns
from protocol import keys
from workers.rq_worker import ExecutionJobs, warm

log = logging.getLogger(__name__)

# Seconds between two heartbeats of every slot. RQ beats a slot's
# registration only as it starts a job (for at most 90 s), so without these
# an idle slot, or one whose run outlasts that, would look dead.
SLOT_HEARTBEAT_SECONDS = 60
# Jobs the dispatcher takes at most in one round trip, one per free slot.
DEQUEUE_BATCH = 100


class ThreadSlot(SimpleWorker):
    """One slot of a ThreadedHost: an RQ worker whose jobs run in its own thread."""

    # SIGALRM, RQ's default, reaches only the main thread.
    death_penalty_class = TimerDeathPenalty

    def procline(self, message: str) -> None:
        """Leave the process title alone: one process, many slots."""

    def _install_signal_handlers(self) -> None:
        """The host handles signals; only the main thread may install them."""

    def subscribe(self) -> None:
        """No pub/sub thread and connection per slot: RQ's stop-job command is
        not used here; runs are cancelled through executions/lifecycle.py."""


class SlotWorker(ExecutionJobs, ThreadSlot):
    """A slot that runs the service's jobs only, as JSON, taking turns with the other slots."""

    def execute_job(self, job, queue) -> None:
        with turns().working():
            super().execute_job(job, queue)


class ThreadedHost:
    """`slots` RQ workers in one process, each in its own thread, fed by one dispatcher."""

    def __init__(
        self,
        queue_names: list[str],
        slots: int,
        *,
        burst: bool = False,
        worker_class: type[ThreadSlot] = SlotWorker,
    ) -> None:
        connection = redis_clients.shared_blocking()
        self.slots = [worker_class(queue_names, connection=connection) for _ in range(slots)]
        self.burst = burst
        self.stopping = threading.Event()
        # Last in, first out: the slot that freed last takes the next job, so
        # a few slots carry a light load and keep their model connection
        # alive (httpx drops one idle for 5 s); the rest stay idle.
        self._free: queue.LifoQueue[ThreadSlot] = queue.LifoQueue()
        self._inbox = {slot.name: queue.SimpleQueue() for slot in self.slots}
        self._busy = 0
        self._lock = threading.Lock()
        self._last_heartbeat = 0.0

    def stop(self) -> None:
        """Take no more jobs; the runs in hand finish (a warm shutdown)."""
        self.stopping.set()

    def run(self) -> None:
        warm()
        threads = []
        for slot in self.slots:
            slot.bootstrap(logging_level=None)
            slot.set_state(WorkerStatus.IDLE)
            self._free.put(slot)
            thread = threading.Thread(target=self._serve, args=(slot,), name=f"slot-{slot.name}")
            thread.start()
            threads.append(thread)
        try:
            self._dispatch()
        finally:
            for slot in self.slots:
                self._inbox[slot.name].put(None)
            for thread in threads:
                thread.join()
            for slot in self.slots:
                slot.teardown()

    def _dispatch(self) -> None:
        while not self.stopping.is_set():
            self._heartbeat_slots()
            try:
                slot = self._free.get(timeout=keys.BLOCK_SECONDS)
            except queue.Empty:
                continue
            free = [slot, *self._take_free(DEQUEUE_BATCH - 1)]
            found = self._dequeue(slot, len(free))
            # Slots freed while the dispatcher waited freed last: they go first.
            free = self._take_free(len(found)) + free
            for idle in reversed(free[len(found) :]):
                self._free.put(idle)
            if not found:
                if self.burst:
                    with self._lock:
                        if self._busy == 0:
                            return
                    time.sleep(0.1)
                continue
            with self._lock:
                self._busy += len(found)
            for taker, job in zip(free, found, strict=False):
                self._inbox[taker.name].put(job)

    def _take_free(self, most: int) -> list[ThreadSlot]:
        """Take up to `most` free slots without waiting, the last freed first."""
        taken: list[ThreadSlot] = []
        while len(taken) < most:
            try:
                taken.append(self._free.get_nowait())
            except queue.Empty:
                break
        return taken

    def _dequeue(self, slot: ThreadSlot, wanted: int) -> list[tuple[Job, Queue]]:
        """Take up to `wanted` jobs from the first of the slots' queues that has any.

        RQ takes one job a round trip, and its job's hash in another; here
        one BLMPOP takes as many jobs as there are free slots, and one
        pipeline reads their hashes, so a burst of runs ending at once does
        not leave slots idle behind a dispatcher sending two commands a job.
        """
        connection = slot.connection
        names = [q.key for q in slot.queues]
        try:
            if self.burst:
                popped = connection.lmpop(len(names), *names, direction="LEFT", count=wanted)
            else:
                popped = connection.blmpop(
                    keys.BLOCK_SECONDS, len(names), *names, direction="LEFT", count=wanted
                )
            if not popped:
                return []
            queue_key, job_ids = popped[0].decode(), [job_id.decode() for job_id in popped[1]]
            with connection.pipeline(transaction=False) as pipeline:
                for job_id in job_ids:
                    pipeline.hgetall(Job.key_for(job_id))
                hashes = pipeline.execute()
        except redis.ConnectionError as exc:
            # The client's own retries are spent: wait, then listen again.
            log.warning("dequeue failed (%s); retrying in 1 s", exc)
            time.sleep(1)
            return []
        job_queue = Queue.from_queue_key(
            queue_key,
            connection=connection,
            job_class=slot.job_class,
            serializer=slot.serializer,
            death_penalty_class=slot.death_penalty_class,
        )
        found = []
        for job_id, fields in zip(job_ids, hashes, strict=True):
            if not fields:
                continue  # gone since it was queued: RQ skips it too
            job = slot.job_class(job_id, connection=connection, serializer=slot.serializer)
            try:
                job.restore(fields)
            except Exception:
                log.exception("job %s on %s cannot be read; dropped", job_id, queue_key)
                continue
            job.redis_server_version = slot.get_redis_server_version()
            found.append((job, job_queue))
        return found

    def _serve(self, slot: ThreadSlot) -> None:
        """Run the jobs handed to this slot, in this slot's thread, until told to end."""
        inbox = self._inbox[slot.name]
        while (found := inbox.get()) is not None:
            job, job_queue = found
            try:
                slot.execute_job(job, job_queue)
            except Exception:
                log.exception("slot %s failed around job %s", slot.name, job.id)
            finally:
                # Django keeps one connection per thread, reused by this
                # slot's next runs; drop it if it broke or aged out.
                close_old_connections()
                with self._lock:
                    self._busy -= 1
                self._free.put(slot)
        connections.close_all()

    def _heartbeat_slots(self) -> None:
        """Keep every slot registered, busy or idle, in one round trip a minute."""
        if time.monotonic() - self._last_heartbeat < SLOT_HEARTBEAT_SECONDS:
            return
        self._last_heartbeat = time.monotonic()
        try:
            with self.slots[0].connection.pipeline() as pipeline:
                for slot in self.slots:
                    slot.heartbeat(pipeline=pipeline)
                pipeline.execute()
        except redis.RedisError as exc:
            # The registrations outlive a missed beat; the next one comes in a minute.
            log.warning("slot heartbeat failed: %s", exc)


def recover_runs_of_dead_host(pid: int) -> int:
    """Resume, at once, the runs a threaded worker process held when it died (§9).

    Its runs died with it, so there is no reason to wait for their leases to
    lapse (workers/liveness.py, for machines that vanish whole). Each is
    resumed by another worker, or runs again if it had not started
    (recovery.recover); return how many were moved on. Only for threaded
    workers: a forking worker's work-horse may outlive its worker and still
    finish its run.
    """
    connection = redis_clients.shared()
    hostname = socket.gethostname()
    closed = 0
    for worker in SlotWorker.all(connection=connection):
        if worker.pid != pid or worker.hostname != hostname:
            continue
        job_id = worker.get_current_job_id()
        if job_id and recover(job_id, f"its worker process {pid} died"):
            closed += 1
        worker.register_death()
    return closed
