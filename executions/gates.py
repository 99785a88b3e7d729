"""What a run must pass before it starts: its session's turn, a tenant slot, the rate.

All three live in Redis, shared by every worker, each decided by one atomic
script or pipeline:

- Session order: runs of one tenant's session never interleave. The consumer
  appends each run to `execution:session_order:{tenant}:{session}` when it records
  it; a run may start only at the head of that list, and the run that ends
  removes itself and wakes the new head.
- Concurrency: at most `max_concurrent_executions` runs of a tenant hold a
  slot (`execution:slots:{tenant}`, scored by when the slot lapses so a crashed run
  cannot hold one forever). A run that finds none joins the tenant's
  waiting list and stays `queued`; a run that ends wakes the first waiter,
  and a newcomer never takes a slot before the runs already waiting.
- Rate: sliding one-minute and one-day windows per tenant; a run over
  either limit is rejected and not counted.

Waking a run means enqueueing its job again: the job claims its row
conditionally, so a spurious wake-up does nothing.
"""

from __future__ import annotations

import time

from aes_project import redis_clients
from protocol import keys

# Seconds a slot outlives its run's deadline before it lapses on its own.
SLOT_GRACE_SECONDS = 60

_JOIN_SESSION = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
local head = redis.call('LINDEX', KEYS[2], 0)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) and (not head or head == ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  if head == ARGV[1] then redis.call('LPOP', KEYS[2]) end
  return 1
end
if not redis.call('LPOS', KEYS[2], ARGV[1]) then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return 0
"""

_RELEASE_SLOT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('LREM', KEYS[2], 0, ARGV[1])
return redis.call('LINDEX', KEYS[2], 0)
"""

_LEAVE_SESSION = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
return redis.call('LINDEX', KEYS[1], 0)
"""

# Session order lists expire a day after their last run joined.
SESSION_ORDER_TTL_SECONDS = 24 * 3600


def join_session(tenant_id: str, session_id: str, execution_id: str) -> None:
    """Put a run in its session's line (once, however often it is recorded)."""
    redis_clients.shared().eval(
        _JOIN_SESSION,
        1,
        keys.session_order(tenant_id, session_id),
        execution_id,
        SESSION_ORDER_TTL_SECONDS,
    )


def session_head(tenant_id: str, session_id: str) -> str | None:
    """Return the execution id whose turn it is in the session, if any."""
    head = redis_clients.shared().lindex(keys.session_order(tenant_id, session_id), 0)
    return head.decode() if head is not None else None


def leave_session(tenant_id: str, session_id: str, execution_id: str) -> str | None:
    """Take a run out of its session's line; return the id whose turn it is now."""
    head = redis_clients.shared().eval(
        _LEAVE_SESSION, 1, keys.session_order(tenant_id, session_id), execution_id
    )
    return head.decode() if head is not None else None


def acquire_slot(tenant_id: str, execution_id: str, limit: int | None, hold_seconds: float) -> bool:
    """Take one of the tenant's slots, or join its waiting list; True when taken."""
    if limit is None:
        return True
    now = time.time()
    return bool(
        redis_clients.shared().eval(
            _ACQUIRE_SLOT,
            2,
            keys.slots(tenant_id),
            keys.slot_waiters(tenant_id),
            execution_id,
            limit,
            now,
            now + hold_seconds + SLOT_GRACE_SECONDS,
        )
    )


def release_slot(tenant_id: str, execution_id: str, *, held: bool = True) -> str | None:
    """Give back a slot (or a place in the waiting list); return the first waiter.

    `held=False` says the run took no slot (it started on a tier without a
    limit): then only a waiting list can hold it, or wait behind it (a run
    that waited before the limit was lifted), and without one there is
    nothing to do, which one EXISTS tells.
    """
    client = redis_clients.shared()
    if not held and not client.exists(keys.slot_waiters(tenant_id)):
        return None
    head = client.eval(
        _RELEASE_SLOT, 2, keys.slots(tenant_id), keys.slot_waiters(tenant_id), execution_id
    )
    return head.decode() if head is not None else None


_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local windows = {{KEYS[1], 60000, tonumber(ARGV[2])}, {KEYS[2], 86400000, tonumber(ARGV[3])}}
for _, w in ipairs(windows) do
  if w[3] >= 0 then
    redis.call('ZREMRANGEBYSCORE', w[1], '-inf', now - w[2])
    if redis.call('ZCARD', w[1]) >= w[3] then return 0 end
  end
end
for _, w in ipairs(windows) do
  if w[3] >= 0 then
    redis.call('ZADD', w[1], now, ARGV[1])
    redis.call('PEXPIRE', w[1], w[2])
  end
end
return 1
"""


def within_rate(
    tenant_id: str, execution_id: str, per_minute: int | None, per_day: int | None
) -> bool:
    """Count one run in the tenant's sliding minute and day; False (not counted) when over.

    Sliding windows (sorted sets of start times, by the Redis server's
    clock): "10 a minute" means in any 60 seconds, not per calendar minute.
    """
    if per_minute is None and per_day is None:
        return True
    return bool(
        redis_clients.shared().eval(
            _RATE,
            2,
            keys.rate(tenant_id, "minute"),
            keys.rate(tenant_id, "day"),
            execution_id,
            -1 if per_minute is None else per_minute,
            -1 if per_day is None else per_day,
        )
    )
