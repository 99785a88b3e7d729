"""How a running run learns it was cancelled: one watcher per process, not a check per run.

A cancel sets the run's flag `execution:cancel:{id}` and appends the id to
the Stream `execution:cancels` (lifecycle.cancel). Each process that runs
jobs has one thread that follows that stream, with a blocking XREAD of at
most a second, while it runs anything, and notes the cancels of the runs it
watches. A run's checks (before every step, every second of an LLM call)
then ask this process, not Redis: a process sends about one command a second
however many runs it holds, where a check per run sent one per run per
second. A run starts watching by reading its flag once, after the watcher
has its place in the stream: a cancel before that read is in the flag, one
after it is in the stream past that place.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from aes_project import redis_clients
from protocol import keys

log = logging.getLogger(__name__)

# Milliseconds one XREAD of the watcher waits for a cancel: how late a
# running run may learn of one.
WAIT_MS = 1000
# Cancels one XREAD takes at most; more are read at once by the next.
BATCH = 500
# Cancels the stream keeps (XADD MAXLEN ~): far more than arrive in a second.
KEPT = 10_000


def announce(pipe: redis.client.Pipeline, execution_id: str) -> None:
    """Add to `pipe` the stream entry that tells every watcher of the cancel."""
    pipe.xadd(keys.CANCELS, {"id": execution_id}, maxlen=KEPT, approximate=True)


class Watcher:
    """The runs of this process that may be cancelled, and the thread that hears of cancels."""

    def __init__(self) -> None:
        self._watched: set[str] = set()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._position: str | None = None
        self._thread: threading.Thread | None = None

    def watch(self, execution_id: str) -> None:
        """Start watching a run this process now runs; it may have been cancelled already."""
        client = redis_clients.shared()
        with self._lock:
            if self._position is None:
                newest = client.xrevrange(keys.CANCELS, count=1)
                self._position = newest[0][0].decode() if newest else "0-0"
            self._watched.add(execution_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._follow, name="cancel-watcher", daemon=True
                )
                self._thread.start()
        self._wake.set()
        if client.exists(keys.cancel_flag(execution_id)):
            with self._lock:
                self._cancelled.add(execution_id)

    def forget(self, execution_id: str) -> None:
        """Stop watching the run (its job is over)."""
        with self._lock:
            self._watched.discard(execution_id)
            self._cancelled.discard(execution_id)

    def cancelled(self, execution_id: str) -> bool:
        """Return True once a cancel of the watched run has been heard."""
        return execution_id in self._cancelled

    def _follow(self) -> None:
        client = redis_clients.blocking(WAIT_MS / 1000)
        while True:
            with self._lock:
                idle = not self._watched
            if idle:
                # Nothing to cancel here: no command until a run is watched.
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                read = client.xread({keys.CANCELS: self._position}, count=BATCH, block=WAIT_MS)
            except redis.RedisError as exc:
                # The flag stays: a run started meanwhile reads it; this thread catches up.
                log.warning("cancel watcher: %s; retrying in 1 s", exc)
                time.sleep(1)
                continue
            for _, entries in read:
                with self._lock:
                    for entry_id, fields in entries:
                        execution_id = fields.get(b"id", b"").decode()
                        if execution_id in self._watched:
                            self._cancelled.add(execution_id)
                        self._position = entry_id.decode()


_watcher = Watcher()


def _after_fork() -> None:
    # A forked work-horse watches none of its parent's runs and has no thread.
    global _watcher
    _watcher = Watcher()


os.register_at_fork(after_in_child=_after_fork)


def watcher() -> Watcher:
    """Return this process's cancel watcher."""
    return _watcher
