"""A threaded worker's runs take turns at the interpreter: a few work, the rest wait.

A threaded worker process (workers/threaded.py) holds hundreds of runs,
nearly all waiting for their model. When many have work at once (a wave of
answers, a burst of new runs), every one of their threads asks for the
interpreter, which CPython hands over at most every 5 ms, and gives it up
again at each database or Redis round trip: a run's few milliseconds of
work spread over seconds, and the handing over costs CPU of its own. So a
slot's run holds one of `AES_ACTIVE_RUNS_PER_WORKER` turns while it works
(`working`) and gives it back while it waits for the model, a peer service
or its tools (`waiting`); the others sleep until a turn is free, a run back
from a wait before one that would start. A wait gives back the run's
database connection too, so a run never waits for a turn while holding one
a working run needs.

Outside a slot's job (forking workers, the consumer, tests) a thread holds
no turn and `waiting` does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from django import db
from django.conf import settings


class Turns:
    """Up to `size` threads at once; a thread's turn is known by its id, so it is never leaked.

    A thread back from a wait goes before one that would start a new job:
    runs in hand finish first, and hold their leases and slots no longer
    than they must. A job's own timeout (RQ raises it in the run's thread,
    at any point) may interrupt taking or giving back a turn: `working`
    frees whatever its thread holds on the way out, whatever happened inside.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._holders: set[int] = set()
        self._lock = threading.Lock()
        self._for_starting = threading.Condition(self._lock)
        self._for_resuming = threading.Condition(self._lock)
        self._resuming = 0  # threads back from a wait, waiting for a turn

    def take(self, *, resuming: bool = False) -> None:
        me = threading.get_ident()
        with self._lock:
            if resuming:
                self._resuming += 1
                try:
                    while me not in self._holders and len(self._holders) >= self.size:
                        self._for_resuming.wait()
                finally:
                    self._resuming -= 1
            else:
                while me not in self._holders and (
                    len(self._holders) >= self.size or self._resuming
                ):
                    self._for_starting.wait()
            self._holders.add(me)

    def give_back(self) -> None:
        with self._lock:
            if threading.get_ident() in self._holders:
                self._holders.discard(threading.get_ident())
                (self._for_resuming if self._resuming else self._for_starting).notify()

    def held(self) -> bool:
        return threading.get_ident() in self._holders

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Hold a turn for the block: a slot's job."""
        self.take()
        try:
            yield
        finally:
            self.give_back()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Give this thread's turn, and its pooled connection, back for the block."""
        if not self.held():
            yield
            return
        release_connection()
        self.give_back()
        try:
            yield
        finally:
            self.take(resuming=True)


_turns: Turns | None = None
_made = threading.Lock()


def turns() -> Turns:
    """Return this process's turns."""
    global _turns
    if _turns is None:
        with _made:
            if _turns is None:
                _turns = Turns(settings.AES_ACTIVE_RUNS_PER_WORKER)
    return _turns


def release_connection() -> None:
    """Give this thread's database connection back to the pool while the run waits.

    Only with a pool (threaded workers): a run then holds a connection while
    it writes, not while it waits. Without one, closing would mean
    connecting again for the next write.
    """
    if db.connection.settings_dict.get("OPTIONS", {}).get("pool"):
        db.connection.close()


def waiting() -> contextlib.AbstractContextManager[None]:
    """Give this thread's turn back while the block waits (the model, a peer, tools)."""
    return turns().waiting()
