"""The outbox: a run's recorded callback pushed exactly once, and its counters added with it.

The callback is stored in the row with the final status (Execution.finish);
`deliver` pushes it later, from whoever ends the run, the reaper or an
operator, exactly once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from aes_project import redis_clients
from executions import events, metrics
from executions.models import Execution
from protocol import keys
from protocol.messages import ErrorInfo, ExecutionCallback, ExecutionCallbackData

log = logging.getLogger(__name__)


# The outbox's one step in Redis, atomic: count the run in the metrics and
# write its last events and its `done` event (once: when it is counted), and
# push its callback, each unless the run's outbox marker says it was done.
# The marker is a string, `counted` or `pushed`: made by the first pass,
# already saying `pushed` when the push follows in the same script (a push
# that fails, the queue holding another type, sets it back to `counted` and
# aborts nothing before it). A crash between the push and marking the row
# sent does not send it twice. An earlier version's marker, a hash with
# `counted` and `pushed` fields, is read as such on a later pass.
# KEYS: outbox marker, metrics hash, metrics index, events stream[, callback
# queue]. ARGV: marker TTL, callback JSON, the events' ended TTL, N, the
# stream's newest seq if known (or ''), N event bodies ending with `done`
# (N = 0: no events), then metric field and amount pairs (metrics.increments:
# the run's count first).
_OUTBOX = (
    events.APPEND_FUNCTION
    + """
local function push()
  local pushed = redis.pcall('LPUSH', KEYS[5], ARGV[2])
  if type(pushed) == 'table' and pushed.err then
    redis.call('SET', KEYS[1], 'counted', 'XX', 'KEEPTTL')
    return redis.error_reply(pushed.err)
  end
  return 1
end
if redis.call('SET', KEYS[1], KEYS[5] and 'pushed' or 'counted', 'NX', 'EX', ARGV[1]) then
  local first = 6 + tonumber(ARGV[4])
  -- The first pair counts the run (1): its first count may be a new
  -- hash's, which the index then learns of.
  if redis.call('HINCRBY', KEYS[2], ARGV[first], 1) == 1 then
    redis.call('SADD', KEYS[3], KEYS[2])
  end
  for i = first + 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
  -- The run's end is counted once, and so is its `done` written once.
  if tonumber(ARGV[4]) > 0 then
    append_events(4, ARGV[5], 6, 5 + tonumber(ARGV[4]))
    redis.call('EXPIRE', KEYS[4], ARGV[3])
  end
  if not KEYS[5] then return 0 end
  return push()
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if not KEYS[5] then return 0 end
local marked = redis.pcall('GET', KEYS[1])
if type(marked) == 'table' then
  -- WRONGTYPE: an earlier version's hash. SET replaces it.
  marked = redis.call('HEXISTS', KEYS[1], 'pushed') == 1 and 'pushed'
end
if marked == 'pushed' then return 0 end
redis.call('SET', KEYS[1], 'pushed', 'KEEPTTL')
return push()
"""
)
# Seconds the outbox marker of a run is kept until its row says sent (a crash
# in between leaves it for the reaper, however late it comes), and once it
# does: long enough to outlast any deliverer that read the row before it was
# marked (the reaper waits CALLBACK_GRACE_SECONDS, 10 s). At 100 runs/s,
# markers kept a week would hold ~6 GB of Redis; an hour, 37 MB.
SENT_MARKER_TTL_SECONDS = 7 * 24 * 3600
SENT_MARKER_KEPT_SECONDS = 3600


def deliver(execution: Execution, *, again: bool = False) -> bool:
    """Count the ended run, push its recorded callback, and mark it sent.

    The outbox's second half: the callback was stored with the final status,
    so it can be pushed later by anyone (the reaper, an operator) exactly
    once; `again` re-sends it on purpose (same event_id, for receivers to
    deduplicate). A run without a callback queue is counted and marked sent.
    Return True when a message was pushed.
    """
    if execution.callback is None or (execution.callback_sent_at is not None and not again):
        return False
    execution_id = str(execution.id)
    marker = keys.outbox(execution_id)
    client = redis_clients.shared()
    if again:
        # Counted still, pushed no more (an earlier version's hash becomes the string).
        client.set(marker, "counted", xx=True, keepttl=True)
    script_keys = [
        marker,
        keys.metrics(execution.tier, execution.tenant_id),
        keys.METRICS_INDEX,
        keys.events(execution_id),
    ]
    queue = [execution.callback_queue] if execution.callback_queue else []
    amounts = [part for pair in metrics.increments(execution) for part in pair]
    # A re-send on purpose is not a second end: the run's events stay as they were.
    run_events = events.of(execution)
    known, bodies = ("", []) if again else run_events.take()
    if not again:
        bodies.append(events.body(execution_id, events.DONE, callback=execution.callback["data"]))
    try:
        pushed = bool(
            client.eval(
                _OUTBOX,
                len(script_keys) + len(queue),
                *script_keys,
                *queue,
                SENT_MARKER_TTL_SECONDS,
                json.dumps(execution.callback),
                keys.EVENTS_ENDED_TTL_SECONDS,
                len(bodies),
                known,
                *bodies,
                *amounts,
            )
        )
    except redis.RedisError:
        run_events.put_back(bodies[:-1])
        raise
    execution.mark_callback_sent()
    try:
        client.expire(marker, SENT_MARKER_KEPT_SECONDS)
    except redis.RedisError as exc:
        # Pushed and recorded: a marker that keeps its week costs only memory.
        log.warning("callback marker of %s kept a week: %s", execution.id, exc)
    return pushed


def reject(queue: str, request: dict[str, Any], code: str, message: str) -> None:
    """Send an error callback for a message that never became an Execution."""
    data = request.get("data")
    agent_id = data.get("agent_id") if isinstance(data, dict) else None
    tier = request.get("tenant_tier")
    callback = ExecutionCallback.answering(
        request,
        tier if isinstance(tier, str) else None,
        ExecutionCallbackData(
            execution_id=None,
            status="rejected",
            agent_id=_text_or_none(agent_id),
            stop_reason="error",
            error=ErrorInfo(code=code, message=message),
        ),
    )
    redis_clients.shared().lpush(queue, json.dumps(callback.dump()))


def _text_or_none(value: Any) -> str | None:
    # A refused message may hold anything where a string belongs.
    return value if isinstance(value, str) else None
