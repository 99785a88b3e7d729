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
# Hands a lost attempt's lease (or a lapsed one) to the attempt that resumes
# the run, held for it until its job takes it or the TTL passes.
# KEYS: the lease. ARGV: the lost attempt, the reservation, the TTL in ms.
_RESERVE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
"""
# Takes a lease reserved for this attempt. KEYS: the lease.
# ARGV: the reservation, the attempt, the TTL in ms.
_TAKE_RESERVED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
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

        A lease reserved for this attempt (`reserve`) is taken too.

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
        if not taken and attempt:
            taken = redis_clients.shared().eval(
                _TAKE_RESERVED,
                1,
                keys.lease(execution_id),
                _reservation(attempt),
                attempt,
                _ttl_ms(),
            )
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


def _reservation(attempt: int) -> str:
    return f"reserved:{attempt}"


def reserve(execution_id: str, lost_attempt: int) -> None:
    """Hold the run's lease for the attempt after `lost_attempt`, until its job takes it.

    Done before the run is handed on, so that no look finds it unheld
    between the hand-over and its new job taking the lease (a job just taken
    from its queue is marked started a round trip later). Nothing is done
    when a later attempt holds the lease already.
    """
    redis_clients.shared().eval(
        _RESERVE,
        1,
        keys.lease(execution_id),
        str(lost_attempt),
        _reservation(lost_attempt + 1),
        _ttl_ms(),
    )


def held_by(execution_ids: list[str]) -> list[str | None]:
    """Return, for each run, its lease's value (its attempt, or a reservation), or None."""
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
