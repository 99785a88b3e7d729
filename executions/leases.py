"""Which process runs a running run: a lease in Redis, renewed by the process's heartbeat.

A run's job takes `execution:lease:{id}` when it starts or resumes; its value
is the run's `resumes` count when taken, so a lease names one attempt. One
thread in each process that runs jobs (a forked work-horse or a threaded
worker) renews every lease the process holds, in one round trip every third
of AES_RUN_HEARTBEAT_TTL. A process that stops (SIGKILL, OOM, a lost machine)
stops renewing: its runs' leases lapse within the TTL, and the reaper resumes
those runs elsewhere (recovery.recover). A renewal that finds the lease gone
or taken by a later attempt marks it lost here: the run stops at its next
check without writing anything more (Execution.finish is fenced on the
attempt too).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from redis.client import Pipeline

from aes_project import redis_clients
from protocol import keys

log = logging.getLogger(__name__)

# Renews each lease this process holds when it is still the holder's;
# returns the 1-based positions of those it no longer holds.
# KEYS: the leases. ARGV: the TTL in ms, then each lease's expected value.
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
"""
# Deletes a lease only while it still holds the expected attempt.
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ttl_ms() -> int:
    return int(settings.AES_RUN_HEARTBEAT_TTL * 1000)


class Heartbeat:
    """The leases of this process, and the thread that renews them.

    A lease is held by one attempt: (execution id, attempt). Two attempts of
    one run may meet in one process for a moment (a lease that lapsed during
    a stall, then resumed here); the earlier one's lease is then found lost.
    """

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()
        self._lost: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def take(
        self,
        execution_id: str,
        attempt: int,
        *,
        send: Callable[[Callable[[Pipeline], Any]], list[Any]] | None = None,
    ) -> bool:
        """Take the run's lease for `attempt`; False when another holder has it.

        `send` sends the lease's command in a round trip of the caller's and
        returns that round trip's results, the lease's last (RunEvents.flush).
        """
        lease = (execution_id, str(attempt))

        def command(pipe: Pipeline) -> Any:
            return pipe.set(keys.lease(execution_id), lease[1], nx=True, px=_ttl_ms())

        if send is None:
            taken = command(redis_clients.shared())
        else:
            taken = send(command)[-1]
        if not taken:
            return False
        with self._lock:
            self._held.add(lease)
            self._lost.discard(lease)
            self._start()
        return True

    def release(self, execution_id: str, attempt: int) -> None:
        """Stop renewing the attempt's lease (its job is over).

        The key is left to lapse, a command saved per run: only `running`
        rows are looked at for lapsed leases, and an ended run is not one.
        """
        lease = (execution_id, str(attempt))
        with self._lock:
            self._held.discard(lease)
            self._lost.discard(lease)

    def lost(self, execution_id: str, attempt: int) -> bool:
        """Return True when a renewal found the attempt's lease gone or taken over."""
        return (execution_id, str(attempt)) in self._lost

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while True:
            self._wake.wait(settings.AES_RUN_HEARTBEAT_TTL / 3)
            with self._lock:
                held = sorted(self._held - self._lost)
            if not held:
                continue
            try:
                lost = redis_clients.shared().eval(
                    _RENEW,
                    len(held),
                    *(keys.lease(execution_id) for execution_id, _ in held),
                    _ttl_ms(),
                    *(value for _, value in held),
                )
            except redis.RedisError as exc:
                # The lease outlives one missed beat; the next comes soon.
                log.warning("lease heartbeat failed: %s", exc)
                continue
            with self._lock:
                for position in lost:
                    lease = held[int(position) - 1]
                    if lease in self._held:
                        log.warning("lease of %s lost: a later attempt runs it", lease[0])
                        self._lost.add(lease)


def drop(execution_id: str, value: str) -> bool:
    """Delete the run's lease if attempt `value` still holds it; True when deleted."""
    return bool(redis_clients.shared().eval(_DROP, 1, keys.lease(execution_id), value))


def held_by(execution_ids: list[str]) -> list[str | None]:
    """Return, for each run, the attempt holding its lease, or None where none does."""
    if not execution_ids:
        return []
    values = redis_clients.shared().mget([keys.lease(e) for e in execution_ids])
    return [value.decode() if value is not None else None for value in values]


_heartbeat = Heartbeat()


def _after_fork() -> None:
    # A forked work-horse holds none of its parent's leases and has no thread.
    global _heartbeat
    _heartbeat = Heartbeat()


os.register_at_fork(after_in_child=_after_fork)


def heartbeat() -> Heartbeat:
    """Return this process's heartbeat."""
    return _heartbeat
