"""What a run must pass before it starts: its session's turn, a tenant slot, the rate.

All three live in Redis, shared by every worker, each decided by one atomic
script or pipeline:

- Session order: runs of one tenant's session never interleave. The consumer
  appends each run to `session_order:{tenant}:{session}` when it records
  it; a run may start only at the head of that list, and the run that ends
  removes itself and wakes the new head.
- Concurrency: at most `max_concurrent_executions` runs of a tenant hold a
  slot (`slots:{tenant}`, scored by when the slot lapses so a crashed run
  cannot hold one forever). A run that finds none joins the tenant's
  waiting list and stays `queued`; a run that ends wakes the first waiter,
  and a newcomer never takes a slot before the runs already waiting.
- Rate: fixed one-minute and one-day windows per tenant; a run over either
  limit is rejected and not counted.

Waking a run means enqueueing its job again: the job claims its row
conditionally, so a spurious wake-up does nothing.
"""

from __future__ import annotations

import time

from workers import redis_client

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


def _session_key(tenant_id: str, session_id: str) -> str:
    return f"session_order:{tenant_id}:{session_id}"


def _slots_key(tenant_id: str) -> str:
    return f"slots:{tenant_id}"


def _waiting_key(tenant_id: str) -> str:
    return f"slots:{tenant_id}:waiting"


def join_session(tenant_id: str, session_id: str, execution_id: str) -> None:
    """Put a run in its session's line (once, however often it is recorded)."""
    redis_client.shared().eval(
        _JOIN_SESSION,
        1,
        _session_key(tenant_id, session_id),
        execution_id,
        SESSION_ORDER_TTL_SECONDS,
    )


def session_head(tenant_id: str, session_id: str) -> str | None:
    """Return the execution id whose turn it is in the session, if any."""
    head = redis_client.shared().lindex(_session_key(tenant_id, session_id), 0)
    return head.decode() if head is not None else None


def leave_session(tenant_id: str, session_id: str, execution_id: str) -> str | None:
    """Take a run out of its session's line; return the id whose turn it is now."""
    head = redis_client.shared().eval(
        _LEAVE_SESSION, 1, _session_key(tenant_id, session_id), execution_id
    )
    return head.decode() if head is not None else None


def acquire_slot(tenant_id: str, execution_id: str, limit: int | None, hold_seconds: float) -> bool:
    """Take one of the tenant's slots, or join its waiting list; True when taken."""
    if limit is None:
        return True
    now = time.time()
    return bool(
        redis_client.shared().eval(
            _ACQUIRE_SLOT,
            2,
            _slots_key(tenant_id),
            _waiting_key(tenant_id),
            execution_id,
            limit,
            now,
            now + hold_seconds + SLOT_GRACE_SECONDS,
        )
    )


def release_slot(tenant_id: str, execution_id: str) -> str | None:
    """Give back a slot (or a place in the waiting list); return the first waiter."""
    head = redis_client.shared().eval(
        _RELEASE_SLOT, 2, _slots_key(tenant_id), _waiting_key(tenant_id), execution_id
    )
    return head.decode() if head is not None else None


def within_rate(tenant_id: str, per_minute: int | None, per_day: int | None) -> bool:
    """Count one run against the tenant's windows; False (and not counted) when over."""
    if per_minute is None and per_day is None:
        return True
    now = time.time()
    minute_key = f"rate:{tenant_id}:m:{int(now // 60)}"
    day_key = f"rate:{tenant_id}:d:{int(now // 86400)}"
    client = redis_client.shared()
    with client.pipeline(transaction=True) as pipe:
        pipe.incr(minute_key).expire(minute_key, 120).incr(day_key).expire(day_key, 2 * 86400)
        minute_count, _, day_count, _ = pipe.execute()
    over = (per_minute is not None and minute_count > per_minute) or (
        per_day is not None and day_count > per_day
    )
    if over:
        with client.pipeline(transaction=True) as pipe:
            pipe.decr(minute_key).decr(day_key).execute()
    return not over
